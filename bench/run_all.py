"""Run every benchmark in turn (`make bench`); each writes bench/results/<name>.json.

Each runs in its own interpreter with -P, so that bench/queue.py cannot shadow the
standard library's `queue` module. Figures are ratios against a reference measured
in the same run; docs/BENCHMARKS.md explains them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "queue.py",
    "presign.py",
    "upstream_stream.py",
    "pipeline.py",
    "webhooks.py",
    "api.py",
    "e2e.py",
]


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all); extra flags go to every script."""
    names = [a for a in argv if not a.startswith("-")] or BENCHES
    flags = [a for a in argv if a.startswith("-")]
    failed = []
    for name in names:
        script = HERE / (name if name.endswith(".py") else f"{name}.py")
        print(f"\n=== {script.name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-P", str(script), *flags])
        print(f"=== {script.name}: exit {code} in {time.monotonic() - started:.0f} s ===")
        if code:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
