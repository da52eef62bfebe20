"""Deploy targets on tiny models: .ort mobile, the edge bundle in a clean venv + ingest, TensorRT (GPU only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ingest import main as ingest_main
from compress.core.artifact import Artifact
from compress.core.errors import CompressError
from compress.recipe import load_recipe
from compress.run import main
from runtimes import Unavailable, open_runtime
from runtimes.ort_runtime import OrtRuntime
from runtimes.tensorrt_runtime import tensorrt_missing
from tests.conftest import write_recipe

STEPS = [
    {"name": "teacher", "type": "finetune", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3},
    {"name": "onnx", "type": "export"},
    {"name": "mobile", "type": "ort_mobile", "from": "onnx"},
    {"name": "edge", "type": "edge_bundle", "from": "onnx", "sample_size": 24},
]
NO_TRT = tensorrt_missing()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert) -> Path:
    """One tiny run with every CPU deploy stage, benchmarked on ort-cpu and the GPU back ends."""
    from tests.conftest import sentiment_rows
    import pandas as pd

    folder = tmp_path_factory.mktemp("deploy")
    data = folder / "reviews.csv"
    pd.DataFrame(sentiment_rows(240)).to_csv(data, index=False)
    recipe = write_recipe(folder, tiny_bert, data, STEPS)
    text = recipe.read_text().replace("- torch-cpu\n", "- torch-cpu\n  - torch-cuda-fp16\n  - ort-cuda\n")
    recipe.write_text(text)
    assert main([str(recipe), "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "tiny"


def _test_inputs(run_dir: Path):
    from transformers import AutoTokenizer

    from compress.core.data import load_dataset
    from compress.core.task import encode

    recipe = load_recipe(run_dir.parent.parent / "recipe.yaml")
    data = load_dataset(recipe.data, recipe.seed)
    return encode(AutoTokenizer.from_pretrained(run_dir / "01-onnx"), data.test, recipe.data.max_length)


def test_ort_mobile_model_predicts_like_onnx_on_test_split(run):
    mobile, onnx = Artifact.load(run / "02-mobile"), Artifact.load(run / "01-onnx")
    assert mobile.file("model").suffix == ".ort" and mobile.metrics["ort_bytes"] > 0
    assert "com.microsoft" in mobile.file("operators").read_text() or "ai.onnx" in mobile.file("operators").read_text()
    inputs = _test_inputs(run)
    got = OrtRuntime(mobile.file("model")).run(inputs)  # ONNX Runtime loads the .ort flatbuffer directly
    want = OrtRuntime(onnx.file("model")).run(inputs)
    assert len(got) > 20
    assert (got.argmax(-1) == want.argmax(-1)).all()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_gpu_rows_say_why_not_measured_without_cuda(run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: these rows are measured here")
    rows = {(r["artifact"], r["backend"]): r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert rows[("teacher", "torch-cuda-fp16")]["status"] == "not measured"
    assert "CUDA" in rows[("teacher", "torch-cuda-fp16")]["reason"]
    assert "CUDAExecutionProvider" in rows[("onnx", "ort-cuda")]["reason"]
    assert "onnx on ort-cuda: not measured" in (run / "report.md").read_text()


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A virtual environment holding only numpy and onnxruntime (and their own dependencies)."""
    folder = tmp_path_factory.mktemp("clean-venv")
    venv.create(folder, with_pip=True)  # no system site-packages: nothing of this project's environment
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "onnxruntime"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"cannot install numpy + onnxruntime into a clean venv here: {done.stderr[-500:]}")
    return python


