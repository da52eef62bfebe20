"""python -m compress.run RECIPE [--out DIR] [--dry-run] [--force]

Exit codes: 0 done (and the gate passed), 1 a stage failed (a fine-tuned model at chance on dev included) or the
gate failed, 2 bad input or a run folder in use by another run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Nothing is ever downloaded: models and data come from local folders and installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.run", description="Run a compression recipe end to end.")
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run folder (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the stages, run nothing")
    p.add_argument("--force", action="store_true", help="redo every stage even when up to date")
    args = p.parse_args(argv)

    from compress.core.errors import exit_code
    from compress.pipeline import plan, run_pipeline
    from compress.recipe import load_recipe

    def body() -> int:
        recipe = load_recipe(args.recipe)
        if args.dry_run:
            print("\n".join(plan(recipe)))
            return 0
        report = run_pipeline(recipe, args.out, args.force)
        return 1 if report and report["gate"] and not report["gate"]["passed"] else 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
