"""distill on tiny models: students are built faithfully, losses behave, recipes run, DDP matches one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from compress.core.artifact import Artifact
from compress.stages.distill import AttentionMSE, DistillLoss, HiddenMSE, LossConfig, SoftKL, head_pairs
from compress.core.errors import CompressError
from compress.core.heads import prune_heads
from compress.run import main
from compress.stages.students import (AlbertizeSpec, GradualSharing, albertize, embedding_row_counts, factorize_embeddings, layer_drop,
                               parameter_split)
from tests.conftest import TINY_TRAINING, save_tiny_model, write_recipe
from tests.test_prune import fresh_process_logits

ROOT = Path(__file__).resolve().parents[1]
INPUTS = {"input_ids": torch.tensor([[2, 5, 9, 11, 3, 0], [2, 7, 8, 3, 0, 0]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]),
          "token_type_ids": torch.zeros(2, 6, dtype=torch.long)}


def load(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def logits(model, **flags):
    with torch.no_grad():
        return model(**INPUTS, **flags).logits


def row_counts(model) -> torch.Tensor:
    """Seeded stand-in token counts for every row of [W; P; T]."""
    c = model.config
    n = c.vocab_size + c.max_position_embeddings + c.type_vocab_size
    return torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(0)).double()


def test_embedding_row_counts_counts_unmasked_words_positions_and_types():
    encoded = {"input_ids": np.array([[2, 3, 0], [3, 1, 1]]), "attention_mask": np.array([[1, 1, 0], [1, 1, 1]])}
    config = SimpleNamespace(vocab_size=5, max_position_embeddings=4, type_vocab_size=2)
    assert embedding_row_counts(encoded, config).tolist() == [0, 2, 1, 2, 0] + [2, 2, 1, 0] + [5, 0]


def test_weighted_factorization_fits_the_rows_the_corpus_uses():
    torch.manual_seed(0)
    tables = [torch.randn(40, 16), torch.randn(8, 16), torch.randn(2, 16)]
    heavy = torch.ones(50, dtype=torch.double)
    heavy[:5] = 1000.0  # five words the task reads all the time

    def row_error(weights):
        (w, p, t), mapping, _, kept = factorize_embeddings(tables, torch.ones(16), torch.zeros(16), 4, weights)
        fit = torch.cat([w, p, t]).double() @ mapping.double().T / (16 / 4) ** 0.5
        centred = torch.cat(tables).double() - torch.cat(tables).double().mean(1, keepdim=True)
        return ((fit - centred) ** 2).sum(1), kept

    uniform, kept_uniform = row_error(None)
    weighted, kept_weighted = row_error(heavy)
    assert weighted[:5].sum() < 0.5 * uniform[:5].sum()  # the heavy rows fit far better...
    assert kept_weighted < kept_uniform  # ...at the cost of the table as a whole


@pytest.mark.parametrize("per_group", [1, 2])
def test_albertize_at_full_rank_reproduces_a_bert_it_can_share_exactly(tmp_path, per_group):
    # With E = H the centred embedding tables fit exactly. A 1-layer BERT needs no sharing; a 4-layer BERT whose
    # layers go A B A B is shared exactly by one group of 2 distinct layers, if they run in the teacher's order.
    layers = 1 if per_group == 1 else 4
    teacher = load(save_tiny_model(tmp_path / "t", "bert", num_hidden_layers=layers))
    encoder = teacher.bert.encoder.layer
    for i in range(per_group, layers):
        encoder[i].load_state_dict(encoder[i - per_group].state_dict())
    student, info = albertize(teacher, AlbertizeSpec(embedding_size=32, layers_per_group=per_group),
                               lambda: row_counts(teacher))
    assert type(student).__name__ == "AlbertForSequenceClassification"
    assert student.config.inner_group_num == per_group and student.config.num_hidden_layers == layers // per_group
    assert info["embedding_svd_energy_kept"] == pytest.approx(1.0)
    torch.testing.assert_close(logits(student.eval()), logits(teacher), atol=1e-5, rtol=1e-4)


def test_albertize_shrinks_embeddings_and_shares_layers(tmp_path):
    teacher = load(save_tiny_model(tmp_path / "t", "bert", num_hidden_layers=4))
    counts = lambda: row_counts(teacher)  # noqa: E731
    student, info = albertize(teacher, AlbertizeSpec(embedding_size=8, num_groups=2, init="first"), counts)
    s, t = parameter_split(student), parameter_split(teacher)
    assert s["encoder"] == t["encoder"] // 2 and s["embeddings"] < t["embeddings"] and 0 < info["embedding_svd_energy_kept"] < 1
    groups = student.albert.encoder.albert_layer_groups
    torch.testing.assert_close(groups[1].albert_layers[0].ffn.weight, teacher.bert.encoder.layer[2].intermediate.dense.weight)
    averaged, _ = albertize(teacher, AlbertizeSpec(embedding_size=8), counts)
    mean = torch.stack([l.attention.self.query.weight for l in teacher.bert.encoder.layer]).mean(0)
    torch.testing.assert_close(averaged.albert.encoder.albert_layer_groups[0].albert_layers[0].attention.query.weight, mean)
    with pytest.raises(CompressError, match="num_groups"):
        albertize(teacher, AlbertizeSpec(num_groups=3), counts)
    # one group of 2 distinct layers repeated twice: inner layer 1 stands for teacher layers 1 and 3
    paired, _ = albertize(teacher, AlbertizeSpec(embedding_size=8, layers_per_group=2), counts)
    assert paired.config.num_hidden_layers == 2 and parameter_split(paired)["encoder"] == t["encoder"] // 2
    mean = torch.stack([teacher.bert.encoder.layer[i].output.dense.weight for i in (1, 3)]).mean(0)
    torch.testing.assert_close(paired.albert.encoder.albert_layer_groups[0].albert_layers[1].ffn_output.weight, mean)
    with pytest.raises(CompressError, match="layers_per_group 3"):
        albertize(teacher, AlbertizeSpec(layers_per_group=3), counts)
    with pytest.raises(CompressError, match="at least layers_per_group"):  # each group would run once
        albertize(teacher, AlbertizeSpec(num_groups=2, layers_per_group=2), counts)
    with pytest.raises(CompressError, match="weight_rows"):
        albertize(teacher, AlbertizeSpec(embedding_size=8))  # corpus weighting without counts


def test_gradual_sharing_starts_unshared_and_ends_as_the_stock_shared_albert(tmp_path):
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = load(save_tiny_model(tmp_path / "t", "bert", num_hidden_layers=4, **no_dropout))
    counts = lambda: row_counts(teacher)  # noqa: E731
    spec = AlbertizeSpec(embedding_size=8, num_groups=2, anneal=0.5)
    student, _ = albertize(teacher, spec, counts)
    unshared, _ = albertize(teacher, spec.model_copy(update={"anneal": 0.0, "num_groups": 4}), counts)
    shared, _ = albertize(teacher, spec.model_copy(update={"anneal": 0.0}), counts)
    sharing = GradualSharing.of(student)
    assert sharing is not None and GradualSharing.of(shared) is None
    # training mode at the first step: the unshared student; eval mode: the shared one (what dev accuracy sees)
    sharing(0, 10)
    torch.testing.assert_close(logits(student.train()), logits(unshared.train()))
    torch.testing.assert_close(logits(student.eval()), logits(shared))
    sharing(3, 10)
    assert sharing.c == pytest.approx(0.4)
    with torch.no_grad():  # training moves the shared and the own weights: the shared model follows
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    halfway = logits(student.train())
    assert not torch.allclose(halfway, logits(student.eval()))
    sharing(5, 10)
    assert sharing.c == 0.0
    torch.testing.assert_close(logits(student.train()), logits(student.eval()))
    final = sharing.shared_model(student)
    assert type(final).__name__ == "AlbertForSequenceClassification" and final.config.num_hidden_groups == 2
    assert parameter_split(final) == parameter_split(shared)
    torch.testing.assert_close(logits(final), logits(student.eval()))
    with pytest.raises(CompressError, match="anneal needs layers_per_group 1"):
        albertize(teacher, AlbertizeSpec(embedding_size=8, layers_per_group=2, anneal=0.5), counts)


def test_layer_drop_keeps_chosen_teacher_layers(tiny_bert):
    teacher = load(tiny_bert)
    student = layer_drop(teacher, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    torch.testing.assert_close(student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[1].output.dense.weight)
    assert len(teacher.bert.encoder.layer) == 2  # the teacher is untouched
    with pytest.raises(CompressError, match="layer_drop"):
        layer_drop(teacher, [0, 2])


def test_layer_drop_of_an_albert_applies_its_shared_groups_fewer_times_and_reloads_identically(tmp_path):
    teacher = load(save_tiny_model(tmp_path / "albert", "albert", num_hidden_layers=4))
    student = layer_drop(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    torch.testing.assert_close(student.state_dict(), teacher.state_dict())  # same shared weights, fewer applications
    assert len(student(**INPUTS, output_hidden_states=True).hidden_states) == 3
    student.save_pretrained(tmp_path / "student")
    ids = torch.randint(5, 30, (3, 12))
    with torch.no_grad():
        mine = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(fresh_process_logits(tmp_path / "student", ids), mine)
    for keep, message in [([0, 4], r"0\.\.3"), ([1, 1], "distinct")]:
        with pytest.raises(CompressError, match=message):
            layer_drop(teacher, keep)
    two_groups = load(save_tiny_model(tmp_path / "two", "albert", num_hidden_layers=4, num_hidden_groups=2))
    assert layer_drop(two_groups, [0, 1]).config.num_hidden_layers == 2
    with pytest.raises(CompressError, match="do not split evenly over the ALBERT's 2 shared groups"):
        layer_drop(two_groups, [0, 1, 2])
    inner = load(save_tiny_model(tmp_path / "inner", "albert", num_hidden_layers=4, inner_group_num=2))
    with pytest.raises(CompressError, match="fewer than its 2 inner layers"):
        layer_drop(inner, [0])


def test_recipe_distills_a_shallower_albert_from_an_albert_source(tmp_path, tiny_csv):
    source = save_tiny_model(tmp_path / "albert", "albert", num_hidden_layers=4)
    steps = [{"name": "shallow", "type": "distill", "student": {"layer_drop": [0, 2]},
              "epochs": 1, "batch_size": 16, "learning_rate": 1e-3}]
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, source, tiny_csv, steps)), "--out", str(out)]) == 0
    shallow = out / "tiny" / "00-shallow"
    assert Artifact.load(shallow).metrics["kept_layers"] == [0, 2]
    assert load(shallow).config.num_hidden_layers == 2


def test_losses_vanish_on_a_perfect_copy_and_project_different_widths(tmp_path, tiny_bert):
    teacher = load(tiny_bert)
    teacher.set_attn_implementation("eager")  # SDPA returns no attention maps on transformers 5 (4.x fell back)
    out = teacher(**INPUTS, output_hidden_states=True, output_attentions=True)
    cfg = LossConfig(hidden=1.0, attention=1.0)
    assert SoftKL(cfg, {}, {})(out, out, None, INPUTS["attention_mask"]).item() == pytest.approx(0.0, abs=1e-7)
    assert AttentionMSE(cfg, {1: 1, 2: 2}, {})(out, out, None, INPUTS["attention_mask"]).item() == 0.0
    wide = load(save_tiny_model(tmp_path / "w", "bert", hidden_size=48, num_attention_heads=4))
    loss = DistillLoss(cfg.model_copy(update={"attention": 0.0}), teacher, wide)
    assert sorted(loss.projections) == ["1", "2"] and loss.projections["1"].in_features == 48
    w = wide(**INPUTS, output_hidden_states=True)
    assert HiddenMSE(cfg, loss.layer_map, loss.projections)(w, out, None, INPUTS["attention_mask"]).item() > 0
    fewer_heads = load(save_tiny_model(tmp_path / "h", "bert", num_attention_heads=2))
    with pytest.raises(CompressError, match="heads"):
        DistillLoss(cfg, teacher, fewer_heads)(fewer_heads, INPUTS, torch.tensor([0, 1]))


def test_pruned_student_compares_each_head_with_the_teacher_head_it_was_cut_from(tiny_bert):
    """Pruning heads leaves the others' attention maps as they were, so an untrained pruned copy matches its
    teacher exactly when each head meets its origin; matched by position instead, the maps differ."""
    teacher, pruned = load(tiny_bert).eval(), load(tiny_bert).eval()
    prune_heads(pruned, {1: [0, 2]})  # layer 2 keeps heads 1 and 3 of 4; widths stay equal
    hidden = DistillLoss(LossConfig(kl=0.0, ce=0.0, hidden=1.0), teacher, pruned)
    assert not hidden.projections and hidden(pruned, INPUTS, torch.tensor([0, 1])).item() > 0
    attention = DistillLoss(LossConfig(kl=0.0, ce=0.0, attention=1.0), teacher, pruned)
    assert head_pairs(attention.layer_map, pruned, teacher) == {1: [0, 1, 2, 3], 2: [1, 3]}
    assert attention(pruned, INPUTS, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-12)
    s, t = (m(**INPUTS, output_attentions=True) for m in (pruned, teacher))
    positional = AttentionMSE(LossConfig(attention=1.0), {2: 2}, {}, {2: [0, 1]})(s, t, None, INPUTS["attention_mask"])
    assert positional.item() > 1e-6


def test_cached_teacher_gives_the_same_loss_and_runs_once_per_text(tiny_bert):
    """A second epoch meets the same texts in other batches with other padding: the loss must not change, and the
    teacher must not run again; a search's next candidate (same teacher layers) reuses the rows too."""
    teacher, student = load(tiny_bert), load(tiny_bert)
    torch.nn.init.normal_(student.bert.encoder.layer[0].attention.self.query.weight)  # not a perfect copy
    cfg, labels, shared = LossConfig(ce=0.5, hidden=1.0, attention=1.0), torch.tensor([0, 1]), {}
    fresh, cached = DistillLoss(cfg, teacher, student), DistillLoss(cfg, teacher, student, cache=shared)
    same_layers = DistillLoss(cfg.model_copy(update={"layer_map": {1: 2, 2: 1}}), teacher, load(tiny_bert), shared)
    fewer_layers = DistillLoss(cfg.model_copy(update={"layer_map": {2: 2}}), teacher, student, cache=shared)
    other_layers = DistillLoss(cfg.model_copy(update={"layer_map": {1: 0, 2: 2}}), teacher, student, cache=shared)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))  # after the losses' own one-token probes
    first = cached(student, INPUTS, labels)
    assert first.item() == pytest.approx(fresh(student, INPUTS, labels).item(), rel=1e-3) and len(calls) == 2
    reordered = {k: torch.cat([v.flip(0), torch.zeros(2, 3, dtype=v.dtype)], 1) for k, v in INPUTS.items()}
    again = cached(student, reordered, labels.flip(0))
    assert len(calls) == 2  # the cached loss read its rows; the teacher did not run
    assert again.item() == pytest.approx(fresh(student, reordered, labels.flip(0)).item(), rel=1e-3)
    assert again.item() == pytest.approx(first.item(), rel=1e-3)
    same_layers(student, INPUTS, labels)
    assert len(calls) == 3  # {1: 2, 2: 1} reads teacher layers 1 and 2, as the default map does: shared rows
    fewer_layers(student, INPUTS, labels)
    assert len(calls) == 3  # teacher layer 2 only: the rows hold it
    widened = other_layers(student, INPUTS, labels)
    assert len(calls) == 4  # the embeddings' output (layer 0) is not in the rows: the teacher runs again
    uncached = DistillLoss(cfg.model_copy(update={"layer_map": {1: 0, 2: 2}}), teacher, student)
    assert widened.item() == pytest.approx(uncached(student, INPUTS, labels).item(), rel=1e-3)


