"""Elastic students: one distillation trains every sub-network a search judges (DynaBERT, Hou et al. 2020).

Why: distilling each candidate on its own costs 7-9 minutes on 2 cores, so a search could afford one or two.
Here the input is rewired once, each layer's heads and FFN neurons sorted by importance, so that every prefix of
them is a sub-network; a training step then distills a few sub-networks of the search's grid at once (the
largest, the smallest and random ones: the sandwich rule of BigNAS / Once-for-All), all from the same cached
teacher outputs. Afterwards any candidate is cut out with the prune stage's own operations (layers dropped,
heads pruned, FFN neurons pruned) and computes exactly what it computed inside the elastic model.

A sub-network runs inside the elastic model by slicing: the kept layers are swapped in, each attention module is
told its head count, and `torch.func.functional_call` feeds views of the leading rows/columns of the weights, so
a small sub-network costs a small forward and backward pass, and its gradients land in the shared weights.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from compress.core.errors import CompressError
from compress.core.heads import attentions, prune_heads
from compress.stages.augment import WordSwap
from compress.stages.distill import LOSSES, LossConfig, TeacherCache, default_layer_map, teach
from compress.stages.prune import Block, Scores, blocks, drop_layers, head_size, prune_ffn


@dataclass(frozen=True)
class Candidate:
    """A sub-network: `layers` of the input's encoder layers, the same share of heads and FFN neurons pruned in
    every layer (the least important ones: the input is rewired so that they come last)."""

    layers: int
    heads: float
    ffn: float

    @property
    def id(self) -> str:
        """A step-name-safe label: l3-h33-f50 keeps 3 layers, prunes 33% of the heads and 50% of the FFN."""
        return f"l{self.layers}-h{round(100 * self.heads)}-f{round(100 * self.ffn)}"

    def settings(self) -> dict[str, Any]:
        return {"id": self.id, "layers": self.layers, "heads": self.heads, "ffn": self.ffn}

    def kept_layers(self, depth: int) -> list[int]:
        """The input layers kept: those distillation's default layer map pairs the student's layers with."""
        return [t - 1 for t in default_layer_map(self.layers, depth).values()]

    def kept_heads(self, config) -> int:
        return max(1, config.num_attention_heads - round(config.num_attention_heads * self.heads))

    def kept_neurons(self, config) -> int:
        return max(1, round(config.intermediate_size * (1 - self.ffn)))

    def estimated_cost(self, config, objective: str, sequence_length: int) -> float:
        """Encoder MACs (latency) or encoder weights (size): how candidates are ordered before any is measured.
        An ALBERT's layers share weights, so its depth costs no size."""
        attention = self.kept_heads(config) * (config.hidden_size // config.num_attention_heads)
        weights = 4 * config.hidden_size * attention + 2 * config.hidden_size * self.kept_neurons(config)
        if objective == "size":
            return weights * (1 if config.model_type == "albert" else self.layers)
        return self.layers * (sequence_length * weights + 2 * sequence_length**2 * attention)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The module of each block that holds the head count its forward reshapes by (prune.blocks' order)."""
    return [a.module for a in attentions(model)]


def _permute_rows(linear: torch.nn.Linear, order: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[order].contiguous()
    linear.bias.data = linear.bias.data[order].contiguous()


def rewire(model: torch.nn.Module, scores: Scores) -> None:
    """Sort each block's heads and FFN neurons by importance, most important first; the function is unchanged
    (a permutation of the attention's and the FFN's hidden units)."""
    d = head_size(model)
    for block, (head_scores, neuron_scores) in zip(blocks(model), scores):
        heads = head_scores.argsort(descending=True)
        units = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        for linear in block.qkv:
            _permute_rows(linear, units)
        block.attn_out.weight.data = block.attn_out.weight.data[:, units].contiguous()
        neurons = neuron_scores.argsort(descending=True)
        _permute_rows(block.ffn_in, neurons)
        block.ffn_out.weight.data = block.ffn_out.weight.data[:, neurons].contiguous()


def _leading(block: Block, heads: int, neurons: int, d: int) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Views of the weights a block's sub-network reads: its first heads and neurons."""
    views: dict[torch.nn.Parameter, torch.Tensor] = {}
    for linear in block.qkv:
        views[linear.weight], views[linear.bias] = linear.weight[: heads * d], linear.bias[: heads * d]
    views[block.attn_out.weight] = block.attn_out.weight[:, : heads * d]
    views[block.ffn_in.weight], views[block.ffn_in.bias] = block.ffn_in.weight[:neurons], block.ffn_in.bias[:neurons]
    views[block.ffn_out.weight] = block.ffn_out.weight[:, :neurons]
    return views


@contextmanager
def shaped(model: torch.nn.Module, candidate: Candidate) -> Iterator[dict[str, torch.Tensor]]:
    """The model set to run as `candidate` while the context lasts; yields the parameter overrides (by name) that
    `functional_call` needs for it. The model is restored on exit."""
    config, d = model.config, head_size(model)
    depth, encoder = config.num_hidden_layers, model.base_model.encoder
    layers = encoder.layer if config.model_type == "bert" else None
    if layers is not None:
        encoder.layer = torch.nn.ModuleList([layers[i] for i in candidate.kept_layers(depth)])
    config.num_hidden_layers = candidate.layers  # ALBERT: its shared layer runs this many times
    heads, neurons = candidate.kept_heads(config), candidate.kept_neurons(config)
    attentions = attention_modules(model)
    saved = [(a.num_attention_heads, a.all_head_size) for a in attentions]
    names = {id(p): n for n, p in model.named_parameters()}
    overrides = {}
    for block, attention in zip(blocks(model), attentions):
        overrides |= {names[id(p)]: view for p, view in _leading(block, heads, neurons, d).items()}
        attention.num_attention_heads, attention.all_head_size = heads, heads * d
    try:
        yield overrides
    finally:
        for attention, (n, size) in zip(attentions, saved):
            attention.num_attention_heads, attention.all_head_size = n, size
        config.num_hidden_layers = depth
        if layers is not None:
            encoder.layer = layers


def forward_as(model: torch.nn.Module, candidate: Candidate, **inputs):
    """The model's outputs as `candidate` would give them, without copying a weight."""
    with shaped(model, candidate) as overrides:
        return torch.func.functional_call(model, overrides, args=(), kwargs=inputs)


def extract(model: torch.nn.Module, candidate: Candidate) -> torch.nn.Module:
    """`candidate` cut out of the (rewired) model as a stock transformers model: the prune stage's operations."""
    sub = copy.deepcopy(model)
    depth = sub.config.num_hidden_layers
    dropped = sorted(set(range(depth)) - set(candidate.kept_layers(depth)))
    if dropped:
        drop_layers(sub, dropped)
    total, heads = sub.config.num_attention_heads, candidate.kept_heads(sub.config)
    if heads < total:
        prune_heads(sub, {block.index: list(range(heads, total)) for block in blocks(sub)})
    width, neurons = sub.config.intermediate_size, candidate.kept_neurons(sub.config)
    if neurons < width:  # prune_ffn cuts the lowest-scored neurons: score them by position, the last lowest
        prune_ffn(sub, [torch.arange(width, 0, -1, dtype=torch.float) for _ in blocks(sub)], neurons)
    return sub.eval()


class ElasticLoss:
    """Distillation of several sub-networks per batch, with the signature compress.core.train expects.

    Each step distills the largest and the smallest candidate of the grid plus `sandwich` others drawn at random
    (seeded), and averages their losses. Every depth has its own layer map (student layer j <-> the teacher layer
    it was cut from), and the teacher's outputs for all its layers are cached once per text for all of them."""

    def __init__(self, cfg: LossConfig, teacher, grid: list[Candidate], order: list[float], sandwich: int,
                 cache: dict[bytes, dict[str, Any]] | None, seed: int, swap: WordSwap | None = None):
        if cfg.attention:
            raise CompressError("search: distillation.loss.attention is not supported by the elastic search (its "
                                "heads are reordered by importance); set attention: 0")
        if cfg.layer_map:
            raise CompressError("search: distillation.loss.layer_map is set per candidate depth by the search; "
                                "leave it unset")
        depth = teacher.config.num_hidden_layers
        ranked = [c for _, c in sorted(zip(order, grid), key=lambda pair: pair[0])]
        self.ends, self.others, self.sandwich = [ranked[-1], ranked[0]], ranked[1:-1], sandwich
        weights = {n: getattr(cfg, n) for n in LOSSES if getattr(cfg, n) > 0}
        if not weights:
            raise CompressError("search: distillation.loss: every weight is 0; set at least one of kl, ce, hidden")
        self.terms = {c.layers: [(w, LOSSES[n](cfg, default_layer_map(c.layers, depth), torch.nn.ModuleDict()))
                                 for n, w in weights.items()] for c in grid}
        self.flags = {"output_hidden_states": True} if cfg.hidden else {}
        every_layer = {j: j for j in range(1, depth + 1)}
        self.teacher = TeacherCache(teacher.eval().requires_grad_(False), self.flags, every_layer, cache)
        self.generator, self.swap = torch.Generator().manual_seed(seed), swap

    def sample(self) -> list[Candidate]:
        """The largest and the smallest candidate, then `sandwich` of the others (with replacement)."""
        picks = torch.randint(len(self.others), (self.sandwich,), generator=self.generator) if self.others else []
        return list(dict.fromkeys(self.ends + [self.others[i] for i in picks]))

    def __call__(self, model, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        inputs, labels, t = teach(self.teacher, self.swap, inputs, labels)
        mask = inputs["attention_mask"]
        losses = []
        for candidate in self.sample():
            s = forward_as(model, candidate, **inputs, **self.flags)
            losses.append(sum(w * term(s, t, labels, mask) for w, term in self.terms[candidate.layers]))
        return torch.stack(losses).mean()
