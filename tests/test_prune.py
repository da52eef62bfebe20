"""The prune stage on tiny BERT and ALBERT: shapes, config, fresh-process reload, importance, export, bad input."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from compress.core.artifact import Artifact
from compress.core.heads import prune_heads
from compress.core.models import load_call
from compress.stages.prune import (IMPORTANCE, PruneConfig, blocks, drop_layers, head_size, heads_to_prune, prune_ffn,
                                   scoring_batches)
from compress.recipe import load_recipe
from compress.run import main
from compress.core.stage import Context
from tests.conftest import TRANSFORMERS_5, save_tiny_model, write_recipe

FRESH_LOAD = """
import importlib, json, sys, torch
folder, ids, route = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3].split(".")
for k in range(len(route) - 1, 0, -1):  # the longest module prefix, then attributes: a.b.Class.method
    try:
        load = importlib.import_module(".".join(route[:k]))
        break
    except ImportError:
        pass
for name in route[k:]:
    load = getattr(load, name)
model = load(folder).eval()
ours = sorted({m.split(".")[0] for m in sys.modules} & {"compress", "export", "benchmarks", "runtimes"})
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.tolist()
print(json.dumps({"ours": ours, "logits": logits}))
"""
STOCK = "transformers.AutoModelForSequenceClassification.from_pretrained"


def fresh_process_logits(folder, ids: torch.Tensor, route: str | None = None) -> torch.Tensor:
    """Logits of `folder` loaded in a new interpreter by `route`, a dotted call (default: the one its manifest
    names, load_call). A transformers route must work with nothing of ours imported."""
    route = route or load_call("hf-checkpoint", folder, {})
    out = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), json.dumps(ids.tolist()), route],
                         capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    result = json.loads(out.stdout.splitlines()[-1])
    assert not (route.startswith("transformers.") and result["ours"]), result["ours"]
    return torch.tensor(result["logits"])


def context(tmp_path, model, data, **step) -> tuple[Context, PruneConfig]:
    recipe = load_recipe(write_recipe(tmp_path, model, data, [{"name": "pruned", "type": "prune", **step}]))
    return recipe.context(tmp_path, logging.getLogger("test")), recipe.steps[0]


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_heads_neurons_layers_pruned_and_fresh_process_reload_is_identical(tmp_path, arch):
    """The saved checkpoint loads by the route its manifest names (compress's loader: transformers 5 cannot
    load pruned heads) with the logits it had; on transformers 4, stock from_pretrained loads it too."""
    model = AutoModelForSequenceClassification.from_pretrained(
        save_tiny_model(tmp_path / "in", arch, num_hidden_layers=3)).eval()
    drop_layers(model, [1])
    heads, neurons = zip(*IMPORTANCE["l2"](model, []))
    chosen = heads_to_prune(model, list(heads), {0: 0.5} if arch == "albert" else {0: 0.5, 1: 0.25}, 1.0)
    prune_heads(model, chosen)
    prune_ffn(model, list(neurons), 40)

    cfg, d = model.config, head_size(model)
    assert cfg.num_hidden_layers == 2 and cfg.intermediate_size == 40
    expected_heads = [2] if arch == "albert" else [2, 3]  # ALBERT: one shared layer
    assert [b.heads(d) for b in blocks(model)] == expected_heads
    for b in blocks(model):
        assert all(m.weight.shape == (b.heads(d) * d, 32) for m in b.qkv)
        assert b.attn_out.weight.shape == (32, b.heads(d) * d)
        assert b.ffn_in.weight.shape == (40, 32) and b.ffn_out.weight.shape == (32, 40)
    if arch == "albert":
        assert model.albert.embeddings.word_embeddings.weight.shape[1] == 16  # factorized embedding untouched
        assert model.albert.encoder.embedding_hidden_mapping_in.weight.shape == (32, 16)

    model.save_pretrained(tmp_path / "out")
    ids = torch.randint(5, 30, (3, 12))
    with torch.no_grad():
        mine = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert load_call("hf-checkpoint", tmp_path / "out", {}) == "compress.core.models.load_classifier"
    assert torch.allclose(fresh_process_logits(tmp_path / "out", ids), mine, atol=1e-6, rtol=0)
    if not TRANSFORMERS_5:  # 4.x re-applies config.pruned_heads itself
        assert torch.allclose(fresh_process_logits(tmp_path / "out", ids, STOCK), mine, atol=1e-6, rtol=0)


def test_loader_cuts_to_the_record_gives_a_fresh_head_for_other_labels_and_refuses_a_wrong_record(tmp_path):
    from compress.core.errors import CompressError
    from compress.core.models import load_classifier

    model = AutoModelForSequenceClassification.from_pretrained(save_tiny_model(tmp_path / "in", "bert")).eval()
    prune_heads(model, {0: [1, 3], 1: [0]})
    model.save_pretrained(tmp_path / "out")
    loaded = load_classifier(tmp_path / "out")
    assert [b.heads(head_size(loaded)) for b in blocks(loaded)] == [2, 3]
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), atol=0, rtol=0)
    relabelled = load_classifier(tmp_path / "out", ["a", "b", "c"])
    assert relabelled.classifier.out_features == 3
    torch.testing.assert_close(relabelled.bert.state_dict(), model.bert.state_dict(), atol=0, rtol=0)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["pruned_heads"] = {"0": [1]}  # a record the weights do not follow
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressError, match="do not fit its config.json"):
        load_classifier(tmp_path / "out")


def _zero_head(model, head: int) -> None:
    """Make one head of the first layer useless: zero value rows means it contributes nothing."""
    b, d = blocks(model)[0], head_size(model)
    with torch.no_grad():
        for m in b.qkv:
            m.weight[head * d:(head + 1) * d] = 0
            m.bias[head * d:(head + 1) * d] = 0


@pytest.mark.parametrize("arch", ["bert", "albert"])
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "head-mask"])
def test_every_criterion_ranks_a_dead_head_lowest(tmp_path, tiny_csv, arch, importance):
    folder = save_tiny_model(tmp_path / "m", arch)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    _zero_head(model, 2)
    ctx, cfg = context(tmp_path, folder, tiny_csv, importance=importance, heads=0.25, batches=2, batch_size=8)
    scores = IMPORTANCE[importance](model, scoring_batches(_tokenizer(folder), cfg.importance, cfg.batches, cfg.batch_size, ctx))
    assert scores[0][0].argmin().item() == 2
    assert scores[0][0].min() < scores[0][0].max()
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers 5 removed head_mask, the reference this test compares with")
@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_head_mask_scores_match_transformers_head_mask_summed_over_applications(tmp_path, tiny_csv, arch):
    """Our gate (on the output projection's input) must give the gradient of HF's own `head_mask`; for ALBERT,
    summed over the shared layer's applications."""
    folder = save_tiny_model(tmp_path / "m", arch)
    ctx, cfg = context(tmp_path, folder, tiny_csv, importance="head-mask", heads=0.25, batches=1, batch_size=10_000)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ours = torch.stack([h for h, _ in IMPORTANCE["head-mask"](model, scoring_batches(_tokenizer(folder), cfg.importance, cfg.batches, cfg.batch_size, ctx))])

    enc = _tokenizer(folder)([e.text for e in ctx.data.train], padding=True, return_tensors="pt")
    mask = torch.ones(2, 4, requires_grad=True)  # [applications, heads]
    labels = torch.tensor([e.label for e in ctx.data.train])
    # eager: transformers 4.57's ALBERT SDPA attention silently ignores head_mask
    reference = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    torch.nn.functional.cross_entropy(reference(**enc, head_mask=mask).logits, labels).backward()
    ref = mask.grad.abs() if arch == "bert" else mask.grad.sum(0, keepdim=True).abs()
    assert torch.allclose(ours, ref / ref.norm(dim=1, keepdim=True), atol=1e-5)


def test_global_head_ratio_gives_non_uniform_layers_and_keeps_one_head_each(tiny_bert):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    heads = [torch.tensor([0.0, 0.1, 0.2, 0.3]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    assert heads_to_prune(model, heads, 0.5, 1.0) == {0: [0, 1, 2], 1: [0]}  # layer 0 keeps its best head


def test_stage_prunes_iteratively_with_recovery_then_exports_with_parity(tmp_path, tiny_csv):
    folder = save_tiny_model(tmp_path / "m", "bert", num_hidden_layers=3)
    steps = [
        {"name": "pruned", "type": "prune", "importance": "taylor", "heads": {0: 0.5, 2: 0.25}, "ffn": 0.5,
         "drop_layers": [1], "batches": 2, "batch_size": 8, "iterations": 2,
         "recovery": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3}},
        {"name": "pruned-onnx", "type": "export"},
        {"name": "base-onnx", "type": "export", "from": "source"},
    ]
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, folder, tiny_csv, steps)), "--out", str(out)]) == 0
    run = out / "tiny"
    pruned = Artifact.load(run / "00-pruned")
    assert pruned.metrics["heads_per_layer"] == [2, 3] and pruned.metrics["intermediate_size"] == 32
    assert len(pruned.metrics["recovery"]) == 1  # between the two rounds only
    assert pruned.metrics["encoder_parameter_reduction"] > 0.4
    onnx_metrics = Artifact.load(run / "01-pruned-onnx").metrics
    assert onnx_metrics["parity"]["max_abs_logit_diff"] < 1e-3
    assert onnx_metrics["fusions_missing"] == {}  # non-uniform heads still fuse: Attention x2, one per layer
    assert onnx_metrics["fused_operators"]["Attention"] == 2
    rows = {r["artifact"]: r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert rows["pruned-onnx"]["macs_seq128"] < rows["base-onnx"]["macs_seq128"]
    assert rows["pruned"]["encoder_parameters"] == pruned.metrics["encoder_parameters_after"]
    assert "GMACs @128" in (run / "report.md").read_text()


@pytest.mark.parametrize("step, message", [
    ({"heads": 1.0}, "would remove every head"),
    ({"heads": {0: 1.0}}, "would remove every head"),
    ({"ffn": {0: 0.5}}, "config.intermediate_size is one number"),
    ({}, "nothing to prune"),
    ({"drop_layers": [0, 1]}, "at least one layer must stay"),
    ({"heads": {0: 0.9}}, "removes all 4 heads of layer 0"),
    ({"heads": {-1: 0.5}}, "layer index -1 < 0"),
    ({"heads": {0: 0.5}, "drop_layers": [0]}, "heads names layers [0], which drop_layers removes"),
])
def test_impossible_ratios_exit_2_saying_why(tmp_path, tiny_bert, tiny_csv, capsys, step, message):
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, [{"name": "pruned", "type": "prune", **step}])
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("tiny/0*"))


