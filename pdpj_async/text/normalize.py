"""What the index and the queries see of a text: NFC, lower case, -ão plurals folded."""

from __future__ import annotations

import re
import unicodedata

# The Portuguese stemmer leaves "decisão" and "decisões" apart (and so does unaccent first):
# the plurals -ões, -ães, -ãos (accented or not) become -ão before the stemmer sees them.
_PLURAL_AO = re.compile(r"(?:õe|ãe|ão|oe|ae)s\b", re.IGNORECASE)


def nfc(text: str) -> str:
    """The text in Unicode NFC, line ends as \\n."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


def for_index(text: str) -> str:
    """The form of `text` given to the `pdpj.pt` configuration (documents and queries alike)."""
    return _PLURAL_AO.sub("ão", unicodedata.normalize("NFC", text).lower())
