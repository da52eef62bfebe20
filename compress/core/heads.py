"""Attention heads of BERT and ALBERT: where their projections are, how they are cut, how the cut is recorded.

A cut is recorded as transformers 4 recorded it: `config.pruned_heads`, {layer: original indices of the removed
heads}. transformers 4.x re-applies that record in `from_config`/`from_pretrained`; transformers 5 removed head
pruning (its migration guide, PR #41417), builds every projection at full width and refuses such a checkpoint
("size mismatch"). So cutting and re-shaping are done here, the same way on both lines: `prune_heads` slices the
rows of Q/K/V and the columns of the attention output projection, as 4.x's did, and `shape_to_record` gives a
model built from a config the shapes its record says (on 4.x already done by transformers: then nothing to do).
Both lines' attention reshapes by head size, so a narrower projection runs; 4.x also reads each attention
module's `num_attention_heads`/`all_head_size`, which are kept right.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.core.errors import CompressError


@dataclass
class Attention:
    """One attention block's cuttable parts (ALBERT: a shared layer, one entry however often it is applied)."""

    index: int  # its key in config.pruned_heads
    layer: torch.nn.Module  # the whole transformer layer (its FFN is there too)
    module: torch.nn.Module  # holds num_attention_heads, attention_head_size, all_head_size
    qkv: tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]
    out: torch.nn.Linear

    @property
    def heads(self) -> int:
        return self.out.in_features // self.module.attention_head_size


def attentions(model: torch.nn.Module) -> list[Attention]:
    """Every attention block of a BERT or ALBERT model, keyed as config.pruned_heads keys them (an ALBERT layer
    by group * inner_group_num + its place in the group, as transformers 4 did)."""
    cfg = model.config
    if cfg.model_type == "bert":
        return [Attention(i, l, l.attention.self, (l.attention.self.query, l.attention.self.key,
                                                   l.attention.self.value), l.attention.output.dense)
                for i, l in enumerate(model.bert.encoder.layer)]
    if cfg.model_type == "albert":
        return [Attention(g * cfg.inner_group_num + i, l, l.attention, (l.attention.query, l.attention.key,
                                                                         l.attention.value), l.attention.dense)
                for g, group in enumerate(model.albert.encoder.albert_layer_groups)
                for i, l in enumerate(group.albert_layers)]
    raise CompressError(f"attention heads: model_type {cfg.model_type!r} is not supported (bert, albert)")


def pruned_heads(config) -> dict[int, list[int]]:
    """config.pruned_heads with int keys: transformers 5 keeps the record as the JSON wrote it (string keys)."""
    return {int(k): sorted(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items() if v}


def kept_heads(config, layer: int) -> list[int]:
    """Original indices of layer `layer`'s heads still present, in the order their rows are."""
    gone = set(pruned_heads(config).get(layer, []))
    return [h for h in range(config.num_attention_heads) if h not in gone]


def prune_heads(model: torch.nn.Module, heads: dict[int, list[int]]) -> None:
    """Remove `heads` ({layer: original head indices}) and add them to config.pruned_heads."""
    record = pruned_heads(model.config)
    for a in attentions(model):
        cut = set(heads.get(a.index, [])) - set(record.get(a.index, []))
        if cut:
            _keep(a, [p for p, h in enumerate(kept_heads(model.config, a.index)) if h not in cut])
            record[a.index] = sorted(set(record.get(a.index, [])) | cut)
    model.config.pruned_heads = record


def shape_to_record(model: torch.nn.Module) -> torch.nn.Module:
    """A model built at full width from a config that records pruned heads, cut to match it (weights are loaded
    after; a layer already cut, as transformers 4 does while building, is left alone)."""
    full = model.config.num_attention_heads
    for a in attentions(model):
        kept = kept_heads(model.config, a.index)
        if a.heads == full and len(kept) < full:
            _keep(a, kept)
        elif a.heads != len(kept):
            raise CompressError(f"attention layer {a.index} has {a.heads} heads, config.pruned_heads leaves "
                                f"{len(kept)} of {full}")
    return model


def _keep(a: Attention, positions: list[int]) -> None:
    """Keep the heads now at `positions`: their rows of Q/K/V (weight and bias) and columns of the output."""
    d = a.module.attention_head_size
    index = torch.tensor([p * d + j for p in positions for j in range(d)], device=a.out.weight.device)
    with torch.no_grad():
        for linear in a.qkv:
            linear.weight = torch.nn.Parameter(linear.weight.index_select(0, index).clone())
            linear.bias = torch.nn.Parameter(linear.bias.index_select(0, index).clone())
            linear.out_features = len(index)
        a.out.weight = torch.nn.Parameter(a.out.weight.index_select(1, index).clone())
        a.out.in_features = len(index)
    a.module.num_attention_heads = len(positions)
    a.module.all_head_size = len(index)


def renumber(config, keep: list[int]) -> None:
    """config.pruned_heads after keeping only encoder layers `keep` (old indices, in their new order)."""
    record = pruned_heads(config)
    config.pruned_heads = {new: record[old] for new, old in enumerate(keep) if old in record}