def test_recipe_distills_students_and_the_albert_exports_with_parity(tmp_path, tiny_bert, tiny_csv):
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("a very good film\n\nthe plot was dull\n")
    train = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3}
    steps = [
        {"name": "teacher", "type": "finetune", **TINY_TRAINING},  # a teacher that learned (else the run stops)
        {"name": "albert", "type": "distill", "teacher": "teacher",
         "student": {"albertize": {"embedding_size": 8, "anneal": 0.5}},
         "loss": {"hidden": 1.0, "attention": 1.0}, "unlabeled": str(unlabeled), **train},
        {"name": "albert-onnx", "type": "export"},
        {"name": "shallow", "type": "distill", "from": "teacher", "student": {"layer_drop": [1]},
         "early_stopping_patience": 1, "augment": {"share": 0.5, "neighbours": 3}, **train},
        {"name": "wide", "type": "distill", "from": "teacher", "student": {"fresh": {"hidden_size": 48}},
         "loss": {"hidden": 1.0, "ce": 0.0, "layer_map": {0: 0, 2: 2}}, **train},
    ]
    out = tmp_path / "runs"
    assert main([str(write_recipe(tmp_path, tiny_bert, tiny_csv, steps)), "--out", str(out)]) == 0
    run = out / "tiny"
    albert = Artifact.load(run / "01-albert")
    assert albert.metrics["teacher"] == "teacher" and albert.metrics["unlabeled_examples"] == 2
    assert albert.metrics["student_parameters"]["total"] < albert.metrics["teacher_parameters"]["total"]
    assert load(run / "01-albert").config.num_hidden_groups == 1  # shared gradually, saved shared
    albert_onnx = Artifact.load(run / "02-albert-onnx")
    assert albert_onnx.metrics["parity"]["max_abs_logit_diff"] < 1e-3
    fused = onnx.load(albert_onnx.path / "model.onnx")  # the shared layer's weights stay one copy after fusion
    contents = [(tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes()) for t in fused.graph.initializer]
    assert len(contents) == len(set(contents))
    assert load(run / "04-wide").config.hidden_size == 48
    rows = {(r["artifact"], r["backend"]): r for r in json.loads((run / "report.json").read_text())["rows"]}
    assert rows[("shallow", "torch-cpu")]["status"] == "measured"

    # Stock transformers, in a fresh process with nothing of ours imported, loads the ALBERT and its WordPiece tokenizer.
    code = ("import sys; from transformers import AutoTokenizer, AlbertForSequenceClassification as A; "
            f"t = AutoTokenizer.from_pretrained('{run / '01-albert'}'); m = A.from_pretrained('{run / '01-albert'}'); "
            "print(type(t).__name__.removesuffix('Fast'), t.is_fast, m(**t(['a good film'], return_tensors='pt')).logits.shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["BertTokenizer", "True"] and "torch.Size([1, 2])" in done.stdout


def test_teacher_must_be_an_earlier_checkpoint_step(tmp_path, tiny_bert, tiny_csv, capsys):
    steps = [{"name": "onnx", "type": "export"}, {"name": "s", "type": "distill", "from": "source", "teacher": "onnx"}]
    assert main([str(write_recipe(tmp_path, tiny_bert, tiny_csv, steps)), "--out", str(tmp_path / "runs")]) == 2
    assert "steps[1] (s).teacher: 'onnx' is not an earlier hf-checkpoint step" in capsys.readouterr().err


def test_unlabeled_data_on_a_user_file_means_its_training_texts(tmp_path, tiny_bert, tiny_csv, capsys):
    """A recipe written for rotten_tomatoes (`unlabeled: data`) runs unchanged on a user's file, which has no
    unlabeled text of its own: distillation reads the training texts alone, and the log says so."""
    steps = [{"name": "s", "type": "distill", "from": "source", "unlabeled": "data", "epochs": 1}]
    recipe = write_recipe(tmp_path, tiny_bert, tiny_csv, steps, benchmark={"backends": ["torch-cpu"],
                          "sequence_lengths": [16], "min_repeats": 5, "max_seconds": 0.2})
    assert main([str(recipe), "--out", str(tmp_path / "runs")]) == 0
    assert "unlabeled: 'data': " + str(tiny_csv) + " carries no unlabeled text of its own, so distillation reads " \
           "its " in capsys.readouterr().err
    assert Artifact.load(tmp_path / "runs" / "tiny" / "00-s").metrics["unlabeled_examples"] == 0
    steps[0]["unlabeled"] = str(tmp_path / "missing.txt")
    assert main([str(write_recipe(tmp_path, tiny_bert, tiny_csv, steps)), "--out", str(tmp_path / "runs")]) == 2
    assert "unlabeled text file not found" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path, tiny_csv):
    """torchrun, two CPU processes, gloo on localhost: fine-tuning and distillation land where one process does."""
    model = save_tiny_model(tmp_path / "model", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    train = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3}
    steps = [{"name": "teacher", "type": "finetune", "force": True, "min_steps": 0, **train},
             {"name": "student", "type": "distill", "student": {"layer_drop": [1]}, "loss": {"hidden": 1.0}, **train}]
    # 22 steps at 1e-3 leave the teacher at chance, which would stop the run: the test compares trajectories, and
    # at a learning rate where the tiny model learns, float sums in another order already change dev predictions.
    recipe = write_recipe(tmp_path, model, tiny_csv, steps, gate={"allow_chance_baseline": True,
                                                                   "max_accuracy_drop": 100})
    assert main([str(recipe), "--out", str(tmp_path / "one")]) == 0
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "compress.run", str(recipe), "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in (tmp_path / "two" / "tiny" / "run.log").read_text()
    start = load(tmp_path / "model")
    for step in ("00-teacher", "01-student"):
        one, two = (Artifact.load(tmp_path / d / "tiny" / step) for d in ("one", "two"))
        assert one.hash == two.hash
        assert [h["dev_score"] for h in one.metrics["history"]] == [h["dev_score"] for h in two.metrics["history"]]
        a, b = load(one.path), load(two.path)
        torch.testing.assert_close(logits(a), logits(b), atol=5e-3, rtol=1e-2)
        # Rounding differs (half batches, all-reduce) and Adam amplifies it on near-zero gradients, so the test
        # bounds the disagreement by the training movement: a wrong global batch or data order moves far more.
        apart = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), start.parameters()) if p.shape == q.shape)
        assert apart < 0.1 * moved, (step, apart, moved)
        start = a
