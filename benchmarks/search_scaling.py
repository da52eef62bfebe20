"""What a search costs as its space grows: one run, one teacher, then searches over 1, 8, 24 and 48 candidates.

The elastic training is paid once per search whatever the count (the grids share their largest and smallest
candidate, so each trains the same range); judging is paid per candidate. Prints each search's wall time, split
into training and judging, and the ratio of the 48-candidate search to the 8-candidate one.

    python -m benchmarks.search_scaling [--out runs] [--limit-train 2000] [--limit-eval 400] [--epochs 1] [--workers 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from compress.core.artifact import Artifact

# Nested spaces over MiniLM-L6: the same smallest (l2-h75-f75) and largest (l6-h0-f25) candidate in all but the
# one-candidate search.
SPACES = {
    1: {"layers": [3], "heads": [0.5], "ffn": [0.5]},
    8: {"layers": [2, 6], "heads": [0.0, 0.75], "ffn": [0.25, 0.75]},
    24: {"layers": [2, 3, 4, 6], "heads": [0.0, 0.75], "ffn": [0.25, 0.5, 0.75]},
    48: {"layers": [2, 3, 4, 6], "heads": [0.0, 0.25, 0.5, 0.75], "ffn": [0.25, 0.5, 0.75]},
}


def recipe(limit_train: int, limit_eval: int, epochs: int, workers: int) -> dict:
    searches = [{"name": f"search-{n}", "type": "search", "from": "teacher", "space": space,
                 "max_accuracy_drop": 100.0,  # every candidate is judged; the choice is not what is timed
                 "workers": workers,
                 "distillation": {"epochs": epochs, "batch_size": 32, "learning_rate": 3e-4,
                                  "loss": {"kl": 1.0, "ce": 0.5, "hidden": 1.0}, "group_by_length": True},
                 "quantization": {"per_channel": True}}
                for n, space in SPACES.items()]
    return {"name": "search-scaling", "seed": 0, "model": {"source": "minilm"},
            "data": {"source": "rotten_tomatoes", "max_length": 64, "limit_train": limit_train,
                     "limit_eval": limit_eval},
            "steps": [{"name": "teacher", "type": "finetune", "epochs": 1, "batch_size": 32}, *searches],
            "benchmark": {"backends": ["torch-cpu"], "artifacts": ["teacher"], "min_repeats": 5, "max_seconds": 1}}


def main(argv: list[str] | None = None) -> int:
    from compress.run import main as run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--limit-train", type=int, default=2000)
    p.add_argument("--limit-eval", type=int, default=400)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="the searches' judging processes")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "search-scaling.yaml"
    path.write_text(yaml.safe_dump(recipe(args.limit_train, args.limit_eval, args.epochs, args.workers), sort_keys=False))
    if run([str(path), "--out", str(args.out)]) != 0:
        return 1
    run = args.out / "search-scaling"
    walls = {}
    print(f"{'candidates':>10} {'wall s':>8} {'train s':>8} {'judge s':>8} {'per candidate s':>16}")
    for i, n in enumerate(SPACES, start=1):
        metrics = Artifact.load(run / f"{i:02d}-search-{n}").metrics
        search = metrics["search"]
        walls[n] = metrics["stage_seconds"]
        judged = sum(c.get("seconds") is not None for c in search["candidates"])
        print(f"{n:>10} {walls[n]:>8.1f} {search['train_seconds']:>8.1f} {search['judge_seconds']:>8.1f} "
              f"{search['judge_seconds'] / max(judged, 1):>16.1f}")
    print(f"48 candidates / 8 candidates: {walls[48] / walls[8]:.2f}x wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
