"""vocab_prune: keep only the vocabulary the task's text uses, and shrink the word embeddings with it.

Why kept texts tokenize exactly as before. BERT's WordPiece first pre-tokenizes (lower-casing, accent stripping,
splitting on spaces and punctuation), which never looks at the vocabulary; then it splits each word greedily,
always taking the longest prefix of the rest of the word that is in the vocabulary. Take a word whose pieces
p1..pn are all kept. At the position where pi starts, pi is still in the pruned vocabulary, and no longer
candidate can be in it, because the pruned vocabulary is a subset of the old one, where pi already was the longest.
So pi is taken again, and by induction the word splits into the same pieces; only the ids change. A word with a
dropped piece is split differently, or becomes [UNK] when no split exists: the stage counts both on dev and test.

The same holds for SentencePiece's models, as the fast tokenizer (tokenizer.json) runs them. Unigram picks, among
all splits of a word into vocabulary pieces, the one whose pieces' scores sum highest: the pruned vocabulary offers
a subset of the old splits, still including the old best one when its pieces are kept, so that one still wins. One
catch: a character no piece covers gets the unknown score, set 10 below the lowest piece score, so the lowest-scored
piece is always kept and that score does not move. BPE splits a word into characters and applies its merges in rank
order; a kept token keeps every merge that makes it (and, recursively, their parts), and the merges of a kept word
are then the lowest-ranked among the pruned merges exactly where they were among all, so they apply in the same
order. Kept merges keep their ranks.

New ids keep the old order (kept ids sorted), so [PAD] = 0 and the other special tokens keep their relative places.
The tokenizer.json is rewritten (model vocabulary, BPE merges, added tokens, the post-processor's and padding's
ids); a WordPiece tokenizer also gets its slow vocab.txt, a SentencePiece one loses its slow spiece.model (which
would no longer match). Fast WordPiece, Unigram and BPE tokenizers are handled; anything else (a slow-only
tokenizer, WordLevel) is refused at validation (the recipe follows the tokenizer kind from the source's folder).

Token classification reads its examples word-split (is_split_into_words), and each word is pre-tokenized and split
on its own, so the argument holds word by word: a word whose pieces are all kept keeps its pieces, and with them
the position of its first piece, where its tag is trained and read. Corpus, coverage and the check below therefore
tokenize a token example's words, never their joined text, and the check also compares which word each piece
belongs to.

`min_count` > 1 drops rare pieces too. `keep_characters` then keeps every single-character piece (`c` and `##c`)
for the characters the corpus contains, so a word whose longer pieces were dropped still splits into pieces
instead of becoming [UNK]; the argument above holds for any subset, so kept texts are unaffected.
`max_positions` trims the position-embedding table to the longest sequence the recipe will ever feed.
`fill_to` spends a size budget beyond the corpus on the dropped words the model would miss most (fill_by_drift);
they are a superset again, so kept texts are still unaffected.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from compress.core.artifact import Artifact
from compress.core.config import Architecture, RecipeShapes
from compress.core.errors import CompressError, StageFailed
from compress.core.evaluate import predict_logits
from compress.core.models import kind_of, load_classifier, load_tokenizer, save_checkpoint
from compress.core.parity import ParityChecked, logit_agreement
from compress.core.section import Measured, Metrics, Ran, Section
from compress.core.stage import Context, StageResult, register
from compress.core.task import Example, Task, Text
from runtimes.torch_runtime import TorchRuntime

SPECIAL_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
PRUNABLE = ("WordPiece", "Unigram", "BPE")  # fast tokenizer models whose vocabulary this stage can cut


class VocabPruneConfig(ParityChecked):
    """`parity`: fully covered dev texts must give the same logits through the pruned tokenizer and embeddings."""

    PARITY_DEFAULTS = {"max_logit_diff": 1e-4}
    type: Literal["vocab_prune"] = "vocab_prune"
    extra_corpus: str | None = Field(None, description="UTF-8 text file, one text per line, whose tokens are kept too.")
    min_count: int = Field(1, ge=1, description="Keep a token only if the corpus uses it at least this often.")
    keep_characters: bool = Field(True, description="Also keep the single-character pieces (c, ##c) of every "
                                  "character in the corpus, so rare words split into pieces instead of [UNK].")
    max_positions: int | None = Field(None, ge=8, description="Trim the position embeddings to this many positions; "
                                      "must cover data.max_length, benchmark.sequence_lengths and the report's "
                                      "MACs figure at sequence 128. Unset: keep all.")
    fill_to: int | None = Field(None, ge=1, description="Grow the vocabulary to this many tokens with the dropped "
                                "whole words whose splitting moves the model's prediction most (fill_by_drift). "
                                "Unset: the corpus's tokens only.")

    @field_validator("extra_corpus")
    @classmethod
    def _corpus_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"extra corpus file not found: {v!r}")
        return v

    def check_architecture(self, given: Architecture) -> None:
        if given.tokenizer is not None and given.tokenizer not in PRUNABLE:
            raise ValueError(unsupported(given.tokenizer))

    def check_shapes(self, shapes: RecipeShapes) -> None:
        if self.max_positions is None:
            return
        for field, length in shapes.positions.items():
            if length > self.max_positions:
                raise ValueError(f"max_positions {self.max_positions} is shorter than {field} {length}")


UNTRUNCATED = 2**31 - 1  # a max_length no text reaches: coverage reads every token


def corpus_lines(path: Path, task: Task) -> list[Text]:
    """An extra corpus file's non-blank lines, read as the task reads unlabeled text (a token task: each line's
    whitespace-separated words), so they are tokenized as the task's own texts are."""
    lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    return task.texts([task.unlabeled(t) for t in lines])


