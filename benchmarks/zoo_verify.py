"""Cost of checking a cached zoo file before use: the verified record (path, size, mtime) vs re-hashing it.

Run: python benchmarks/zoo_verify.py [--mb 256] [--runs 5]
Prints the median time of each and their ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's starft_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MiB (ViT-B-16 weights: ~570 MiB)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STARFT_HOME"] = str(Path(tmp) / "home")
        from starft_cli.zoo.hub import check_file
        from starft_cli.zoo.manifest import validate_entry

        path = Path(tmp) / "w.safetensors"
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        with open(path, "wb") as handle:
            for _ in range(args.mb):
                handle.write(block)
                digest.update(block)
        entry = validate_entry(
            "bench",
            {
                "arch": "ViT-B-16",
                "source": "https://example.org/w.safetensors",
                "sha256": digest.hexdigest(),
                "kind": "baseline",
                "license": "MIT",
            },
        )
        check_file(entry, path)  # first use: hashes and records

        def timed(force: bool) -> float:
            start = time.perf_counter()
            check_file(entry, path, force=force)
            return time.perf_counter() - start

        rehash, record = [], []
        for _ in range(args.runs):
            rehash.append(timed(True))
            record.append(timed(False))
        a, b = statistics.median(rehash), statistics.median(record)
        print(f"file: {args.mb} MiB, runs: {args.runs}")
        print(f"re-hash (sha256) every use : {a * 1e3:9.2f} ms (median)")
        print(f"verified record            : {b * 1e3:9.2f} ms (median)")
        print(f"ratio                      : {a / b:9.0f}x")


if __name__ == "__main__":
    main()
