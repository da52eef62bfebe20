"""The shipped smoke recipe end to end on the real MiniLM-L6 and Rotten Tomatoes (a few hundred examples)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compress.core.artifact import Artifact
from compress.run import main

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent

STOCK_LOAD = """
import sys, json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
t = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    print(json.dumps(m(**t(["a gripping, funny film"], return_tensors="pt")).logits[0].tolist()))
"""


def test_smoke_recipe_on_real_minilm(tmp_path):
    assert main([str(ROOT / "recipes/smoke.yaml"), "--out", str(tmp_path)]) == 0
    run = tmp_path / "smoke"
    report = json.loads((run / "report.json").read_text())
    rows = {(r["artifact"], r["backend"]): r for r in report["rows"]}
    torch_fp32, fp32, int8 = (rows[(a, b)] for a, b in [("teacher", "torch-cpu"), ("teacher-onnx", "ort-cpu"),
                                                         ("teacher-int8", "ort-cpu")])
    assert fp32["parameters"] == pytest.approx(22.7e6, rel=0.01)
    assert fp32["accuracy"] == torch_fp32["accuracy"]
    assert fp32["size_bytes"] / int8["size_bytes"] >= 3.5
    assert Artifact.load(run / "01-teacher-onnx").metrics["fused_operators"]["Attention"] == 6
    assert rows[("teacher-onnx", "ort-cuda")]["reason"]  # not measurable on a CPU machine, and it says why
    qat = Artifact.load(run / "03-teacher-qat")  # QAT end to end on the real model: trained, exported, measured
    assert qat.kind == "onnx" and qat.metrics["parity_vs_fake_quant"]["prediction_agreement"] >= 0.98
    assert rows[("teacher-qat", "ort-cpu")]["status"] == "measured"

    # The checkpoint loads in a fresh process with nothing of ours imported and gives the same logits.
    teacher = run / "00-teacher"
    stock = json.loads(subprocess.run([sys.executable, "-c", STOCK_LOAD, str(teacher)], capture_output=True,
                                      text=True, check=True).stdout)
    from runtimes.torch_runtime import TorchRuntime
    from transformers import AutoTokenizer

    ours = TorchRuntime.open(teacher).run(dict(AutoTokenizer.from_pretrained(teacher)(
        ["a gripping, funny film"], return_tensors="np")))[0]
    assert stock == pytest.approx(ours.tolist(), abs=1e-5)
