"""Token classification (NER) after training: ONNX export with per-token dynamic axes, dynamic / static /
Optimum INT8, accuracy-aware INT8 scored by entity F1, .ort mobile, the edge bundle's standalone runner (entity F1
with its own CoNLL scorer, checked against seqeval), benchmark rows, report and gate worded by the metric.

One tiny run (a 2-layer BERT tagger fine-tuned on made-up sentences) is shared by the module.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from benchmarks.compare import main as compare_main
from benchmarks.ingest import main as ingest_main
from compress.core.artifact import Artifact
from compress.core.evaluate import evaluate
from compress.core.task import encode, entity_metrics
from compress.gate import main as gate_main
from compress.recipe import load_recipe
from compress.run import main
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime
from tests.conftest import tiny_config, write_recipe, write_wordpiece
from tests.test_deploy import clean_python  # noqa: F401  (the clean-venv fixture the edge bundle runs in)

PEOPLE = ["john", "mary", "anna", "smithson"]  # WordPiece: smithson = smith ##son, a word of two pieces
PLACES = ["paris", "london", "berlin"]
AMBIGUOUS = "jordan"  # a person as often as a place: no tagger gets every one, so F1 < 1 says something
FILLER = "the a visited met in and from said today went to with near saw left after by at on for".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PEOPLE[:3], "smith", "##son", *PLACES, "new", "york",
         AMBIGUOUS, *FILLER]
TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # sorted, as load_dataset numbers them
EDGE_SAMPLE = 24
STEPS = [
    {"name": "teacher", "type": "finetune", "epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0,
     "min_steps": 0},
    {"name": "onnx", "type": "export"},
    {"name": "dynamic", "type": "quantize", "method": "dynamic"},
    {"name": "static", "type": "quantize", "from": "onnx", "method": "static", "calibration_samples": 32},
    {"name": "optimum", "type": "quantize", "from": "onnx", "method": "optimum-dynamic"},
    {"name": "aware", "type": "quantize", "from": "onnx", "method": "accuracy-aware", "max_accuracy_drop": 100.0,
     "calibration_samples": 32},
    {"name": "mobile", "type": "ort_mobile", "from": "onnx"},
    {"name": "edge", "type": "edge_bundle", "from": "onnx", "sample_size": EDGE_SAMPLE},
]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """Filler words around a person (one or two words) and a place (`new york` is two), IOB2-tagged."""
    person = [(rng.choice(PEOPLE[:3] + [AMBIGUOUS]), "B-PER")] + ([("smithson", "I-PER")] if rng.random() < 0.5
                                                                  else [])
    place = ([("new", "B-LOC"), ("york", "I-LOC")] if rng.random() < 0.3
             else [(rng.choice(PLACES + [AMBIGUOUS]), "B-LOC")])
    chunks = [[(w, "O")] for w in rng.sample(FILLER, rng.randint(1, 6))] + [person, place]
    rng.shuffle(chunks)
    return [pair for chunk in chunks for pair in chunk]


def write_conll(path: Path, n: int = 240) -> Path:
    """Three sentences a document (read_conll groups a document into one split); lengths vary from 3 to 10 words."""
    rng, lines = random.Random(0), []
    for i in range(n):
        lines += ["-DOCSTART- -X- O O", ""] if i % 3 == 0 else []
        lines += [f"{w} NN O {t}" for w, t in sentence(rng)] + [""]
    path.write_text("\n".join(lines))
    return path


def save_encoder(folder: Path) -> Path:
    """A random bare BERT encoder with a WordPiece tokenizer: finetune puts the token head on."""
    import torch
    from transformers import AutoModel

    write_wordpiece(folder, VOCAB)
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(vocab_size=len(VOCAB))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Every post-training stage on a tiny tagger; teacher, onnx and dynamic benchmarked."""
    folder = tmp_path_factory.mktemp("ner-deploy")
    recipe = write_recipe(folder, save_encoder(folder / "encoder"), write_conll(folder / "ner.conll"), STEPS,
                          task="token-classification")
    raw = yaml.safe_load(recipe.read_text())
    raw["data"] = {"source": raw["data"]["source"], "max_length": 16}
    raw["benchmark"] |= {"artifacts": ["teacher", "onnx", "dynamic"]}
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main([str(recipe), "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "tiny"


def art(run: Path, name: str) -> Artifact:
    return Artifact.load(next(run.glob(f"*-{name}")))


@pytest.fixture(scope="module")
def data(run):
    return load_recipe(run.parent.parent / "recipe.yaml").context(run, logging.getLogger("test")).data


def tokenizer(run: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(art(run, "onnx").path)


def test_onnx_export_gives_per_token_logits_equal_to_torch_at_every_length(run, data):
    from transformers import AutoModelForTokenClassification

    onnx_art = art(run, "onnx")
    [logits] = onnx.load(str(onnx_art.file("raw"))).graph.output
    assert [d.dim_param for d in logits.type.tensor_type.shape.dim[:2]] == ["batch", "sequence"]
    assert onnx_art.metrics["fused_operators"].get("Attention") == 2 and not onnx_art.metrics["fusions_missing"]
    assert onnx_art.metrics["parity"]["max_abs_logit_diff"] <= 1e-3
    batch = sorted(data.test, key=lambda e: len(e.words))[:: max(1, len(data.test) // 6)][:6]
    inputs = encode(tokenizer(run), batch, 16)  # padded to the longest: the other rows carry padding
    lengths = inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 3 and inputs["input_ids"].shape[1] != 16  # not the export sample's shape
    torch_model = AutoModelForTokenClassification.from_pretrained(art(run, "teacher").path).eval()
    want, got = TorchRuntime(torch_model).run(inputs), OrtRuntime(onnx_art.file("model")).run(inputs)
    assert got.shape == want.shape == (*inputs["input_ids"].shape, len(TAGS))
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    assert (got[real].argmax(-1) == want[real].argmax(-1)).all()


def test_teacher_learned_the_tags(run, data):
    """Below, INT8 and the device keep an F1 that is worth keeping: the teacher tags well."""
    teacher = art(run, "teacher")
    f1 = evaluate(TorchRuntime.open(teacher.path).run, tokenizer(run), data.test, data.labels, 16, 32)["entity_f1"]
    assert data.labels == TAGS and f1 >= 0.8


@pytest.mark.parametrize("name, op", [("dynamic", "DynamicQuantizeLinear"), ("static", "QuantizeLinear"),
                                      ("optimum", "DynamicQuantizeLinear")])
def test_int8_taggers_keep_per_token_logits_and_entity_f1(run, data, name, op):
    int8, fp32 = art(run, name), art(run, "onnx")
    assert int8.metrics["precision"] == "int8" and int8.metrics["parity_vs_fp32"]["prediction_agreement"] >= 0.9
    assert op in {n.op_type for n in onnx.load(str(int8.file("model"))).graph.node}
    inputs = encode(tokenizer(run), data.test[:8], 16)
    assert OrtRuntime(int8.file("model")).run(inputs).shape == (*inputs["input_ids"].shape, len(TAGS))
    score = lambda a: evaluate(OrtRuntime(a.file("model")).run, tokenizer(run), data.test, TAGS, 16, 32)  # noqa: E731
    assert score(int8)["entity_f1"] >= score(fp32)["entity_f1"] - 0.05


def test_accuracy_aware_scores_the_dev_split_by_entity_f1(run, data):
    aware = art(run, "aware")
    m = aware.metrics
    assert m["metric"] == "entity_f1" and "dev_accuracy_fp32" not in m and m["budget_met"] and len(m["attempts"]) == 1
    dev_f1 = lambda path: evaluate(OrtRuntime(path).run, tokenizer(run), data.dev, TAGS, 16, 64)["entity_f1"]  # noqa: E731
    assert m["dev_score_fp32"] == pytest.approx(dev_f1(art(run, "onnx").file("raw")), abs=1e-9)
    assert m["dev_score_drop_points"] == round(100 * (m["dev_score_fp32"] - dev_f1(aware.file("model"))), 9)


def test_ort_mobile_tagger_gives_the_onnx_logits_per_token(run, data):
    mobile = art(run, "mobile")
    assert mobile.file("model").suffix == ".ort" and mobile.metrics["parity_vs_onnx"]["prediction_agreement"] == 1.0
    inputs = encode(tokenizer(run), data.test, 16)
    got, want = OrtRuntime(mobile.file("model")).run(inputs), OrtRuntime(art(run, "onnx").file("model")).run(inputs)
    assert got.ndim == 3
    np.testing.assert_allclose(got, want, atol=1e-4)


def load_runner():
    """export/edge_runner.py as a module (it is the bundle's run_on_device.py)."""
    spec = importlib.util.spec_from_file_location("edge_runner", Path(__file__).parents[1] / "export" / "edge_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAND_PICKED = [  # (gold, predicted), the cases a CoNLL scorer gets wrong first
    ([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]),  # I- without B- opens an entity (lenient IOB)
    ([["B-PER", "B-PER", "O"]], [["B-PER", "I-PER", "O"]]),  # adjacent entities of one type vs one long one
    ([["B-PER", "B-PER", "B-LOC"]], [["B-PER", "B-PER", "I-LOC"]]),  # adjacent, and I- after another type
    ([["O", "B-LOC", "I-LOC"]], [["O", "B-LOC", "I-PER"]]),  # a type change inside ends the entity
    ([["B-LOC"], ["I-LOC", "O"]], [["B-LOC"], ["I-LOC", "O"]]),  # no entity crosses sentences
    ([["O", "O"]], [["B-PER", "O"]]),  # no gold entity: a type only predicted still has a row
    ([["B-PER", "I-PER"]], [["O", "O"]]),  # no entity found
]


def random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]) for _ in range(n)]


def test_runner_entity_scores_are_seqevals(tmp_path):
    runner = load_runner()
    assert runner.entities([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]) == {("PER", 0, 1), ("PER", 2, 2),
                                                                           ("LOC", 4, 4)}
    rng = random.Random(0)
    cases = HAND_PICKED + [tuple([random_tags(rng, rng.randint(1, 12)) for _ in range(5)] for _ in range(2))
                           for _ in range(300)]
    for gold, predicted in cases:
        predicted = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, predicted)]  # one tag per word
        want, got = entity_metrics(gold, predicted), runner.entity_scores(gold, predicted)
        for key in ("metric", "score", "entity_f1", "precision", "recall", "macro_f1", "token_accuracy"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (key, gold, predicted)
        assert got["per_class"].keys() == want["per_class"].keys(), (gold, predicted)
        for t, c in want["per_class"].items():
            assert got["per_class"][t] == pytest.approx(c, abs=1e-12), (t, gold, predicted)


def test_edge_bundle_runner_reports_entity_f1_standalone_and_is_ingested(run, data, clean_python, tmp_path,  # noqa: F811
                                                                           capsys):
    with tarfile.open(art(run, "edge").file("tarball")) as tar:  # the tarball alone travels to the device
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "edge"
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["task"] == "token-classification" and manifest["outside"] == TAGS.index("O")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(clean_python), str(bundle / "run_on_device.py"), "--out", str(tmp_path / "r.json"),
                           "--repeats", "10", "--warmup", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["metric"] == "entity_f1" and "accuracy" not in results and results["examples"] == EDGE_SAMPLE
    assert f"entity_f1 {results['score']:.4f} on {EDGE_SAMPLE} examples" in done.stdout

    # The device's figures are the project's own (seqeval) on the same examples, one at a time as the device runs.
    core = evaluate(OrtRuntime(art(run, "onnx").file("model")).run, tokenizer(run), data.test[:EDGE_SAMPLE], TAGS,
                    16, 1)
    assert 0.5 <= core["entity_f1"] < 1 and len(core["per_class"]) == 2
    assert results["precision"] == "fp32"  # the model's; entity-level precision and recall have their own names
    for key in ("entity_f1", "precision", "recall", "macro_f1", "token_accuracy"):
        assert results.get(f"entity_{key}", results.get(key)) == pytest.approx(core[key], abs=1e-9), key
    assert results["per_class"].keys() == core["per_class"].keys()
    for kind, figures in core["per_class"].items():
        assert results["per_class"][kind] == pytest.approx(figures, abs=1e-9), kind

    assert ingest_main([str(tmp_path / "r.json"), "--run", str(run)]) == 0
    row = next(r for r in json.loads((run / "report.json").read_text())["rows"] if r["artifact"] == "edge")
    assert row["metric"] == "entity_f1" and row["score"] == results["score"] and row["per_class"].keys() == {"LOC", "PER"}


def test_benchmark_rows_carry_entity_f1_per_type_and_the_token_logits(run, data):
    report = json.loads((run / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["rows"] if r["status"] == "measured" and "measured_on" not in r}
    assert set(rows) == {"teacher", "onnx", "dynamic"} and report["metric"] == "entity_f1"
    teacher = rows["teacher"]
    core = evaluate(TorchRuntime.open(art(run, "teacher").path).run, tokenizer(run), data.test, TAGS, 16, 64)
    assert teacher["metric"] == "entity_f1" and teacher["score"] == teacher["entity_f1"] == core["entity_f1"]
    assert teacher["entity_precision"] == core["precision"] and teacher["entity_recall"] == core["recall"]
    assert teacher["precision"] == "fp32" and teacher["token_accuracy"] == core["token_accuracy"]
    assert "accuracy" not in teacher
    assert teacher["per_class"] == core["per_class"] and set(teacher["per_class"]) == {"LOC", "PER"}
    assert teacher["logits_shape"][0] == 1 and teacher["logits_shape"][2] == len(TAGS)
    assert teacher["macs_seq128"] > 0 and teacher["size_split"]["head"]["parameters"] == 32 * 5 + 5
    assert report["baseline"] == {"artifact": "teacher", "backend": "torch-cpu", "metric": "entity_f1",
                                  "score": teacher["score"]}
    md = (run / "report.md").read_text()
    assert "| artifact | back end | precision | threads | entity F1 | macro-F1 |" in md
    assert f"(test entity F1 {teacher['score']:.4f})" in md and "![Entity F1 vs p50 latency]" in md
    assert "| artifact | back end | entity F1 (micro) | LOC | PER |" in md
    assert f"| teacher | torch-cpu | {teacher['score']:.4f} | {teacher['per_class']['LOC']['f1']:.4f} |" in md
    assert "| entity type | precision | recall | F1 | support |" in md and "| class |" not in md
    assert "Entity F1 vs size on disk" in (run / "report.html").read_text()


def test_gate_and_compare_judge_entity_f1_and_say_so(run, tmp_path, capsys):
    report = json.loads((run / "report.json").read_text())
    assert gate_main([str(run / "report.json"), "--max-drop", "100"]) == 0
    worse = json.loads(json.dumps(report))
    row = next(r for r in worse["rows"] if r["artifact"] == "dynamic")
    row["score"] = row["entity_f1"] = report["baseline"]["score"] - 0.05  # five points below the baseline
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    capsys.readouterr()
    assert gate_main([str(tmp_path / "worse.json"), "--max-drop", "1.0"]) == 1
    err = capsys.readouterr().err
    assert f"GATE FAILED: dynamic on ort-cpu: entity_f1 {row['score']:.4f} is 5.000 points below the baseline" in err
    assert "accuracy" not in err
    assert compare_main([str(run / "report.json"), str(tmp_path / "worse.json"), "--max-drop", "1.0"]) == 1
    out, err = capsys.readouterr()
    assert "REGRESSION: dynamic on ort-cpu: entity_f1" in err and "the old report's" in err
    assert "dynamic on ort-cpu: entity_f1 " in out and "accuracy" not in out
