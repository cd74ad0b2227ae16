"""Wall time of `starft --help` (lazy imports) against the same help with torch and open_clip imported eagerly.

Run: python benchmarks/cli_startup.py [--runs N]
Both commands run alternately in fresh processes; the script prints each one's median and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

LAZY = [sys.executable, "-m", "starft_cli", "--help"]
EAGER = [
    sys.executable,
    "-c",
    "import torch, open_clip, pandas\nimport sys\nsys.argv = ['starft', '--help']\n"
    "from starft_cli.cli.app import main\nmain()",
]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    wall(LAZY), wall(EAGER)  # warm the file cache
    lazy, eager = [], []
    for _ in range(args.runs):
        lazy.append(wall(LAZY))
        eager.append(wall(EAGER))
    lazy_med, eager_med = statistics.median(lazy), statistics.median(eager)
    print(f"runs per command           : {args.runs}")
    print(f"starft --help (lazy)       : median {lazy_med:.3f} s  (min {min(lazy):.3f}, max {max(lazy):.3f})")
    print(f"same help, eager imports   : median {eager_med:.3f} s  (min {min(eager):.3f}, max {max(eager):.3f})")
    print(f"ratio lazy/eager           : {lazy_med / eager_med:.3f}")
    print(f"target (lazy median < 0.5 s): {'met' if lazy_med < 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
