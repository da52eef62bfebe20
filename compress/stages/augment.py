"""Teacher-labelled perturbed text for distillation: TinyBERT's data augmentation (Jiao et al. 2020), with the
teacher's own input embeddings as the thesaurus.

Why: a small student learns the teacher's function from the texts it is shown, and a small training set shows
few; repeating it for more epochs shows the same ones again. Swapping words for their nearest neighbours gives
texts near the data the teacher has never labelled, so each batch's soft targets carry new signal at the cost of
one teacher pass. Only one-piece words are swapped, for one-piece words: every word keeps its position and token
count, so token-classification examples stay aligned with their words. A perturbed batch is trained on the
soft losses only (its hard labels may no longer hold).
"""
from __future__ import annotations

import torch
from pydantic import Field

from compress.core.config import Strict


class AugmentConfig(Strict):
    share: float = Field(0.5, gt=0, le=1, description="Chance a training batch is replaced by a perturbed copy of "
                         "itself (the teacher labels it afresh; soft losses only).")
    words: float = Field(0.3, gt=0, le=1, description="Chance each one-piece word of a perturbed batch is swapped.")
    neighbours: int = Field(10, ge=1, le=100, description="A word is swapped for one of its this many nearest "
                            "one-piece words (cosine of the teacher's input embeddings).")


def word_pieces(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(is a whole alphabetic word, is a continuation piece) per token id, from a WordPiece or SentencePiece
    vocabulary: `##` marks WordPiece continuations, `▁` SentencePiece word starts."""
    size = len(tokenizer)
    word, continuation = torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)
    special, vocab = set(tokenizer.all_special_ids), tokenizer.get_vocab()
    sentencepiece = any(t.startswith("▁") for t in vocab)
    for token, i in vocab.items():
        if i >= size or i in special:
            continue
        if sentencepiece:
            word[i] = token.startswith("▁") and token[1:].isalpha()
            continuation[i] = not token.startswith("▁")
        else:
            continuation[i] = token.startswith("##")
            word[i] = token.isalpha()
    return word, continuation


def nearest(embeddings: torch.Tensor, words: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(V, k) token ids: each word's k nearest other words by cosine; rows of non-words hold their own id."""
    ids = words.nonzero().squeeze(1)
    unit = torch.nn.functional.normalize(embeddings[ids].float(), dim=1)
    table = torch.arange(len(words)).unsqueeze(1).repeat(1, k)
    for start in range(0, len(ids), chunk):
        sims = unit[start : start + chunk] @ unit.T
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2.0  # not itself
        table[ids[start : start + chunk]] = ids[sims.topk(k, dim=1).indices]
    return table


class WordSwap:
    """`maybe(inputs)`: a perturbed copy of a batch's inputs, or None (the batch is kept as it is)."""

    def __init__(self, cfg: AugmentConfig, tokenizer, teacher: torch.nn.Module, seed: int):
        self.cfg = cfg
        with torch.no_grad():
            embeddings = teacher.get_input_embeddings().weight.detach().cpu()
        self.word, self.continuation = word_pieces(tokenizer)
        self.table = nearest(embeddings[: len(self.word)], self.word, cfg.neighbours)
        self.generator = torch.Generator().manual_seed(seed)

    def maybe(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        if torch.rand((), generator=self.generator) >= self.cfg.share:
            return None
        ids = inputs["input_ids"].cpu()
        after = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)  # id 0 is never a continuation
        alone = self.word[ids] & ~self.continuation[after] & inputs["attention_mask"].cpu().bool()
        swap = alone & (torch.rand(ids.shape, generator=self.generator) < self.cfg.words)
        pick = torch.randint(self.cfg.neighbours, ids.shape, generator=self.generator)
        swapped = torch.where(swap, self.table[ids, pick], ids)
        return inputs | {"input_ids": swapped.to(inputs["input_ids"].device)}
