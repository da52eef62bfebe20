"""edge_bundle: ONNX artifact -> a self-contained folder + tarball for Jetson-class devices.

The device needs only numpy plus onnxruntime or tensorrt. Rather than re-implement the
tokenizer there, the bundle ships the labelled TEST-split sample with its token ids made
by the model's own tokenizer (and the tokenizer files, for use with the `tokenizers`
package on new text). `run_on_device.py` (export/edge_runner.py) builds the TensorRT
engine on the device when tensorrt is installed — engines do not port across GPUs — and
otherwise runs ONNX Runtime; it imports the engine code from the copy of
runtimes/tensorrt_engine.py the bundle carries.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Literal

from pydantic import Field

import runtimes.tensorrt_engine
from compress.core.artifact import Artifact, folder_size, write_json_atomic
from compress.core.config import StepConfig
from compress.core.stage import Context, StageResult, register
from compress.core.task import Example, Task, outside_id

RUNNER = Path(__file__).with_name("edge_runner.py")
ENGINE = Path(runtimes.tensorrt_engine.__file__)


class EdgeBundleConfig(StepConfig):
    type: Literal["edge_bundle"] = "edge_bundle"
    sample_size: int = Field(200, ge=1, description="Labelled test-split examples shipped with their token ids.")
    max_batch: int = Field(8, ge=1, description="Largest batch of the TensorRT profile built on the device.")


def sample_row(tokenizer, task: Task, e: Example, max_length: int, input_names: list[str]) -> dict:
    """An example as the device reads it: text, label(s), token ids and what else the runner, which has no
    tokenizer, needs to score it (Task.device_row: a token example's words and where each starts)."""
    ids, extra = task.device_row(tokenizer, e, max_length)
    return {"text": e.text, "text_pair": e.text_pair, "label": e.label} | extra | {n: ids[n][0].tolist()
                                                                                   for n in input_names}


def write_sample(path: Path, tokenizer, task: Task, examples, max_length: int, input_names: list[str]) -> None:
    with path.open("w") as f:
        for e in examples:
            f.write(json.dumps(sample_row(tokenizer, task, e, max_length, input_names)) + "\n")


@register(EdgeBundleConfig, accepts=("onnx",), produces="edge-bundle")
def edge_bundle(cfg: EdgeBundleConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    bundle = out / cfg.name
    bundle.mkdir()
    os.link(parent.file("model"), bundle / "model.onnx")
    if "raw" in parent.files:  # the plain export: TensorRT cannot parse ONNX Runtime's fused contrib ops
        os.link(parent.file("raw"), bundle / "model.raw.onnx")
    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    tokenizer.save_pretrained(bundle / "tokenizer")
    input_names = [i.name for i in ort.InferenceSession(str(bundle / "model.onnx")).get_inputs()]
    sample = ctx.data.test[: cfg.sample_size]
    write_sample(bundle / "sample.jsonl", tokenizer, ctx.task, sample, ctx.max_length, input_names)
    shutil.copyfile(RUNNER, bundle / "run_on_device.py")
    (bundle / "runtimes").mkdir()
    (bundle / "runtimes" / "__init__.py").write_text('"""The engine code of compress\'s runtimes, for run_on_device.py."""\n')
    shutil.copyfile(ENGINE, bundle / "runtimes" / ENGINE.name)
    manifest = {
        "name": cfg.name, "source_artifact": parent.name, "labels": ctx.data.labels, "task": ctx.task.name,
        # the tag a word cut off by max_length is predicted as (a miss, as compress.core.task counts it)
        "outside": outside_id(ctx.data.labels),
        "precision": parent.metrics.get("precision", "fp32"), "input_names": input_names,
        "max_length": ctx.max_length, "max_batch": cfg.max_batch,
        "onnx_for_ort": "model.onnx", "onnx_for_tensorrt": "model.raw.onnx" if "raw" in parent.files else None,
        "sample": "sample.jsonl", "sample_split": "test", "sample_examples": len(sample), "tokenizer": "tokenizer",
        "usage": "python run_on_device.py --out results.json  (needs numpy + onnxruntime or tensorrt)",
    }
    write_json_atomic(bundle / "bundle.json", manifest)
    tarball = out / f"{cfg.name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(bundle, arcname=cfg.name)
    ctx.log.info("%s: bundle %.1f MB, tarball %.1f MB, %d sample examples", cfg.name, folder_size(bundle) / 1e6,
                 tarball.stat().st_size / 1e6, len(sample))
    return StageResult("edge-bundle", {"model": f"{cfg.name}/model.onnx", "bundle": cfg.name, "tarball": tarball.name},
                       {"bundle_bytes": folder_size(bundle), "tarball_bytes": tarball.stat().st_size,
                        "sample_examples": len(sample), "tensorrt_ready": manifest["onnx_for_tensorrt"] is not None})