def tokenize(tokenizer, texts: list[Text], **kwargs):
    """The tokenizer over `texts` as the model reads them: word lists word-split, so word_ids() index the words."""
    return tokenizer(texts, is_split_into_words=bool(texts) and isinstance(texts[0], list), **kwargs)


def unsupported(kind: str) -> str:
    slow = " (save the model's fast tokenizer, tokenizer.json, beside it)" if kind.startswith("slow") else ""
    return (f"vocab_prune cuts fast WordPiece (BERT), Unigram and BPE (SentencePiece) tokenizers; the input's is "
            f"{kind}{slow}")


def check_tokenizer_kind(tokenizer, folder: Path) -> None:
    if kind_of(tokenizer) not in PRUNABLE:
        raise CompressError(f"{folder}: {unsupported(kind_of(tokenizer))}")


def model_json(tokenizer) -> dict:
    """The fast tokenizer's model section of its tokenizer.json: type, vocabulary, and BPE's merges."""
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]


def kept_ids(tokenizer, config, texts: list[Text], min_count: int, keep_characters: bool) -> list[int]:
    """Ids the corpus uses at least `min_count` times, plus every special or added token (and, with
    `keep_characters`, the single-character pieces of the corpus's characters), completed for the model."""
    counts = Counter(i for ids in tokenize(tokenizer, texts, add_special_tokens=False)["input_ids"] for i in ids)
    always = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    always |= {getattr(config, f) for f in SPECIAL_ID_FIELDS if getattr(config, f, None) is not None}
    if keep_characters:
        always |= character_ids(tokenizer, texts)
    return complete(tokenizer, {i for i, c in counts.items() if c >= min_count} | always)


def complete(tokenizer, ids: set[int]) -> list[int]:
    """`ids`, sorted, plus what the model needs to split kept text as before (see the module's docstring): a BPE
    token's merge parts, recursively; a Unigram's lowest-scored piece."""
    model, vocab = model_json(tokenizer), tokenizer.get_vocab()
    if model["type"] == "Unigram":
        ids = ids | {min(range(len(model["vocab"])), key=lambda i: model["vocab"][i][1])}
    elif model["type"] == "BPE":
        made_by: dict[str, list[tuple[str, str]]] = {}
        for a, b in map(merge_pair, model["merges"]):
            made_by.setdefault(merged(a, b, model), []).append((a, b))
        token_of = {i: t for t, i in vocab.items()}
        todo, ids = [token_of[i] for i in ids], set(ids)
        while todo:
            for part in (p for pair in made_by.get(todo.pop(), []) for p in pair):
                if vocab[part] not in ids:
                    ids.add(vocab[part])
                    todo.append(part)
    return sorted(ids)