def test_edge_bundle_runs_standalone_in_clean_venv_and_is_ingested(run, clean_python, tmp_path):
    edge = Artifact.load(run / "03-edge")
    with tarfile.open(edge.file("tarball")) as tar:  # the tarball alone is what travels to the device
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "edge"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for forbidden in ("transformers", "compress", "torch"):
        probe = subprocess.run([str(clean_python), "-c", f"import {forbidden}"], cwd=tmp_path, env=env, capture_output=True)
        assert probe.returncode != 0, f"{forbidden} is importable in the clean venv"
    done = subprocess.run([str(clean_python), str(bundle / "run_on_device.py"), "--out", str(tmp_path / "results.json"),
                           "--repeats", "30", "--warmup", "2"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["backend"] == "onnxruntime-cpu" and results["examples"] == 24
    assert results["device"]["onnxruntime_version"] and results["device"]["tensorrt_version"] is None
    lat = results["latency"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]

    # The device's accuracy is the project's own accuracy on the same 24 test examples.
    from compress.core.task import classification_metrics

    inputs = _test_inputs(run)
    sample = [json.loads(l) for l in (bundle / "sample.jsonl").read_text().splitlines()]
    labels = np.array([r["label"] for r in sample])
    logits = np.concatenate([OrtRuntime(Artifact.load(run / "01-onnx").file("model")).run(
        {k: np.array([r[k]]) for k in inputs}) for r in sample])
    assert results["accuracy"] == pytest.approx(classification_metrics(labels, logits.argmax(-1), ["neg", "pos"])["accuracy"])

    assert ingest_main([str(tmp_path / "results.json"), "--run", str(run)]) == 0
    rows = json.loads((run / "report.json").read_text())["rows"]
    device_rows = [r for r in rows if r["artifact"] == "edge"]
    assert len(device_rows) == 1 and device_rows[0]["backend"].startswith("onnxruntime-cpu @ ")
    assert "speedup" not in device_rows[0]  # other hardware: no ratio against the baseline
    assert "| edge | onnxruntime-cpu @" in (run / "report.md").read_text()
    assert ingest_main([str(tmp_path / "results.json"), "--run", str(run)]) == 0  # idempotent
    assert len([r for r in json.loads((run / "report.json").read_text())["rows"] if r["artifact"] == "edge"]) == 1


def test_ingest_refuses_a_file_that_is_not_device_results(run, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accuracy": 1.0}))
    assert ingest_main([str(bad), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "missing" in err and "'latency'" in err


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_network_prepared_for_tensorrt_runs_on_ort(run, tmp_path, precision):
    """TensorRT 11 builds only strongly typed networks, so precision goes into the ONNX first (FP16 weights, or
    ONNX Runtime static Q/DQ calibrated on training examples); that part is checked on CPU even without TensorRT."""
    from transformers import AutoTokenizer

    from compress.core.data import load_dataset
    from export.tensorrt import has_qdq, prepare_onnx

    onnx = Artifact.load(run / "01-onnx")
    recipe = load_recipe(run.parent.parent / "recipe.yaml")
    data = load_dataset(recipe.data, recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(onnx.path)
    network = prepare_onnx(precision, onnx, tokenizer, data.train[:64], 16, tmp_path)
    assert has_qdq(network) == (precision == "int8")
    assert (tmp_path / "calibration.json").is_file() == (precision == "int8")
    inputs = _test_inputs(run)
    agreement = (OrtRuntime(network).run(inputs).argmax(-1) == OrtRuntime(onnx.file("model")).run(inputs).argmax(-1))
    assert agreement.mean() >= 0.9


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present: the recipe is accepted here")
def test_tensorrt_step_refused_at_validation_with_the_reason(tmp_path, tiny_bert, tiny_csv):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, STEPS[:2] + [{"name": "trt", "type": "tensorrt"}])
    with pytest.raises(CompressError, match=r"steps\[2\].*tensorrt step cannot run on this machine"):
        load_recipe(recipe)
    with pytest.raises(Unavailable, match="tensorrt|CUDA"):
        open_runtime("tensorrt", Artifact("e", "tensorrt-engine", tmp_path, "h", files={"model": "model.engine"}), 1)


@pytest.mark.skipif(NO_TRT is not None, reason=f"TensorRT cannot run here: {NO_TRT}")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_builds_and_agrees_with_onnx_runtime(tmp_path, tiny_bert, tiny_csv, precision):
    steps = STEPS[:2] + [{"name": "trt", "type": "tensorrt", "precision": precision, "calibration_examples": 64}]
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, steps,
                          benchmark={"backends": ["ort-cpu", "tensorrt"], "sequence_lengths": [16], "warmup": 1,
                                     "min_repeats": 5, "max_seconds": 0.5, "threads": 1})
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    engine = Artifact.load(tmp_path / "runs" / "tiny" / "02-trt")
    assert engine.metrics["parity_vs_ort"]["prediction_agreement"] >= 0.98
    assert {"model", "timing_cache", "build_log"} <= set(engine.files) and engine.file("timing_cache").stat().st_size
    rows = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())["rows"]
    assert any(r["artifact"] == "trt" and r["status"] == "measured" for r in rows)
