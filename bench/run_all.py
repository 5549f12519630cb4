"""Run every benchmark in turn (`make bench`); each writes its file in bench/results/.

Each runs as `python bench/NAME.py` in its own interpreter (queue_claims.py writes
queue.json). Figures are ratios against a reference measured in the same run;
docs/BENCHMARKS.md explains them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "queue_claims.py",
    "presign.py",
    "upstream_stream.py",
    "pipeline.py",
    "fs_write.py",
    "webhooks.py",
    "api.py",
    "load.py",
    "process_data.py",
    "e2e.py",
    "capacity.py",
    "watch.py",
]


USAGE = f"""usage: run_all.py [-h] [NAME ...] [FLAG ...]

Run the named benchmarks (default: {", ".join(BENCHES)});
every other argument (a flag and its value) goes to each script."""


def is_bench(arg: str) -> bool:
    """Whether `arg` names a script in bench/ (with or without .py)."""
    return not arg.startswith("-") and (HERE / arg).with_suffix(".py").is_file()


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all); the other arguments go to every script."""
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    names = [a for a in argv if is_bench(a)] or BENCHES
    flags = [a for a in argv if not is_bench(a)]
    failed = []
    for name in names:
        script = HERE / (name if name.endswith(".py") else f"{name}.py")
        print(f"\n=== {script.name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(script), *flags])
        print(f"=== {script.name}: exit {code} in {time.monotonic() - started:.0f} s ===")
        if code:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
