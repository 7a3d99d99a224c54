"""`make bench`: runs every benchmarks/bench_*.py in turn (each prints its own report).

Benchmarks report ratios against a baseline measured in the same process; results
that are kept go into benchmarks/RESULTS.md by hand, with the machine described.
Pass names to run a subset: `python benchmarks/run.py glide_forward`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    if not scripts:
        print("no benchmarks selected", file=sys.stderr)
        return 2
    failed = 0
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        failed += subprocess.call([sys.executable, str(script)], cwd=HERE.parent) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
