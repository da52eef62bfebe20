"""Benchmark artifact folders outside a recipe, with the same figures and report as a pipeline run.

    python -m benchmarks.run FOLDER... [--data rotten_tomatoes] [--threads 2] [--out benchmark-report]

A FOLDER is a pipeline artifact (has manifest.json), a Hugging Face checkpoint folder (config.json,
model.safetensors, tokenizer) or an ONNX folder (model.onnx or a single *.onnx, plus its tokenizer files).
The first folder is the baseline that drops and ratios are measured against. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from compress.core.artifact import Artifact, digest  # noqa: E402
from compress.core.errors import CompressError, exit_code  # noqa: E402

if TYPE_CHECKING:
    from compress.core.task import Task

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "tokenizer_config.json")
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear",
                 "QAttention", "DynamicQuantizeMatMul", "QGemm", "ConvInteger"}


def _onnx_precision(path: Path) -> str:
    """A folder without a manifest does not say its precision; the graph does."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return "int8"
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "fp32"


def open_folder(path: Path) -> Artifact:
    """The artifact in `path`: its manifest when it has one, else recognised from its files."""
    done = Artifact.load(path)
    if done:
        return done
    if not path.is_dir():
        raise CompressError(f"{path}: not a folder")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CompressError(f"{path}: no tokenizer files (expected one of {TOKENIZER_FILES}); save the tokenizer "
                            "beside the model")
    files = sorted(p for p in path.iterdir() if p.is_file())
    stamp = digest([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    onnx_files = [p.name for p in files if p.suffix == ".onnx"]
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return Artifact(path.name, "hf-checkpoint", path, stamp, None, "external", {"model": "model.safetensors"})
    if "model.onnx" in onnx_files or len(onnx_files) == 1:
        model = "model.onnx" if "model.onnx" in onnx_files else onnx_files[0]
        return Artifact(path.name, "onnx", path, stamp, None, "external", {"model": model},
                        {"precision": _onnx_precision(path / model)})
    raise CompressError(f"{path}: expected manifest.json, config.json + model.safetensors, or one .onnx file "
                        f"(found .onnx files: {onnx_files or 'none'})")


def folder_task(artifact: Artifact) -> Task:
    """The task the folder's head does (its config.json), which decides the data it is scored on: tags per word
    (entity F1) or one label per text (accuracy). A folder without a config does the default task."""
    from transformers import AutoConfig

    from compress.core.task import DEFAULT_TASK, task_for

    return task_for(AutoConfig.from_pretrained(artifact.path)) if (artifact.path / "config.json").is_file() \
        else DEFAULT_TASK


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--data", default="rotten_tomatoes", help="built-in data set name or a data file (conll2003 for "
                   "token classifiers)")
    p.add_argument("--limit", type=int, help="use only this many test examples")
    p.add_argument("--max-length", type=int, default=64, help="tokens per example for accuracy (default 64)")
    p.add_argument("--seed", type=int, default=0, help="split seed: use the recipe's to get the same test split")
    p.add_argument("--backends", default="torch-cpu,ort-cpu", help="comma-separated (default torch-cpu,ort-cpu)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=_ints, default=[1])
    p.add_argument("--sequence-lengths", type=_ints, default=[128])
    p.add_argument("--out", type=Path, default=Path("benchmark-report"), help="folder for report.{json,md,html}")
    args = p.parse_args(argv)

    from pydantic import ValidationError

    from benchmarks.hardware import describe
    from benchmarks.report.write import make_report
    from benchmarks.suite import BenchmarkConfig, benchmark_isolated
    from compress.core.data import DataConfig, load_dataset
    from runtimes import BACKENDS

    def body() -> int:
        try:
            data_cfg = DataConfig(source=args.data, max_length=args.max_length, limit_eval=args.limit)
            cfg = BenchmarkConfig(backends=args.backends.split(","), threads=args.threads,
                                  batch_sizes=args.batch_sizes, sequence_lengths=args.sequence_lengths)
        except ValidationError as e:
            raise CompressError(str(e)) from None
        artifacts = [open_folder(f) for f in args.folders]
        names = [a.name for a in artifacts]
        if len(set(names)) < len(names):
            raise CompressError(f"folders must have distinct names (got {names})")
        tasks = {a.name: folder_task(a) for a in artifacts}
        if len(set(tasks.values())) > 1:
            raise CompressError(f"folders do different tasks ({ {a: t.name for a, t in tasks.items()} }); one report "
                                "scores one task")
        data = load_dataset(data_cfg, seed=args.seed, task=tasks[names[0]])
        rows = []
        for artifact in artifacts:
            for backend in cfg.backends:
                if artifact.kind in BACKENDS[backend].kinds:
                    print(f"benchmark {artifact.name} on {backend}", file=sys.stderr)
                    rows.append(benchmark_isolated(artifact, backend, cfg, data, args.max_length))
        args.out.mkdir(parents=True, exist_ok=True)
        make_report(args.out, "benchmark", artifacts[0].name, [a.to_json() for a in artifacts], rows, describe())
        print(f"report: {args.out / 'report.html'}")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
