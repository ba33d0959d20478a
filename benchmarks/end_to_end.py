"""Wall time of `osad run` with the default configuration (OSDN on digits).

    python benchmarks/end_to_end.py                  # 1 run
    python benchmarks/end_to_end.py --repeats 3

Each run trains and evaluates into a fresh temporary directory through the CLI,
exactly as a user's `osad run`. The baseline is the issue's budget of 5 minutes
on a 2-core CPU; the last line is that budget over the median wall time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import describe_machine

BUDGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="config overrides passed to osad run")
    args = parser.parse_args()
    print(f"device: {describe_machine(torch.device('cpu'))}; osad run {' '.join(args.overrides)}")
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "osad", "run", "--no-progress"]
            command += ["--out", str(Path(tmp) / "run"), *args.overrides]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"osad run failed:\n{done.stderr}")
        print(f"  {times[-1]:.1f} s")
    print(done.stdout.strip())
    median = statistics.median(times)
    print(f"osad run: median {median:.1f} s over {len(times)} run(s); budget {BUDGET_S:.0f} s")
    print(f"ratio {BUDGET_S / median:.2f}x")


if __name__ == "__main__":
    main()
