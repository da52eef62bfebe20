"""Measurement method, `benchmarks.run` on folders outside a recipe, and `benchmarks.compare` both ways."""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import compare
from compress.core.latency import measure_latency
from benchmarks.run import main as run_main
from benchmarks.run import open_folder
from tests.conftest import save_tiny_model


def test_latency_stops_when_the_median_is_stable():
    figures = measure_latency(lambda: time.sleep(0.002), warmup=1, min_repeats=6, max_seconds=5, batch_size=4)
    assert figures["stable"] and figures["repeats"] >= 6
    assert 2.0 <= figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert figures["throughput_per_s"] == pytest.approx(4 * 1000 / figures["p50_ms"], rel=1e-3)


def test_latency_stops_at_the_time_budget_and_says_it_was_not_stable():
    calls = []

    def slower_each_time():
        calls.append(1)
        time.sleep(0.0005 * len(calls))

    start = time.perf_counter()
    figures = measure_latency(slower_each_time, warmup=0, min_repeats=5, max_seconds=0.2, batch_size=1)
    assert not figures["stable"] and time.perf_counter() - start < 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Folders as a user would bring them, none with a manifest: an HF checkpoint, its ONNX export and an INT8
    copy quantized with ONNX Runtime directly."""
    from onnxruntime.quantization import quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compress.core.task import Example, encode
    from export.onnx import to_onnx

    root = tmp_path_factory.mktemp("external")
    hf = save_tiny_model(root / "hf", "bert")
    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    fp32, int8 = root / "fp32-onnx", root / "int8-onnx"
    for folder in (fp32, int8):
        shutil.copytree(hf, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    to_onnx(model, encode(tokenizer, [Example("good film", 1)], 16), fp32 / "model.onnx", 17)
    quantize_dynamic(fp32 / "model.onnx", int8 / "exported-int8.onnx")
    return {"hf": hf, "fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def external_report(folders, tmp_path_factory) -> Path:
    from tests.conftest import sentiment_rows
    import pandas as pd

    out = tmp_path_factory.mktemp("external-report")
    data = out / "reviews.csv"
    pd.DataFrame(sentiment_rows(120)).to_csv(data, index=False)
    with pytest.MonkeyPatch.context() as mp:  # the measured GEMM rates are cached here, not in the user's cache
        mp.setenv("COMPRESS_CACHE_DIR", str(out / "cache"))
        code = run_main([str(folders["hf"]), str(folders["fp32"]), str(folders["int8"]), "--data", str(data),
                         "--max-length", "16", "--threads", "1", "--batch-sizes", "1,2", "--sequence-lengths", "16",
                         "--out", str(out / "report")])
    assert code == 0
    return out / "report" / "report.json"


def test_folders_without_manifest_are_recognised(folders):
    assert open_folder(folders["hf"]).kind == "hf-checkpoint"
    fp32, int8 = open_folder(folders["fp32"]), open_folder(folders["int8"])
    assert (fp32.kind, fp32.files["model"], fp32.metrics["precision"]) == ("onnx", "model.onnx", "fp32")
    assert (int8.files["model"], int8.metrics["precision"]) == ("exported-int8.onnx", "int8")


def test_run_measures_every_folder_with_the_pipeline_figures(external_report):
    report = json.loads(external_report.read_text())
    rows = {(r["artifact"], r["backend"]): r for r in report["rows"]}
    assert set(rows) == {("hf", "torch-cpu"), ("fp32-onnx", "ort-cpu"), ("int8-onnx", "ort-cpu")}
    assert report["baseline"]["artifact"] == "hf"
    for row in rows.values():
        assert row["status"] == "measured" and row["threads"] == 1
        assert [(p["batch_size"], p["sequence_length"]) for p in row["latency"]] == [(1, 16), (2, 16)]
        assert all(p["with_tokenization"]["p50_ms"] > 0 for p in row["latency"])
        assert row["peak_rss_mb"] >= row["rss_before_load_mb"] > 0
    assert rows[("int8-onnx", "ort-cpu")]["precision"] == "int8"
    for (name, backend), row in rows.items():  # every CPU row has a GEMM rate of its own engine and precision
        rate = row["gemm_rate"]
        assert rate["gmacs_per_s"] > 0 and rate["threads"] == 1
        assert [[s["m"], s["k"], s["n"], s["calls"]] for s in rate["shapes"]] == row["gemm_shapes"]
        assert rate["kernel"].startswith("torch" if backend == "torch-cpu" else "ONNX Runtime")
        assert ("DynamicQuantizeLinear" in rate["kernel"]) is (name == "int8-onnx")
        split = row["operator_split"]
        if backend == "torch-cpu":
            assert split is None
        else:  # profiled at the sweep's first shape, batch 1
            assert (split["batch_size"], split["sequence_length"]) == (1, 16)
            assert sum(o["share"] for o in split["ops"]) == pytest.approx(1, abs=1e-3)
    assert rows[("hf", "torch-cpu")]["gemm_shapes"] == rows[("fp32-onnx", "ort-cpu")]["gemm_shapes"]
    assert rows[("int8-onnx", "ort-cpu")]["size_bytes"] < rows[("fp32-onnx", "ort-cpu")]["size_bytes"]
    assert {p.name for p in external_report.parent.iterdir()} >= {"report.md", "report.html", "pareto-size.png"}


def test_each_row_has_its_own_peak_memory(folders, tmp_path, monkeypatch):
    """The parent holds 2 GiB of ballast; a child's peak must not include it (it would if measured in-process).
    The child itself imports torch and onnxruntime (~600 MB), so the ballast must be well above that."""
    from benchmarks.suite import benchmark_isolated
    from compress.core.data import Dataset
    from compress.core.task import Example
    from benchmarks.suite import BenchmarkConfig

    data = Dataset(["neg", "pos"], [], [], [Example("good film", 1), Example("dull plot", 0)], "inline")
    cfg = BenchmarkConfig(backends=["ort-cpu"], sequence_lengths=[16], warmup=0, min_repeats=5, max_seconds=0.2,
                          threads=1)
    artifact = open_folder(folders["fp32"])
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))  # the row's GEMM rate is cached here
    ballast = np.ones(2 * 2**30, dtype=np.uint8)
    row = benchmark_isolated(artifact, "ort-cpu", cfg, data, 16)
    assert ballast.sum() == ballast.size
    assert row["status"] == "measured" and 0 < row["peak_rss_mb"] < 2048


def test_run_refuses_a_folder_without_a_tokenizer(tmp_path, capsys):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.onnx").write_bytes(b"")
    assert run_main([str(tmp_path / "bare")]) == 2
    assert "bare: no tokenizer files" in capsys.readouterr().err


def _write(path: Path, report: dict) -> Path:
    path.write_text(json.dumps(report))
    return path


def test_compare_passes_within_the_threshold_and_prints_changes(external_report, tmp_path, capsys):
    new = copy.deepcopy(json.loads(external_report.read_text()))
    row = next(r for r in new["rows"] if r["artifact"] == "int8-onnx")
    row["score"] = row["accuracy"] = row["score"] - 0.005  # half a point
    row["latency"][0]["p50_ms"] *= 2
    code = compare.main([str(external_report), str(_write(tmp_path / "new.json", new)), "--max-drop", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "int8-onnx on ort-cpu: accuracy" in out and "(-0.50 pts)" in out and "(+100.0%)" in out


def test_compare_fails_on_a_drop_beyond_the_threshold_or_a_missing_row(external_report, tmp_path, capsys):
    old = json.loads(external_report.read_text())
    dropped = copy.deepcopy(old)
    row = next(r for r in dropped["rows"] if r["artifact"] == "fp32-onnx")
    row["score"] = row["accuracy"] = row["score"] - 0.03
    assert compare.main([str(external_report), str(_write(tmp_path / "a.json", dropped)), "--max-drop", "1"]) == 1
    assert "REGRESSION: fp32-onnx on ort-cpu: accuracy" in capsys.readouterr().err
    missing = copy.deepcopy(old)
    missing["rows"] = [r for r in missing["rows"] if r["artifact"] != "hf"]
    assert compare.main([str(external_report), str(_write(tmp_path / "b.json", missing))]) == 1
    assert "hf on torch-cpu: measured in the old report, missing from the new one" in capsys.readouterr().err
    assert compare.main([str(external_report), str(tmp_path / "absent.json")]) == 2


def test_latency_measures_at_least_min_seconds():
    start = time.perf_counter()
    figures = measure_latency(lambda: time.sleep(0.001), warmup=0, min_repeats=5, max_seconds=5, batch_size=1,
                              min_seconds=0.3)
    assert time.perf_counter() - start >= 0.3 and figures["repeats"] > 5


def test_a_back_end_this_machine_lacks_is_answered_without_a_benchmark_process(folders, monkeypatch):
    import torch

    import benchmarks.suite as suite
    from compress.core.data import Dataset
    from compress.core.task import Example
    from benchmarks.suite import BenchmarkConfig

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device, so torch-cuda is not missing here")

    def no_process(*args, **kwargs):
        raise AssertionError("a benchmark process was started for a back end this machine cannot run")

    monkeypatch.setattr(suite, "ProcessPoolExecutor", no_process)
    data = Dataset(["neg", "pos"], [], [], [Example("good film", 1)], "inline")
    row = suite.benchmark_isolated(open_folder(folders["hf"]), "torch-cuda", BenchmarkConfig(), data, 16)
    assert row["status"] == "not measured" and "no CUDA device" in row["reason"]


def test_dynamic_latency_times_each_test_text_alone_at_its_own_length(tiny_bert):
    from transformers import AutoTokenizer

    import benchmarks.suite as suite
    from compress.core.data import Dataset
    from compress.core.task import Example
    from runtimes.torch_runtime import TorchRuntime

    runtime, tokenizer = TorchRuntime.open(tiny_bert, threads=1), AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["good film", "a very good film with a plot", "dull " * 30]  # the last one is truncated at 16
    seen: list[dict] = []
    record = SimpleNamespace(run=lambda inputs: seen.append(inputs) or runtime.run(inputs))
    data = Dataset(["neg", "pos"], [], [], [Example(t, 1) for t in texts], "inline")
    cfg = suite.BenchmarkConfig(warmup=0, min_repeats=5, min_seconds=0, max_seconds=1)
    figures = suite._dynamic_latency(record, tokenizer, data, cfg, 16)
    own = sorted(len(tokenizer(t, truncation=True, max_length=16)["input_ids"]) for t in texts)
    assert sorted({x["input_ids"].shape for x in seen}) == [(1, n) for n in own]
    assert all(x["attention_mask"].all() for x in seen)  # no padding
    assert figures["examples"] == 3 and figures["mean_tokens"] == pytest.approx(sum(own) / 3, abs=0.05)
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]


def test_achieved_gmacs_use_the_batch_1_sequence_128_point_and_the_peak_needs_a_known_clock():
    from benchmarks.hardware import nominal_peak
    from benchmarks.suite import achieved_gmacs_per_s

    sweep = [{"batch_size": 1, "sequence_length": 64, "p50_ms": 1.0},
             {"batch_size": 1, "sequence_length": 128, "p50_ms": 4.0}]
    assert achieved_gmacs_per_s(2_000_000_000, sweep) == 500.0  # 2 GMAC in 4 ms
    assert achieved_gmacs_per_s(2_000_000_000, sweep[:1]) is None and achieved_gmacs_per_s(None, sweep) is None
    clock = {"hz": 2.5e9, "source": "py-cpuinfo hz_advertised"}
    avx512 = {"avx2": True, "avx512f": True, "avx512_vnni": True}
    assert nominal_peak(avx512, clock, 2, "fp32") == {
        "gmacs_per_s": 160.0, "basis": "32 fp32 MAC/cycle/core (avx512f) x 2.50 GHz (py-cpuinfo hz_advertised) x 2 threads"}
    assert nominal_peak(avx512, clock, 1, "int8")["gmacs_per_s"] == 320.0  # VNNI: 4x fp32's
    assert nominal_peak({"avx2": True}, clock, 1, "fp32")["gmacs_per_s"] == 40.0
    assert nominal_peak({"avx2": True}, clock, 1, "int8") is None  # no VNNI: no figure rather than a guess
    assert nominal_peak(avx512, None, 1, "fp32") is None and nominal_peak(avx512, clock, 1, "fp16") is None


SHAPES = [[8, 16, 32, 2], [8, 32, 16, 1]]  # [M, K, N, calls]


def test_the_gemm_rate_is_measured_once_per_engine_precision_shapes_and_threads(tmp_path, monkeypatch):
    import benchmarks.efficiency as efficiency

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    timed: list[tuple] = []
    real = efficiency.time_gemm
    monkeypatch.setattr(efficiency, "time_gemm", lambda *a: timed.append(a) or real(*a))
    for backend, precision in (("ort-cpu", "int8"), ("ort-cpu", "fp32"), ("torch-cpu", "fp32")):
        timed.clear()
        rate = efficiency.gemm_rate(backend, precision, SHAPES, 1)
        assert rate["gmacs_per_s"] > 0 and all(s["p50_ms"] > 0 for s in rate["shapes"])
        assert timed == [(backend, precision, 8, 16, 32, 2, 1), (backend, precision, 8, 32, 16, 1, 1)]
        assert efficiency.gemm_rate(backend, precision, SHAPES, 1) == rate and len(timed) == 2  # from the cache
    efficiency.gemm_rate("ort-cpu", "int8", SHAPES, 2)
    efficiency.gemm_rate("ort-cpu", "int8", SHAPES[:1], 1)
    assert len(timed) == 5  # other threads, other shapes: measured
    assert len(list((tmp_path / "gemm").glob("*.json"))) == 5
    assert efficiency.gemm_rate("ort-cuda", "fp32", SHAPES, 1) is None  # no GPU kernel is timed
    assert efficiency.gemm_rate("torch-cpu", "fp16", SHAPES, 1) is None
    assert efficiency.gemm_rate("ort-cpu", "int8", None, 1) is None and len(timed) == 5


def test_the_gemm_rate_counts_every_call_of_every_shape(tmp_path, monkeypatch):
    import benchmarks.efficiency as efficiency

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(efficiency, "time_gemm",  # all calls of a shape: 2 in 8 us, 1 in 1 us
                        lambda backend, precision, m, k, n, calls, threads: {32: 0.008, 16: 0.001}[n])
    rate = efficiency.gemm_rate("ort-cpu", "fp32", SHAPES, 1)
    assert rate["gmacs_per_s"] == round(3 * 4096 / 9e-6 / 1e9, 1)  # 3 multiplies of 4,096 MACs in 9 us
    assert [s["gmacs_per_s"] for s in rate["shapes"]] == [1.0, 4.1]


def test_the_int8_gemm_graph_multiplies_quantized_inputs_by_its_weight(tmp_path):
    from onnx import numpy_helper

    from benchmarks.efficiency import gemm_graph
    from runtimes.ort_runtime import OrtRuntime

    model = gemm_graph("int8", 8, 16, 32, calls=3)  # three layers: three weights of their own, three outputs
    weights = {t.name: numpy_helper.to_array(t) * 0.01 for t in model.graph.initializer if t.dims == [16, 32]}
    assert sorted(weights) == ["w0", "w1", "w2"] and not np.array_equal(weights["w0"], weights["w1"])
    (tmp_path / "gemm.onnx").write_bytes(model.SerializeToString())
    x = np.random.default_rng(1).standard_normal((8, 16), dtype=np.float32)
    session = OrtRuntime(tmp_path / "gemm.onnx", "cpu", 1, "int8").session
    for i, y in enumerate(session.run(None, {"x": x})):
        exact = x @ weights[f"w{i}"]
        assert np.abs(y - exact).max() < 0.05 * np.abs(exact).max()  # 8-bit activations: a close product


def test_the_operator_split_leaves_out_the_first_run_and_sums_node_time_by_op_type():
    from benchmarks.efficiency import operator_split

    node = lambda op, ts, dur: {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur,  # noqa: E731
                                "args": {"op_name": op}}
    trace = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}, node("MatMul", 1, 90),
             {"cat": "Session", "name": "model_run", "ts": 200, "dur": 1000}, node("MatMul", 201, 600),
             node("Gelu", 801, 200), {"cat": "Node", "name": "Gelu_801_fence_before", "ts": 801, "dur": 0,
                                      "args": {"op_name": "Gelu"}},
             {"cat": "Session", "name": "model_run", "ts": 2000, "dur": 1000}, node("MatMul", 2001, 600),
             node("Gelu", 2601, 200), node("LayerNormalization", 2801, 200)]
    assert operator_split(trace) == {"runs": 2, "run_ms": 1.0, "node_ms": 0.9, "ops": [
        {"op": "MatMul", "ms": 0.6, "share": 0.6667}, {"op": "Gelu", "ms": 0.2, "share": 0.2222},
        {"op": "LayerNormalization", "ms": 0.1, "share": 0.1111}]}


@pytest.mark.parametrize("folder", ["fp32", "int8"])
def test_a_profile_of_a_tiny_export_splits_its_time_among_its_matmuls_and_the_rest(folders, folder):
    from transformers import AutoTokenizer

    from benchmarks.efficiency import PROFILED_RUNS, profile_ort
    from compress.core.task import Example, encode

    tokenizer = AutoTokenizer.from_pretrained(folders[folder])
    inputs = encode(tokenizer, [Example("a good film", 1)], 16, pad_to_max=True)
    split = profile_ort(open_folder(folders[folder]), 1, inputs)
    assert (split["batch_size"], split["sequence_length"], split["runs"]) == (1, 16, PROFILED_RUNS)
    assert sum(o["share"] for o in split["ops"]) == pytest.approx(1, abs=1e-3)
    assert 0 < split["node_ms"] <= split["run_ms"]
    ops = [o["op"] for o in split["ops"]]
    matmuls = {"MatMul", "FusedMatMul", "Attention"} if folder == "fp32" else {
        "MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat"}
    assert matmuls & set(ops), ops


@pytest.fixture(scope="module")
def reference_run(folders, external_report, tmp_path_factory) -> Path:
    """A run folder whose report sets int8-onnx (ours) beside fp32-onnx marked as the reference. The artifacts'
    recorded paths are relative and lead nowhere from here: the folders are found in the run folder by name."""
    from benchmarks.report.build import build_report

    run = tmp_path_factory.mktemp("against-reference") / "tiny"
    report = json.loads(external_report.read_text())
    for artifact in report["artifacts"]:
        shutil.copytree(artifact["path"], run / artifact["name"])
        artifact["path"] = f"elsewhere/tiny/{artifact['name']}"
        if artifact["name"] == "fp32-onnx":
            artifact["metrics"]["reference"] = "stand-in for optimum"
    for row in report["rows"]:  # random tiny models are at chance, never "our best": give them scores above it
        if row.get("status") == "measured":
            row["score"] = row["accuracy"] = {"hf": 0.90, "fp32-onnx": 0.90, "int8-onnx": 0.895}[row["artifact"]]
    rebuilt = build_report(report["recipe"], "hf", report["artifacts"], report["rows"], report["hardware"])
    (run / "report.json").write_text(json.dumps(rebuilt))
    return run


def test_against_reference_remeasures_both_in_interleaved_rounds_and_prints_the_ratios(reference_run, capsys):
    import re

    from benchmarks.against_reference import main as against_main

    report = json.loads((reference_run / "report.json").read_text())
    note = report["reference_note"]
    assert (note["reference"]["artifact"], note["best"]["artifact"]) == ("fp32-onnx", "int8-onnx")
    assert against_main([str(reference_run), "--rounds", "5", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "re-measured on ort-cpu: batch 1, sequence 16, 1 thread(s), 5 interleaved rounds" in out  # the report's
    assert len(re.findall(r"^round \d: reference [\d.]+ ms, ours [\d.]+ ms$", out, re.M)) == 5
    figures = {who: (name, float(p50), int(size)) for who, name, p50, size in
               re.findall(r"^(reference|ours): (\S+): p50 ([\d.]+) ms \(median of 5 rounds\), (\d+) bytes", out, re.M)}
    (ref_name, ref_p50, ref_bytes), (our_name, our_p50, our_bytes) = figures["reference"], figures["ours"]
    assert (ref_name, our_name) == ("fp32-onnx", "int8-onnx") and ref_p50 > 0 and our_p50 > 0
    speed = float(re.search(r"^speed ratio \(reference p50 / ours\): ([\d.]+)×$", out, re.M).group(1))
    size = float(re.search(r"^size ratio \(reference bytes / ours\): ([\d.]+)×$", out, re.M).group(1))
    assert speed > 0 and speed == round(ref_p50 / our_p50, 3)
    rows = {r["artifact"]: r for r in report["rows"]}
    assert (ref_bytes, our_bytes) == (rows["fp32-onnx"]["size_bytes"], rows["int8-onnx"]["size_bytes"])
    assert size == round(ref_bytes / our_bytes, 3) > 1  # INT8 is smaller
    drop = float(re.search(r"^test accuracy drop of ours vs the baseline hf \(from the report\): (-?[\d.]+) points$",
                           out, re.M).group(1))
    assert drop == round(rows["int8-onnx"]["score_drop_points"], 2)


def test_against_reference_times_the_two_alternately_at_the_reports_shape(folders):
    from transformers import AutoTokenizer

    from benchmarks.against_reference import fixed_inputs, interleaved

    order: list[str] = []
    p50s = interleaved({"a": lambda: order.append("a") or {"p50_ms": 1.0},
                        "b": lambda: order.append("b") or {"p50_ms": 2.0}}, 5)
    assert order == ["a", "b"] * 5 and p50s == {"a": [1.0] * 5, "b": [2.0] * 5}
    inputs = fixed_inputs(AutoTokenizer.from_pretrained(folders["int8"]), 2, 16)
    assert inputs["input_ids"].shape == (2, 16) and inputs["attention_mask"][0].sum() <= 16


def test_against_reference_refuses_a_run_without_a_report_or_a_reference(external_report, tmp_path, capsys):
    from benchmarks.against_reference import main as against_main

    assert against_main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'report.json'}: no report" in capsys.readouterr().err
    assert json.loads(external_report.read_text())["reference_note"] is None  # nothing is marked as the reference
    assert against_main([str(external_report.parent)]) == 2
    assert f"{external_report}: no reference_note" in capsys.readouterr().err
