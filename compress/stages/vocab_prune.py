"""vocab_prune: keep only the vocabulary the task's text uses, and shrink the word embeddings with it.

Why kept texts tokenize exactly as before. BERT's WordPiece first pre-tokenizes (lower-casing, accent stripping,
splitting on spaces and punctuation), which never looks at the vocabulary; then it splits each word greedily,
always taking the longest prefix of the rest of the word that is in the vocabulary. Take a word whose pieces
p1..pn are all kept. At the position where pi starts, pi is still in the pruned vocabulary, and no longer
candidate can be in it, because the pruned vocabulary is a subset of the old one, where pi already was the longest.
So pi is taken again, and by induction the word splits into the same pieces; only the ids change. A word with a
dropped piece is split differently, or becomes [UNK] when no split exists: the stage counts both on dev and test.

New ids keep the old order (kept ids sorted), so [PAD] = 0 and the other special tokens keep their relative places.
Only WordPiece tokenizers are handled: SentencePiece (ALBERT's usual Unigram) is refused with a CompressError.

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
from compress.core.config import RecipeShapes
from compress.core.data import Example, is_tagged
from compress.core.errors import CompressError, StageFailed
from compress.core.evaluate import predict_logits
from compress.core.models import load_classifier, load_tokenizer, save_checkpoint
from compress.core.parity import ParityChecked, logit_agreement
from compress.core.stage import Context, StageResult, register
from runtimes.torch_runtime import TorchRuntime

SPECIAL_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


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

    def check_shapes(self, shapes: RecipeShapes) -> None:
        if self.max_positions is None:
            return
        for field, length in shapes.positions.items():
            if length > self.max_positions:
                raise ValueError(f"max_positions {self.max_positions} is shorter than {field} {length}")


Text = str | list[str]  # what the tokenizer reads of an example: a text, or (token classification) its words


def texts_of(examples: list[Example]) -> list[Text]:
    """Texts and text pairs, or the word lists of token examples (the model reads those word-split)."""
    if is_tagged(examples):
        return [list(e.words) for e in examples]
    return [e.text for e in examples] + [e.text_pair for e in examples if e.text_pair is not None]


def corpus_lines(path: Path, tagged: bool) -> list[Text]:
    """An extra corpus file's non-blank lines; for a token task each line's whitespace-separated words, so they
    are tokenized as the task's words are."""
    lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    return [t.split() for t in lines] if tagged else lines


def tokenize(tokenizer, texts: list[Text], **kwargs):
    """The tokenizer over `texts` as the model reads them: word lists word-split, so word_ids() index the words."""
    return tokenizer(texts, is_split_into_words=bool(texts) and isinstance(texts[0], list), **kwargs)


def check_wordpiece(tokenizer, folder: Path) -> None:
    model_type = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"] if tokenizer.is_fast else None
    if model_type != "WordPiece":
        raise CompressError(f"{folder}: vocab_prune handles WordPiece tokenizers (BERT vocab.txt); this one is "
                            f"{model_type or type(tokenizer).__name__} (SentencePiece/Unigram is not supported)")


def kept_ids(tokenizer, config, texts: list[Text], min_count: int, keep_characters: bool) -> list[int]:
    """Ids the corpus uses at least `min_count` times, plus every special or added token (and, with
    `keep_characters`, the single-character pieces of the corpus's characters), sorted."""
    counts = Counter(i for ids in tokenize(tokenizer, texts, add_special_tokens=False)["input_ids"] for i in ids)
    always = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    always |= {getattr(config, f) for f in SPECIAL_ID_FIELDS if getattr(config, f, None) is not None}
    if keep_characters:
        always |= character_ids(tokenizer, texts)
    return sorted({i for i, c in counts.items() if c >= min_count} | always)