def merge_pair(merge: str | list[str]) -> tuple[str, str]:
    """A BPE merge as tokenizer.json writes it: "a b" (older files) or ["a", "b"]."""
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a, b


def merged(a: str, b: str, model: dict) -> str:
    """The token a BPE merge makes: b loses its continuing-subword prefix, as the tokenizers library does."""
    prefix = model.get("continuing_subword_prefix") or ""
    return a + b[len(prefix):]


def character_ids(tokenizer, texts: list[Text]) -> set[int]:
    """Ids of `c` (and `##c`, where the model has such a prefix) for every character of the corpus's words, as the
    tokenizer normalizes and splits them (a word list's characters are those of its words: joining them with
    spaces adds none; a SentencePiece word's include its ▁)."""
    backend = tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str if backend.normalizer else str
    split = backend.pre_tokenizer.pre_tokenize_str if backend.pre_tokenizer else lambda t: [(t, None)]
    chars = {c for t in texts for word, _ in split(normalize(" ".join(t) if isinstance(t, list) else t))
             for c in word}
    vocab, prefix = tokenizer.get_vocab(), model_json(tokenizer).get("continuing_subword_prefix") or ""
    return {vocab[piece] for c in chars for piece in {c, prefix + c} if piece in vocab}


def fill_by_drift(model, tokenizer, keep: list[int], size: int, batch_size: int = 256) -> list[int]:
    """The dropped whole-word tokens to add back, best first, so that `keep` grows to `size`.

    Why: test text brings words the training corpus never used. Such a word is split into kept pieces, and for most
    words the model reads the pieces much as it read the word; for some (often the opinion-bearing ones: "lauded",
    "defective") it does not. Each candidate is scored by how far the model's output for the word alone moves when
    it is split (L1 between log-probabilities; logits for a single-output head; a tagger's at the word's first
    piece, where its tag is read), and the largest movers come back.
    It is task-aware, needs no extra text, and costs two forward passes over a few-token input per candidate.
    Candidates are tokens the tokenizer produces for their own string: no `##` pieces, no [unusedN]. The caller
    completes the result (`complete`), so a BPE word brings back the merges that make it."""
    import tempfile

    import torch

    kept = set(keep)
    token_of = {i: t for t, i in tokenizer.get_vocab().items()}
    dropped = [i for i in sorted(token_of) if i not in kept]
    words = [tokenizer.convert_tokens_to_string([token_of[i]]) for i in dropped]  # ▁word -> word
    alone = tokenizer(words, add_special_tokens=False)["input_ids"]
    candidates = [(i, w) for i, w, ids in zip(dropped, words, alone) if ids == [i]]
    wanted = size - len(keep)
    if wanted <= 0 or not candidates:
        return []
    old_id = torch.tensor(keep)
    single = model.config.num_labels == 1
    scores = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        pruned = write_pruned_tokenizer(tokenizer, keep, Path(tmp))
        for start in range(0, len(candidates), batch_size):
            batch = [w for _, w in candidates[start : start + batch_size]]
            split = pruned(batch, padding=True, return_tensors="pt")
            split["input_ids"] = old_id[split["input_ids"]]  # the same model reads both: map pieces to old ids
            out = [word_output(model, enc) for enc in (tokenizer(batch, padding=True, return_tensors="pt"), split)]
            out = out if single else [o.log_softmax(-1) for o in out]
            scores.append((out[0] - out[1]).abs().sum(-1))
    order = torch.cat(scores).argsort(descending=True)[:wanted]
    return [candidates[j][0] for j in order.tolist()]


def word_output(model, enc):
    """The model's logits for a batch of one-word inputs, one row a word: a sequence head's, or a token head's at
    the word's first piece (whole and split inputs differ in length, but that position means the same in both)."""
    import torch

    logits = model(**enc).logits
    if logits.dim() == 2:
        return logits
    first = torch.tensor([enc.word_ids(i).index(0) for i in range(len(logits))])
    return logits[torch.arange(len(logits)), first]