def test_unsupported_architecture_exits_2(tmp_path, tiny_csv, capsys):
    from transformers import DistilBertConfig

    from tests.conftest import write_tokenizer

    folder = tmp_path / "distil"
    AutoModelForSequenceClassification.from_config(DistilBertConfig(
        vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64, num_labels=2)).save_pretrained(folder)
    write_tokenizer(folder)
    recipe = write_recipe(tmp_path, folder, tiny_csv, [{"name": "pruned", "type": "prune", "heads": 0.5}])
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 2
    assert "model_type 'distilbert' is not supported" in capsys.readouterr().err


def test_fusions_missing_names_the_ops_a_bert_of_that_depth_should_get():
    from export.onnx import fusions_missing
    from tests.conftest import tiny_config

    full = {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2, "LayerNormalization": 4}
    assert fusions_missing(full, tiny_config("bert")) == {}
    assert fusions_missing(full | {"Attention": 0}, tiny_config("bert")) == {"Attention": 2}


def test_albert_pruned_by_head_mask_exports_with_parity(tmp_path, tiny_albert, tiny_csv):
    steps = [{"name": "pruned", "type": "prune", "importance": "head-mask", "heads": 0.5, "ffn": 0.25,
              "drop_layers": [1], "batches": 2, "batch_size": 8},
             {"name": "pruned-onnx", "type": "export"}]
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, tiny_albert, tiny_csv, steps)), "--out", str(out)]) == 0
    pruned = Artifact.load(out / "tiny" / "00-pruned").metrics
    assert pruned["heads_per_layer"] == [2] and pruned["intermediate_size"] == 48 and pruned["num_hidden_layers"] == 1
    assert Artifact.load(out / "tiny" / "01-pruned-onnx").metrics["parity"]["max_abs_logit_diff"] < 1e-3
