"""A run killed anywhere resumes to the report an uninterrupted run gives; a row or a step that breaks never costs the
report; two runs never share a folder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress.run import main
from tests.conftest import TINY_TRAINING, write_recipe

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    {"name": "teacher", "type": "finetune", **TINY_TRAINING},
    {"name": "onnx", "type": "export"},
    {"name": "int8", "type": "quantize", "method": "dynamic"},
]
# Figures that depend on the moment they were measured (timings, memory, load), and what is derived from them.
VOLATILE = {"latency", "dynamic_latency", "gmacs_per_s", "gemm_rate", "operator_split", "load_seconds",
            "rss_before_load_mb", "peak_rss_mb", "load_average_1min", "speedup", "pareto", "path", "reference_note"}


def stable(x):
    """The report without the figures that differ between two measurements of the same files."""
    if isinstance(x, dict):
        return {k: stable(v) for k, v in x.items() if k not in VOLATILE and "seconds" not in k}
    if isinstance(x, list):
        return [stable(v) for v in x]
    return x


def start(recipe: Path, out: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """The pipeline in its own process group, as a CI job or a shell runs it: killing the group kills it whole."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "compress.run", str(recipe), "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def kill_when(proc: subprocess.Popen, reached, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not reached():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert) -> tuple[Path, Path, dict]:
    """(recipe, run folder, report.json) of a run that nobody interrupted, run as the killed ones are (a process of
    its own: the test process's thread settings, left by other tests, would change the last bits of training)."""
    import pandas as pd

    from tests.conftest import sentiment_rows

    folder = tmp_path_factory.mktemp("resume")
    data = folder / "reviews.csv"
    pd.DataFrame(sentiment_rows(240)).to_csv(data, index=False)
    recipe = write_recipe(folder, tiny_bert, data, STEPS, gate={"max_accuracy_drop": 5.0})
    assert start(recipe, folder / "whole").wait(timeout=600) == 0
    run = folder / "whole" / "tiny"
    return recipe, run, json.loads((run / "report.json").read_text())


def test_killed_at_several_points_the_resumed_run_reports_what_an_uninterrupted_one_does(tmp_path, uninterrupted):
    recipe, _, whole = uninterrupted
    out = tmp_path / "killed"
    run = out / "tiny"
    points = [
        ("fine-tuning has started", lambda: (run / "00-teacher.partial").is_dir()),
        ("the export has started", lambda: (run / "01-onnx.partial").is_dir()),
        ("the first benchmark row is written", lambda: any((run / "benchmarks").glob("*.json"))),
    ]
    for what, reached in points:
        killed = start(recipe, out)
        kill_when(killed, reached, what)
        assert json.loads((run / ".lock").read_text())["pid"] == killed.pid  # its lock file outlives it...
        assert not (run / "report.json").exists()
        for folder in run.glob("0*"):  # a killed stage leaves a .partial folder, never one that looks complete
            assert folder.name.endswith(".partial") or (folder / "manifest.json").is_file()
    resumed = start(recipe, out)
    assert resumed.wait(timeout=600) == 0
    assert not list(run.glob("*.partial"))
    report = json.loads((run / "report.json").read_text())
    assert stable(report) == stable(whole)
    assert [r["status"] for r in report["rows"]] == ["measured"] * 3
    # ...but not its flock: each next run took the folder over, and the last one left no lock behind
    assert (run / "run.log").read_text().count("ended without releasing it; taken over") == len(points)
    assert not (run / ".lock").exists()


def test_two_runs_into_one_folder_at_once_one_reports_the_other_exits_2_naming_it(tmp_path, uninterrupted):
    recipe, whole, _ = uninterrupted
    out = tmp_path / "runs"
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    with open(logs[0], "w") as a_err, open(logs[1], "w") as b_err:
        runs = [start(recipe, out, a_err), start(recipe, out, b_err)]
        codes = [p.wait(timeout=600) for p in runs]
    errs = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 2] and not any("Traceback" in e for e in errs)
    winner = runs[codes.index(0)]
    assert (f"in use by another run (pid {winner.pid} on {socket.gethostname()}, started "
            in errs[codes.index(2)])
    run = out / "tiny"
    assert files(run) == files(whole)  # what a single run leaves, no lock file included
    assert stable(json.loads((run / "report.json").read_text())) == stable(json.loads((whole / "report.json").read_text()))


def test_a_failing_last_step_still_reports_the_steps_before_it(tmp_path, uninterrupted):
    recipe, whole, _ = uninterrupted
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(whole, run)
    (run / "benchmarks" / "int8.ort-cpu.json").unlink()  # measured afresh, as after any step
    raw = yaml.safe_load(recipe.read_text())
    raw["steps"].append({"name": "strict", "type": "quantize", "from": "onnx", "parity": {"max_logit_diff": 1e-9}})
    failing = tmp_path / "recipe.yaml"
    failing.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main([str(failing), "--out", str(tmp_path / "runs")]) == 1
    report = json.loads((run / "report.json").read_text())
    assert report["failure"]["step"] == "strict" and report["failure"]["exit_code"] == 1
    assert report["failure"]["reason"].startswith("strict: ")
    assert [(r["artifact"], r["status"]) for r in report["rows"]] == [
        ("teacher", "measured"), ("onnx", "measured"), ("int8", "measured")]
    first = "Run FAILED at step strict (exit 1): strict: "
    assert (run / "report.md").read_text().splitlines()[2].startswith(f"- {first}")
    assert first in (run / "report.html").read_text()
    assert "strict failed; reporting the 3 step(s) that finished" in (run / "run.log").read_text()


def test_a_row_that_fails_in_its_process_is_reported_and_fails_the_gate(tmp_path, uninterrupted):
    recipe, whole, _ = uninterrupted
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(whole, run)
    (run / "01-onnx" / "model.onnx").write_bytes(b"not an onnx model")  # the manifest still says it is done
    (run / "benchmarks" / "onnx.ort-cpu.json").unlink()  # so that row is measured again
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 1
    report = json.loads((run / "report.json").read_text())
    rows = {(r["artifact"], r["backend"]): r for r in report["rows"]}
    failed = rows[("onnx", "ort-cpu")]
    assert failed["status"] == "failed" and "onnx" in failed["reason"].lower()
    assert rows[("int8", "ort-cpu")]["status"] == "measured"  # the other rows are there all the same
    assert f"onnx on ort-cpu: failed: {failed['reason']}" in (run / "report.md").read_text()
    log = (run / "run.log").read_text()
    assert "GATE FAILED: onnx on ort-cpu: its benchmark failed" in log
    assert not (run / "benchmarks" / "onnx.ort-cpu.json").exists()  # a failed row is tried again next run


def test_a_step_rebuilt_by_hand_under_the_same_settings_has_its_rows_measured_again(tmp_path, uninterrupted):
    """Benchmark rows are keyed by the artifact's files too: a step folder deleted and rebuilt writes new files
    under the same hash (new code may make them differ), and the old row must not stand for them."""
    recipe, whole, _ = uninterrupted
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(whole, run)
    stamps = lambda: {p.name: p.stat().st_mtime_ns for p in (run / "benchmarks").glob("*.json")}  # noqa: E731
    before = stamps()
    shutil.rmtree(run / "02-int8")
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    after = stamps()
    assert {name for name in after if after[name] != before.get(name)} == {"int8.ort-cpu.json"}