def trim_positions(model, positions: int, folder: Path) -> None:
    """Keep the first `positions` rows of the absolute position embeddings and set max_position_embeddings, so
    stock transformers builds the same shapes when it loads the checkpoint."""
    import torch

    embeddings = model.base_model.embeddings
    table = embeddings.position_embeddings
    kind = getattr(model.config, "position_embedding_type", "absolute")
    if kind != "absolute" or positions > table.num_embeddings:
        raise CompressError(f"{folder}: max_positions {positions} needs absolute position embeddings with at least "
                            f"that many rows; this model has {kind!r} with {table.num_embeddings}")
    trimmed = torch.nn.Embedding(positions, table.embedding_dim)
    with torch.no_grad():
        trimmed.weight.copy_(table.weight[:positions])
    embeddings.position_embeddings = trimmed
    for name in ("position_ids", "token_type_ids"):  # buffers sized by the old maximum
        if hasattr(embeddings, name):
            setattr(embeddings, name, getattr(embeddings, name)[:, :positions])
    model.config.max_position_embeddings = positions


def prune_embeddings(model, keep: list[int]) -> None:
    """Move the kept rows to the front in order, then let transformers truncate: `resize_token_embeddings` also
    shrinks an untied LM head, the output bias, re-ties tied weights and sets config.vocab_size."""
    import torch

    old_size = model.get_input_embeddings().weight.shape[0]
    order = torch.tensor(keep + sorted(set(range(old_size)) - set(keep)))
    with torch.no_grad():
        inputs = model.get_input_embeddings()
        inputs.weight.copy_(inputs.weight[order])
        head = model.get_output_embeddings()
        if head is not None:
            if head.weight is not inputs.weight:
                head.weight.copy_(head.weight[order])
            if getattr(head, "bias", None) is not None:
                head.bias.copy_(head.bias[order])
    model.resize_token_embeddings(len(keep), mean_resizing=False)
    new_id = {old: new for new, old in enumerate(keep)}
    for f in SPECIAL_ID_FIELDS:
        if getattr(model.config, f, None) is not None:
            setattr(model.config, f, new_id[getattr(model.config, f)])


