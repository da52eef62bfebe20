"""Token classification (NER) through the training-side stages, on tiny taggers built here: finetune, prune,
distill (per-token losses; BERT and ALBERT students), vocab_prune (word alignment kept) and qat.

Stages run through the pipeline's own run_step (hashes, artifacts), without the benchmark and report that follow
a whole run: those are another layer's, tested on their own.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from compress.core.artifact import Artifact
from compress.core.evaluate import evaluate
from compress.core.task import IGNORE, Example, encode_labeled, encode_words, word_predictions
from compress.pipeline import run_step, source_artifact
from compress.recipe import load_recipe
from compress.stages.distill import HardCE, LossConfig, SoftKL, read_unlabeled
from compress.stages.prune import IMPORTANCE, blocks, head_size, scoring_batches
from runtimes.ort_runtime import OrtRuntime
from runtimes.torch_runtime import TorchRuntime
from tests.conftest import tiny_config, write_recipe, write_wordpiece
from tests.test_prune import fresh_process_logits

TASK = "token-classification"
FIRST = ["john", "mary", "paul", "anna"]
LAST = ["smith", "jones", "smithson"]  # WordPiece: smithson = smith ##son: a word of two pieces
CITY = ["paris", "london", "berlin"]
FILLER = ("the a visited met in and from said today went to with lives near saw left after before by at on "
          "for").split()
TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # the sorted tag set, as load_dataset numbers it
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDPIECE = SPECIALS + FIRST + LAST[:2] + ["##son"] + CITY + ["new", "york"] + FILLER
TRAIN = {"epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.0, "min_steps": 0}


def entity(rng: random.Random) -> list[tuple[str, str]]:
    """A person (first name, sometimes a surname) or a place (a city, or `new york`), IOB2-tagged."""
    if rng.random() < 0.5:
        person = [(rng.choice(FIRST), "B-PER")]
        return person + ([(rng.choice(LAST), "I-PER")] if rng.random() < 0.5 else [])
    return [("new", "B-LOC"), ("york", "I-LOC")] if rng.random() < 0.3 else [(rng.choice(CITY), "B-LOC")]


def tagged_sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        chunks = [[(w, "O")] for w in rng.sample(FILLER, 4)] + [entity(rng), entity(rng)]
        rng.shuffle(chunks)
        sentences.append([pair for chunk in chunks for pair in chunk])
    return sentences


def write_conll(path: Path, n: int = 240) -> Path:
    """A CoNLL file, three sentences a document (read_conll's groups keep a document in one split)."""
    lines = []
    for i, sentence in enumerate(tagged_sentences(n)):
        if i % 3 == 0:
            lines += ["-DOCSTART- -X- O O", ""]
        lines += [f"{w} NN O {t}" for w, t in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


def wordpiece_tokenizer(folder: Path):
    return write_wordpiece(folder, WORDPIECE)


def unigram_tokenizer(folder: Path):
    """A SentencePiece-style fast tokenizer (Unigram over `▁word` pieces, Metaspace pre-tokenizer), as ALBERT
    checkpoints carry: `smithson` is `▁smith son`."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    words = FIRST + LAST[:2] + CITY + ["new", "york"] + FILLER
    pieces = [(s, 0.0) for s in SPECIALS] + [("▁" + w, -1.0) for w in words] + [("son", -2.0), ("▁", -4.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(Unigram(pieces, unk_id=1))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_encoder(folder: Path, arch: str, **overrides) -> Path:
    """A random bare encoder (no head, as a pretrained checkpoint comes) with its tokenizer: finetune puts the
    token head on."""
    from transformers import AutoModel

    tokenizer = unigram_tokenizer(folder) if arch == "albert" else wordpiece_tokenizer(folder)
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(arch, vocab_size=len(tokenizer), **overrides)).save_pretrained(folder)
    return folder


def recipe_for(folder: Path, source: Path, conll: Path, steps: list[dict], **data):
    """A token-classification recipe on the conll file (its documents group the split); `data` adds data keys."""
    path = write_recipe(folder, source, conll, steps, task=TASK)
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {"source": str(conll), "max_length": 24} | data
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(path)


def run_steps(folder: Path, source: Path, conll: Path, steps: list[dict], **data) -> tuple[dict[str, Artifact], object]:
    """Every step of a recipe, as the pipeline runs them; returns the artifacts and the stage context."""
    recipe = recipe_for(folder, source, conll, steps, **data)
    ctx = recipe.context(folder / "run", logging.getLogger("test-ner"))
    source_art = source_artifact(recipe)
    for i, step in enumerate(recipe.steps):
        ctx.artifacts[step.name] = run_step(i, recipe, ctx, source_art, force=False)
    return ctx.artifacts, ctx


def load(folder: Path):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(folder).eval()


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def dev_f1(folder: Path, ctx) -> float:
    """Entity F1 of a checkpoint on the dev split, scored here from its folder (not the stage's own figure)."""
    return evaluate(TorchRuntime(load(folder)).run, tokenizer_of(folder), ctx.data.dev, ctx.data.labels,
                    ctx.max_length, 32)["entity_f1"]


@pytest.fixture(scope="module")
def conll(tmp_path_factory) -> Path:
    return write_conll(tmp_path_factory.mktemp("ner-data") / "ner.conll")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, conll):
    """A tiny BERT fine-tuned into a tagger: (its artifact, the stage context)."""
    folder = tmp_path_factory.mktemp("ner-teacher")
    arts, ctx = run_steps(folder, save_encoder(folder / "encoder", "bert"), conll,
                          [{"name": "teacher", "type": "finetune", **TRAIN}])
    return arts["teacher"], ctx


def test_finetune_puts_a_token_head_on_and_learns_the_tags(teacher):
    art, ctx = teacher
    assert ctx.data.labels == TAGS
    model = load(art.path)
    assert model.config.architectures == ["BertForTokenClassification"] and model.config.num_labels == len(TAGS)
    assert art.metrics["metric"] == "entity_f1" and len(art.metrics["history"]) == TRAIN["epochs"]
    assert art.metrics["best_dev_score"] == max(h["dev_score"] for h in art.metrics["history"]) >= 0.95
    # the test split, scored from the saved folder: tags come back at each word's first piece
    test = evaluate(TorchRuntime(model).run, tokenizer_of(art.path), ctx.data.test, TAGS, ctx.max_length, 32)
    assert test["entity_f1"] >= 0.95 and set(test["per_class"]) == {"LOC", "PER"}


def test_taylor_and_head_mask_score_on_token_labels_and_rank_a_dead_head_lowest(tmp_path, teacher, conll):
    art, ctx = teacher
    model = load(art.path)
    d = head_size(model)
    with torch.no_grad():  # head 1 of layer 0 made useless: its queries, keys and values are zero
        for m in blocks(model)[0].qkv:
            m.weight[d:2 * d], m.bias[d:2 * d] = 0, 0
    cfg = recipe_for(tmp_path, art.path, conll, [{"name": "p", "type": "prune", "heads": 0.25, "importance": "taylor",
                                                  "batches": 2, "batch_size": 8}]).steps[0]
    batches = scoring_batches(tokenizer_of(art.path), cfg.importance, cfg.batches, cfg.batch_size, ctx)
    inputs, labels = batches[0]
    assert labels.shape == inputs["input_ids"].shape and (labels == IGNORE).any() and (labels != IGNORE).any()
    for name in ("taylor", "head-mask"):
        heads = IMPORTANCE[name](model, batches)[0][0]
        assert heads.argmin().item() == 1 and heads.min() < heads.max(), name


def test_pruned_tagger_reloads_in_a_fresh_process_by_its_manifest_route_with_identical_logits(tmp_path, teacher, conll,
                                                                                    monkeypatch):
    import compress.stages.prune as prune_stage

    art, ctx = teacher
    in_memory = {}
    real_save = prune_stage.save_checkpoint

    def keep_model(model, tokenizer, out):  # the pruned model as the stage holds it, before it is saved
        in_memory["model"] = model
        real_save(model, tokenizer, out)

    monkeypatch.setattr(prune_stage, "save_checkpoint", keep_model)
    steps = [{"name": "pruned", "type": "prune", "importance": "taylor", "heads": 0.25, "ffn": 0.5, "batches": 2,
              "batch_size": 8}]
    pruned = run_steps(tmp_path, art.path, conll, steps)[0]["pruned"]
    m = pruned.metrics
    assert sum(m["heads_per_layer"]) == 6 and m["intermediate_size"] == 32 and m["reload_max_abs_logit_diff"] < 1e-5
    inputs, first = encode_words(tokenizer_of(pruned.path), ctx.data.test[:6], ctx.max_length)
    ids = torch.from_numpy(inputs["input_ids"])
    with torch.no_grad():
        mine = in_memory["model"].eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    reloaded = fresh_process_logits(pruned.path, ids, pruned.load)  # the route its manifest names
    assert reloaded.shape == (*ids.shape, len(TAGS))  # a tag per token: the loader built the token head
    torch.testing.assert_close(reloaded, mine, atol=1e-6, rtol=0)
    assert dev_f1(pruned.path, ctx) > 0.5  # a quarter of the heads and half the FFN gone: still a tagger


def test_soft_kl_is_a_mean_over_real_tokens_and_padding_does_not_count():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    kl = SoftKL(LossConfig(temperature=2.0), {}, {})
    out = lambda x: SimpleNamespace(logits=x)  # noqa: E731
    per_token = (torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)
    expected = per_token[mask.bool()].mean() * 4  # 7 real tokens, each weighing the same; T^2 = 4
    assert kl(out(s), out(t), None, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    noisy = s.clone()
    noisy[1, 2:] = 100.0  # wild logits on padding
    assert kl(out(noisy), out(t), None, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    # a sequence head: torch's batchmean, as before
    s2, t2 = s[:, 0], t[:, 0]
    assert kl(out(s2), out(t2), None, mask).item() == pytest.approx(per_token[:, 0].mean().item() * 4, rel=1e-5)


def test_hard_ce_reads_labelled_first_pieces_only():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 3, requires_grad=True)
    labels = torch.tensor([[IGNORE, 2, IGNORE, 0], [IGNORE, 1, IGNORE, IGNORE]])
    ce = HardCE(LossConfig(), {}, {})
    out = SimpleNamespace(logits=s)
    expected = torch.nn.functional.cross_entropy(s[labels != IGNORE], labels[labels != IGNORE])
    assert ce(out, None, labels, None).item() == pytest.approx(expected.item(), rel=1e-6)
    none = ce(out, None, torch.full((2, 4), IGNORE), None)
    none.backward()  # an unlabelled batch: zero, and still a graph to step through
    assert none.item() == 0.0 and s.grad is not None and not s.grad.any()


def test_unlabeled_lines_become_untagged_word_examples(tmp_path, teacher):
    _, ctx = teacher
    text = tmp_path / "extra.txt"
    text.write_text("mary  visited\tparis\n\n   \nsmithson left\n")
    extra = read_unlabeled(text, ctx, "s")
    assert extra == [Example("mary visited paris", (IGNORE,) * 3, None, ("mary", "visited", "paris")),
                     Example("smithson left", (IGNORE,) * 2, None, ("smithson", "left"))]
    inputs, labels = encode_labeled(tokenizer_of(teacher[0].path), extra, 24)
    assert (labels == IGNORE).all() and labels.shape == inputs["input_ids"].shape


def test_distill_bert_students_per_token_parent_layer_drop_albertize_fresh(tmp_path, teacher, conll):
    art, ctx = teacher
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("anna smith went to london\nthe smithson said today\n")
    steps = [
        {"name": "self", "type": "distill", "unlabeled": str(unlabeled), "loss": {"hidden": 1.0}, "epochs": 1,
         "batch_size": 16, "learning_rate": 1e-4},
        {"name": "shallow", "type": "distill", "from": "source", "student": {"layer_drop": [1]},
         "loss": {"hidden": 1.0, "attention": 1.0}, **TRAIN},
        {"name": "albert", "type": "distill", "from": "source", "student": {"albertize": {"embedding_size": 16}},
         **TRAIN},
        # a random student and the soft loss alone: only the teacher's per-token distributions can teach it
        {"name": "fresh", "type": "distill", "from": "source", "student": {"fresh": {"num_hidden_layers": 1}},
         "loss": {"kl": 1.0, "ce": 0.0}, **TRAIN},
    ]
    arts, run_ctx = run_steps(tmp_path, art.path, conll, steps)
    teacher_f1 = art.metrics["best_dev_score"]
    for name, cls, layers, least in [("self", "BertForTokenClassification", 2, teacher_f1 - 0.05),
                                     ("shallow", "BertForTokenClassification", 1, 0.85),
                                     ("albert", "AlbertForTokenClassification", 2, 0.85),
                                     ("fresh", "BertForTokenClassification", 1, 0.9)]:
        m = arts[name].metrics
        model = load(arts[name].path)
        assert type(model).__name__ == cls and model.config.num_hidden_layers == layers, name
        assert m["metric"] == "entity_f1" and 0 <= m["dev_score_before"] <= 1 and "dev_accuracy_before" not in m
        assert m["best_dev_score"] >= least, (name, m["best_dev_score"])
        assert dev_f1(arts[name].path, run_ctx) == pytest.approx(m["best_dev_score"])
    assert arts["self"].metrics["unlabeled_examples"] == 2
    assert arts["self"].metrics["dev_score_before"] == pytest.approx(teacher_f1)  # the parent is the teacher
    assert arts["fresh"].metrics["dev_score_before"] < 0.3  # it learnt the tags from the teacher's soft labels
    assert arts["albert"].metrics["student_parameters"]["embeddings"] < arts["albert"].metrics["teacher_parameters"][
        "embeddings"]


def test_albert_tagger_with_a_sentencepiece_tokenizer_distills_to_fewer_layers(tmp_path, conll):
    source = save_encoder(tmp_path / "encoder", "albert", num_hidden_layers=4)
    tokenizer = tokenizer_of(source)
    assert tokenizer.tokenize("smithson") == ["▁smith", "son"]
    steps = [{"name": "teacher", "type": "finetune", **TRAIN},
             {"name": "shallow", "type": "distill", "student": {"layer_drop": [0, 2]}, **TRAIN}]
    arts, ctx = run_steps(tmp_path, source, conll, steps)
    teacher, shallow = load(arts["teacher"].path), load(arts["shallow"].path)
    assert type(teacher).__name__ == type(shallow).__name__ == "AlbertForTokenClassification"
    assert teacher.config.num_hidden_layers == 4 and shallow.config.num_hidden_layers == 2
    assert arts["teacher"].metrics["best_dev_score"] >= 0.9
    assert arts["shallow"].metrics["best_dev_score"] >= 0.85
    assert dev_f1(arts["shallow"].path, ctx) == pytest.approx(arts["shallow"].metrics["best_dev_score"])


def test_vocab_prune_keeps_word_alignment_and_covered_logits(tmp_path, teacher, conll):
    art, _ = teacher
    extra = tmp_path / "extra.txt"
    extra.write_text("smithson  jones\n")  # words, whose pieces (smith ##son) are kept too
    steps = [{"name": "small", "type": "vocab_prune", "extra_corpus": str(extra)}]
    arts, ctx = run_steps(tmp_path, art.path, conll, steps, limit_train=6)  # a small corpus leaves words out
    small = arts["small"]
    m = small.metrics
    assert m["vocab_size_after"] < m["vocab_size_before"] == len(WORDPIECE)
    assert {"##son", "jones"} <= set(tokenizer_of(small.path).get_vocab())
    assert m["parity_on_covered_dev"]["examples"] > 0 and m["parity_on_covered_dev"]["max_abs_logit_diff"] < 1e-4
    old_tok, new_tok = tokenizer_of(art.path), tokenizer_of(small.path)
    keep = [old_tok.convert_tokens_to_ids(t) for t in sorted(new_tok.get_vocab(), key=new_tok.get_vocab().get)]
    assert keep == sorted(keep)  # new ids keep the old order
    old_model, new_model = load(art.path), load(small.path)
    covered, split_words = 0, 0
    for e in ctx.data.test:
        (old_in, old_first), (new_in, new_first) = (encode_words(t, [e], ctx.max_length) for t in (old_tok, new_tok))
        # every word still starts exactly one piece, whatever its fate: the tagger reads each word once
        assert sorted(new_first[new_first >= 0].tolist()) == list(range(len(e.words)))
        if not set(old_in["input_ids"][0].tolist()) <= set(keep):
            continue
        covered += 1
        split_words += len(old_in["input_ids"][0]) - 2 > len(e.words)  # a word of two pieces ([CLS], [SEP] aside)
        np.testing.assert_array_equal(new_first, old_first)  # the same first pieces, at the same places
        assert [keep[i] for i in new_in["input_ids"][0]] == old_in["input_ids"][0].tolist()  # renumbered only
        with torch.no_grad():
            before, after = (model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
                             for model, enc in ((old_model, old_in), (new_model, new_in)))
        np.testing.assert_allclose(after, before, atol=1e-5)
        assert word_predictions(after, new_first, [e], 4) == word_predictions(before, old_first, [e], 4)
    assert 0 < covered < len(ctx.data.test) and split_words > 0


def test_vocab_prune_fill_by_drift_scores_a_tagger_at_the_word(tmp_path, teacher, conll):
    art, _ = teacher
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = run_steps(tmp_path / "a", art.path, conll, [{"name": "small", "type": "vocab_prune"}],
                      limit_train=6)[0]["small"].metrics
    steps = [{"name": "filled", "type": "vocab_prune", "fill_to": first["vocab_size_after"] + 3}]
    filled = run_steps(tmp_path / "b", art.path, conll, steps, limit_train=6)[0]["filled"].metrics
    assert filled["filled_by_drift"] == 3 and filled["vocab_size_after"] == first["vocab_size_after"] + 3
    assert not any(t.startswith("##") for t in filled["filled_first"])


def test_qat_tagger_exports_per_token_logits_that_agree_with_fake_quant(tmp_path, teacher, conll):
    art, ctx = teacher
    steps = [{"name": "qat", "type": "qat", "epochs": 1, "batch_size": 16, "learning_rate": 1e-4,
              "calibration_samples": 16, "parity": {"examples": 16}}]
    arts, run_ctx = run_steps(tmp_path, art.path, conll, steps)
    m = arts["qat"].metrics
    assert m["metric"] == "entity_f1" and m["best_dev_score"] >= 0.9 and m["fake_quantized_linears"] > 0
    assert m["parity_vs_fake_quant"]["prediction_agreement"] >= 0.98
    tokenizer = tokenizer_of(arts["qat"].path)
    real_tokens = int(encode_words(tokenizer, run_ctx.data.dev[:16], run_ctx.max_length)[0]["attention_mask"].sum())
    assert m["parity_vs_fake_quant"]["examples"] == real_tokens  # compared token by token
    onnx_run = OrtRuntime(arts["qat"].path / "model.onnx").run
    inputs, _ = encode_words(tokenizer, run_ctx.data.test[:5], run_ctx.max_length, pad_to_max=True)
    assert onnx_run(inputs).shape == (5, run_ctx.max_length, len(TAGS))  # a sequence length it was not exported at
    test = evaluate(onnx_run, tokenizer, run_ctx.data.test, TAGS, run_ctx.max_length, 32)
    assert test["entity_f1"] >= 0.9


def test_a_tagger_goes_through_the_search_and_its_chosen_sub_network_tags(tmp_path, teacher, conll):
    """The search's elastic training, cutting, export and INT8 judging on a token head: every candidate judged by
    entity F1 on dev, the chosen one a tagger of its shape."""
    art, ctx = teacher
    steps = [{"name": "s", "type": "search", "max_accuracy_drop": 100, "refine_epochs": 1, "sequence_length": 16,
              "space": {"layers": [1, 2], "heads": [0.5], "ffn": [0.5]},
              "distillation": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "loss": {"hidden": 1.0}},
              "quantization": {"parity": {"min_agreement": 0.0}}}]
    arts, run_ctx = run_steps(tmp_path, art.path, conll, steps)
    found = arts["s"].metrics["search"]
    assert found["metric"] == "entity_f1" and len(found["candidates"]) == 3  # two cut, the chosen one refined
    assert all(0 <= c["dev_score"] <= 1 and c["p50_ms"] > 0 for c in found["candidates"])
    chosen = next(c for c in found["candidates"] if c["status"] == "chosen")
    model = load(arts["s"].path)
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.num_hidden_layers == chosen["layers"] and model.config.intermediate_size == 32