def character_ids(tokenizer, texts: list[Text]) -> set[int]:
    """Ids of `c` and `##c` for every character of the corpus's words, as the tokenizer normalizes and splits them
    (a word list's characters are those of its words: joining them with spaces adds none)."""
    backend = tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str if backend.normalizer else str
    chars = {c for t in texts for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalize(
        " ".join(t) if isinstance(t, list) else t)) for c in word}
    vocab, prefix = tokenizer.get_vocab(), backend.model.continuing_subword_prefix
    return {vocab[piece] for c in chars for piece in (c, prefix + c) if piece in vocab}


def fill_by_drift(model, tokenizer, keep: list[int], size: int, batch_size: int = 256) -> list[int]:
    """The dropped whole-word tokens to add back, best first, so that `keep` grows to `size`.

    Why: test text brings words the training corpus never used. Such a word is split into kept pieces, and for most
    words the model reads the pieces much as it read the word; for some (often the opinion-bearing ones: "lauded",
    "defective") it does not. Each candidate is scored by how far the model's output for the word alone moves when
    it is split (L1 between log-probabilities; logits for a single-output head; a tagger's at the word's first
    piece, where its tag is read), and the largest movers come back.
    It is task-aware, needs no extra text, and costs two forward passes over a few-token input per candidate.
    Candidates are tokens the tokenizer produces for their own string: no `##` pieces, no [unusedN]."""
    import tempfile

    import torch

    kept = set(keep)
    token_of = {i: t for t, i in tokenizer.get_vocab().items()}
    dropped = [i for i in sorted(token_of) if i not in kept]
    words = [token_of[i] for i in dropped]
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
    """Same class and settings over the kept tokens: vocab.txt in the new id order, the added-token table
    renumbered, then the fast tokenizer rebuilt from these slow files; saved fast (tokenizer.json) and slow."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    token_of = {i: t for t, i in tokenizer.get_vocab().items()}
    (folder / "vocab.txt").write_text("".join(token_of[i] + "\n" for i in keep), encoding="utf-8")
    (folder / "tokenizer.json").unlink()
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    new_id = {old: new for new, old in enumerate(keep)}
    config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in config.get("added_tokens_decoder", {}).items()}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    pruned = AutoTokenizer.from_pretrained(folder, use_fast=True)  # converts the slow files into a fast tokenizer
    pruned.save_pretrained(folder)
    return pruned


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


def fully_covered(tokenizer, examples: list[Example], keep: set[int]) -> list[Example]:
    """The examples whose every token id (text and pair together, or the words word-split) is kept."""
    if is_tagged(examples):
        ids = tokenize(tokenizer, texts_of(examples))["input_ids"]
    else:
        ids = [tokenizer(e.text, e.text_pair)["input_ids"] for e in examples]
    return [e for e, row in zip(examples, ids) if all(i in keep for i in row)]


@register(VocabPruneConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint")
def vocab_prune(cfg: VocabPruneConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    tokenizer = load_tokenizer(parent.path)
    check_wordpiece(tokenizer, parent.path)
    model = load_classifier(parent.path, allow_pickle=ctx.allow_pickle, task=ctx.task).eval()
    corpus = texts_of(ctx.data.train)
    if cfg.extra_corpus:
        corpus += corpus_lines(Path(cfg.extra_corpus), is_tagged(ctx.data.train))
    keep = kept_ids(tokenizer, model.config, corpus, cfg.min_count, cfg.keep_characters)
    vocab_before = model.get_input_embeddings().weight.shape[0]
    if cfg.fill_to is not None and cfg.fill_to > vocab_before:
        raise CompressError(f"{cfg.name}: fill_to {cfg.fill_to} is more than the {vocab_before} tokens the model has")
    filled = fill_by_drift(model, tokenizer, keep, cfg.fill_to) if cfg.fill_to else []
    keep = sorted(keep + filled)
    kept = set(keep)
    max_length = ctx.max_length
    check = fully_covered(tokenizer, ctx.data.dev, kept)[: cfg.parity.examples]
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
    cover = {s: coverage(tokenizer, pruned_tok, kept, texts_of(ctx.data.split(s))) for s in ("dev", "test")}
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