def write_pruned_tokenizer(tokenizer, keep: list[int], folder: Path):
    """Same class and settings over the kept tokens, ids renumbered in the old order: tokenizer.json rewritten
    (pruned_model, and every id it holds elsewhere), tokenizer_config.json's added-token table renumbered; WordPiece
    also gets vocab.txt (its slow tokenizer, which loads alike), SentencePiece loses its slow model file."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    new_id = {old: new for new, old in enumerate(keep)}
    full = json.loads(tokenizer.backend_tokenizer.to_str())
    full["model"] = pruned_model(full["model"], keep)
    for token in full.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]
    renumber(full.get("post_processor"), new_id)
    if full.get("padding"):
        full["padding"]["pad_id"] = new_id[full["padding"]["pad_id"]]
    (folder / "tokenizer.json").write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    for slow in set(getattr(tokenizer, "vocab_files_names", {}).values()) - {"tokenizer.json"}:
        (folder / slow).unlink(missing_ok=True)
    if full["model"]["type"] == "WordPiece":
        token_of = {i: t for t, i in full["model"]["vocab"].items()}
        (folder / "vocab.txt").write_text("".join(token_of[i] + "\n" for i in range(len(token_of))), encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in config.get("added_tokens_decoder", {}).items()}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    pruned = AutoTokenizer.from_pretrained(folder)
    pruned.save_pretrained(folder)
    return pruned


def pruned_model(model: dict, keep: list[int]) -> dict:
    """The model section over the kept ids (those of tokens added outside the model's vocabulary come last, and
    stay outside it): Unigram's scored piece list and unk_id, or WordPiece's and BPE's token -> id map, and the BPE
    merges whose parts and result are all kept, in their old order."""
    if model["type"] == "Unigram":
        pieces = [model["vocab"][i] for i in keep if i < len(model["vocab"])]
        unk = model.get("unk_id")
        return model | {"vocab": pieces, "unk_id": None if unk is None else keep.index(unk)}
    token_of = {i: t for t, i in model["vocab"].items()}
    vocab = {token_of[i]: new for new, i in enumerate(keep) if i in token_of}
    if model["type"] == "BPE":
        fits = lambda a, b: {a, b, merged(a, b, model)} <= vocab.keys()  # noqa: E731
        return model | {"vocab": vocab, "merges": [m for m in model["merges"] if fits(*merge_pair(m))]}
    return model | {"vocab": vocab}


def renumber(node, new_id: dict[int, int]) -> None:
    """The post-processor's special-token ids, in place: TemplateProcessing's `ids` lists, BERT/RoBERTa
    processing's [token, id] `cls` and `sep`, and those of a Sequence's members."""
    if isinstance(node, list):
        for item in node:
            renumber(item, new_id)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "ids":
                node[key] = [new_id[i] for i in value]
            elif key in ("cls", "sep") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                node[key] = [value[0], new_id[value[1]]]
            else:
                renumber(value, new_id)


def coverage(old_tok, new_tok, keep: set[int], texts: list[Text]) -> dict:
    """Token occurrences the pruned vocabulary no longer has, and what became of the words that held them.

    Words are the pre-tokenizer's words (a token example's own words), the same for both tokenizers, so they line
    up by index."""
    old, new = (tokenize(tok, texts, add_special_tokens=False) for tok in (old_tok, new_tok))
    n = {"token_occurrences": 0, "uncovered_occurrences": 0, "tokens_after": 0, "texts_fully_covered": 0,
         "words_affected": 0, "words_now_unk": 0, "words_now_split_differently": 0}
    for b in range(len(texts)):
        before, after = _words(old.word_ids(b), old["input_ids"][b]), _words(new.word_ids(b), new["input_ids"][b])
        missing = [w for w, ids in before.items() if any(i not in keep for i in ids)]
        n["token_occurrences"] += len(old["input_ids"][b])
        n["tokens_after"] += len(new["input_ids"][b])
        n["uncovered_occurrences"] += sum(i not in keep for i in old["input_ids"][b])
        n["texts_fully_covered"] += not missing
        n["words_affected"] += len(missing)
        n["words_now_unk"] += sum(after.get(w) == [new_tok.unk_token_id] for w in missing)
    n["words_now_split_differently"] = n["words_affected"] - n["words_now_unk"]
    n["uncovered_share"] = round(n["uncovered_occurrences"] / max(n["token_occurrences"], 1), 5)
    n["texts_fully_covered_share"] = round(n["texts_fully_covered"] / max(len(texts), 1), 5)
    return n


def _words(word_ids: list[int | None], ids: list[int]) -> dict[int, list[int]]:
    words: dict[int, list[int]] = {}
    for w, i in zip(word_ids, ids):
        words.setdefault(w, []).append(i)
    return words


def check_same_pieces(old_tok, new_tok, keep: list[int], texts: list[Text], step: str) -> None:
    """The docstring's argument, checked on the corpus: every fully kept text gets the same pieces, renumbered,
    each in the same word (a tagger's labels sit on word boundaries)."""
    new_id = np.full(len(old_tok), -1)
    new_id[keep] = np.arange(len(keep))
    old, new = tokenize(old_tok, texts), tokenize(new_tok, texts)
    for b, (text, o, n) in enumerate(zip(texts, old["input_ids"], new["input_ids"])):
        if (new_id[o] >= 0).all() and (new_id[o].tolist() != n or old.word_ids(b) != new.word_ids(b)):
            raise StageFailed(f"{step}: the pruned tokenizer splits {str(text)[:80]!r} differently from the "
                              "original")


def fully_covered(tokenizer, task: Task, examples: list[Example], keep: set[int]) -> list[Example]:
    """The examples whose every token id, as the task encodes them untruncated, is kept."""
    ids = [task.encode(tokenizer, [e], UNTRUNCATED)["input_ids"][0] for e in examples]
    return [e for e, row in zip(examples, ids) if all(int(i) in keep for i in row)]


class Coverage(Metrics):
    uncovered_share: float  # of the split's token occurrences, those the pruned vocabulary no longer holds whole
    words_now_split_differently: int
    words_now_unk: int


class VocabMetrics(Metrics):
    """What the report reads of a vocabulary pruning: the shrink, and what dev and test text it no longer covers."""

    vocab_size_before: int | None = None  # None: a manifest from before the figures were kept
    vocab_size_after: int | None = None
    vocab_pruned_share: float | None = None
    filled_by_drift: int = 0
    coverage: dict[str, Coverage] | None = None


def vocab_section(steps: list[Ran], measured: Measured) -> list[Section]:
    """Each vocabulary-pruned model: how far the vocabulary shrank, and how much dev/test text it no longer covers
    whole (those words now split into kept pieces or, without a piece to fall back on, become [UNK])."""
    lines = []
    for step in steps:
        m = step.metrics
        if m.coverage is None:
            continue
        filled = f"; {m.filled_by_drift:,} added back by fill_to" if m.filled_by_drift else ""
        cover = "; ".join(f"{split} {100 * c.uncovered_share:.2f}% ({c.words_now_split_differently:,} words split "
                          f"into kept pieces, {c.words_now_unk:,} now [UNK])" for split, c in m.coverage.items())
        lines.append(f"{step.name} (of {step.parent}): vocabulary {m.vocab_size_before:,} -> {m.vocab_size_after:,} "
                     f"tokens ({100 * m.vocab_pruned_share:.1f}% pruned{filled}); token occurrences no longer "
                     f"covered: {cover}")
    return [Section(title="Vocabulary pruning", lines=lines)] if lines else []


@register(VocabPruneConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint", metrics=VocabMetrics,
          section=vocab_section)
def vocab_prune(cfg: VocabPruneConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    tokenizer = load_tokenizer(parent.path)
    check_tokenizer_kind(tokenizer, parent.path)
    model = load_classifier(parent.path, allow_pickle=ctx.allow_pickle, task=ctx.task).eval()
    corpus = ctx.task.texts(ctx.data.train)
    if cfg.extra_corpus:
        corpus += corpus_lines(Path(cfg.extra_corpus), ctx.task)
    keep = kept_ids(tokenizer, model.config, corpus, cfg.min_count, cfg.keep_characters)
    vocab_before = model.get_input_embeddings().weight.shape[0]
    if cfg.fill_to is not None and cfg.fill_to > vocab_before:
        raise CompressError(f"{cfg.name}: fill_to {cfg.fill_to} is more than the {vocab_before} tokens the model has")
    filled = fill_by_drift(model, tokenizer, keep, cfg.fill_to) if cfg.fill_to else []
    keep = complete(tokenizer, set(keep + filled))
    kept = set(keep)
    max_length = ctx.max_length
    check = fully_covered(tokenizer, ctx.task, ctx.data.dev, kept)[: cfg.parity.examples]
    before = predict_logits(TorchRuntime(model).run, tokenizer, check, max_length, 32, "before") if check else None

    pruned_tok = write_pruned_tokenizer(tokenizer, keep, out)
    check_same_pieces(tokenizer, pruned_tok, keep, corpus, cfg.name)
    prune_embeddings(model, keep)
    positions_before = model.config.max_position_embeddings
    if cfg.max_positions is not None:
        trim_positions(model, cfg.max_positions, parent.path)
    after = predict_logits(TorchRuntime(model).run, pruned_tok, check, max_length, 32, "after") if check else None
    parity = logit_agreement(before, after) if check else {"examples": 0}  # no dev text is fully covered
    if check:
        cfg.parity.enforce(parity, cfg.name, "pruned vs original model on fully covered dev texts")
    save_checkpoint(model, pruned_tok, out)
    cover = {s: coverage(tokenizer, pruned_tok, kept, ctx.task.texts(ctx.data.split(s))) for s in ("dev", "test")}
    ctx.log.info("%s: vocabulary %d -> %d (%.1f%% kept, %d filled by drift); uncovered token occurrences: "
                 "dev %.2f%%, test %.2f%%",
                 cfg.name, vocab_before, len(keep), 100 * len(keep) / vocab_before, len(filled),
                 100 * cover["dev"]["uncovered_share"], 100 * cover["test"]["uncovered_share"])
    return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {
        "vocab_size_before": vocab_before, "vocab_size_after": len(keep),
        "vocab_pruned_share": round(1 - len(keep) / vocab_before, 4), "min_count": cfg.min_count,
        "keep_characters": cfg.keep_characters, "max_positions_before": positions_before,
        "max_positions_after": model.config.max_position_embeddings,
        "corpus_texts": len(corpus), "coverage": cover, "filled_by_drift": len(filled),
        "filled_first": tokenizer.convert_ids_to_tokens(filled[:20]),
        "parity_on_covered_dev": parity,
    })
