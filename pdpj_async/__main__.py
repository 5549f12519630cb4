"""`python -m pdpj_async` is the console script."""

import sys

from .cli import main

sys.exit(main())
