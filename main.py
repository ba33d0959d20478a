"""The seed's entry point, kept working: a thin wrapper over osad's workflow.

    python main.py --training_type Train    # train OSDN on the default config
    python main.py --training_type Test     # evaluate that run, print the table

Both use the embedded default configuration unless ``--config FILE`` names
another (``--config configs/fas-digits.yaml`` trains the face anti-spoofing
system); ``--run_dir`` (default ``runs/main``) says where the run lives, and
extra ``key=value`` arguments override the configuration as in ``osad train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from osad.cli import main as osad_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training_type", required=True, choices=["Train", "Test"])
    parser.add_argument("--run_dir", default="runs/main")
    parser.add_argument("--config", help="YAML config file (Train only)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    flags = (["--force"] if args.force else []) + (["--no-progress"] if args.no_progress else [])
    if args.training_type == "Train":
        config = ["--config", args.config] if args.config else []
        return osad_main(["train", "--out", args.run_dir, *config, *flags, *args.overrides])
    if args.overrides or args.config:
        parser.error("Test takes no config or overrides: it evaluates the run as it was trained")
    return osad_main(["test", args.run_dir, *flags])


if __name__ == "__main__":
    sys.exit(main())
