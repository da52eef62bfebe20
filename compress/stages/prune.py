"""prune: structured pruning of BERT / ALBERT encoders into a smaller plain Hugging Face checkpoint.

Three granularities: attention heads (per-layer counts may differ), FFN intermediate neurons, whole
encoder layers. The output must load with stock `transformers` 4 and nothing of ours (transformers 5: with
`compress.core.models.load_classifier`), so every cut is one the config can express:

- heads: `compress.core.heads.prune_heads`, what transformers 4's `prune_heads` did (transformers 5 removed
  it): it slices query/key/value and the attention output projection, updates each attention module's head
  count, and records `config.pruned_heads`, which transformers 4's `from_pretrained` re-applies before loading
  the weights and `compress.core.models.load_classifier` applies on transformers 5. Torch-Pruning's
  `MetaPruner` can cut the same channels, but it leaves `num_attention_heads`/`all_head_size` and the config
  stale (a checkpoint that does not reload) and, on ALBERT, traces one shared layer many times.
- FFN neurons: Torch-Pruning's `prune_linear_out_channels` / `prune_linear_in_channels` on the two FFN
  linears, then `config.intermediate_size`. That number is global, so every layer keeps the same width
  (per-layer FFN ratios are refused: they would save a checkpoint `from_pretrained` cannot rebuild).
- layers: BERT layers are dropped from the `ModuleList` (`num_hidden_layers`, `pruned_heads` renumbered);
  ALBERT, whose layers all share one weight group, runs that group fewer times.

Importance is scored per structure (a head = its rows of Q/K/V plus its columns of the output
projection; a neuron = its FFN row and column): L1/L2 weight magnitude, first-order Taylor
(|w * dL/dw| accumulated over `batches` training batches), or the gradient of a per-head gate
(Michel et al., 2019), applied on the input of the attention output projection, which equals masking
that head's attention probabilities and works under SDPA (transformers 4.57's ALBERT SDPA attention
silently ignores `head_mask`). On ALBERT the shared layer's parameters and gate appear in every
application, so autograd sums their gradients over all applications: one decision, scored once for all.
The embeddings (ALBERT's factorized E -> H projection included) are never touched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import Field, field_validator, model_validator

from compress.core.artifact import Artifact
from compress.core.config import Architecture, StepConfig
from compress.core.errors import CompressError, StageFailed
from compress.core.heads import attentions, kept_heads, prune_heads, pruned_heads, renumber
from compress.core.models import load_classifier, save_checkpoint
from compress.core.stage import Context, StageResult, register
from compress.core.task import batches
from compress.core.train import TrainingSettings, cross_entropy, train


PRUNABLE = ("bert", "albert")  # the layouts `blocks` knows
ImportanceName = Literal["l1", "l2", "taylor", "head-mask"]


class RecoveryConfig(TrainingSettings):
    """A brief fine-tune between the iterations of an iterative schedule (the `finetune` training keys; a
    recovery has no name or input of its own, so `name`/`from` are refused)."""

    epochs: int = Field(1, ge=1, le=100)


class PruneConfig(StepConfig):
    type: Literal["prune"] = "prune"
    importance: ImportanceName = Field("l2", description="l1 | l2 (weight magnitude), taylor (|w*grad|), head-mask "
                                       "(Michel et al. 2019; neurons then use taylor from the same batches).")
    heads: float | dict[int, float] = Field(0.0, description="Fraction of attention heads removed. One number: the "
                                            "least important heads of the whole encoder (counts per layer may "
                                            "differ, each keeps >= 1); {layer: fraction}: per layer.")
    ffn: float | dict[int, float] = Field(0.0, description="Fraction of FFN intermediate neurons removed, the same "
                                          "in every layer (config.intermediate_size is one number).")
    drop_layers: list[int] = Field([], description="Encoder layer indices removed (ALBERT: shared-layer applications).")
    batches: int = Field(16, ge=1, description="Training batches scored by taylor / head-mask importance.")
    batch_size: int = Field(32, ge=1)
    iterations: int = Field(1, ge=1, le=20, description="Reach the ratios in this many equal prune rounds.")
    recovery: RecoveryConfig | None = Field(None, description="Fine-tune between rounds (not after the last).")

    @field_validator("heads")
    @classmethod
    def _heads_ratio(cls, v: float | dict[int, float]) -> float | dict[int, float]:
        for layer, ratio in (v.items() if isinstance(v, dict) else [("all", v)]):
            if isinstance(layer, int) and layer < 0:
                raise ValueError(f"heads: layer index {layer} < 0")
            if not 0 <= ratio < 1:
                raise ValueError(f"heads[{layer}] = {ratio}: a fraction in [0, 1); 1 would remove every head of "
                                 "a layer (drop the layer with drop_layers instead)")
        return v

    @field_validator("ffn")
    @classmethod
    def _ffn_uniform(cls, v: float | dict[int, float]) -> float:
        if isinstance(v, dict):
            raise ValueError("per-layer FFN ratios cannot be saved: config.intermediate_size is one number, so "
                             "from_pretrained would rebuild every layer at one width; give one fraction")
        if not 0 <= v < 1:
            raise ValueError(f"ffn = {v}: a fraction in [0, 1); 1 would remove every FFN neuron")
        return v

    @model_validator(mode="after")
    def _does_something(self) -> PruneConfig:
        if not (self.heads or self.ffn or self.drop_layers):
            raise ValueError("nothing to prune: set heads, ffn or drop_layers")
        if len(set(self.drop_layers)) != len(self.drop_layers) or any(i < 0 for i in self.drop_layers):
            raise ValueError(f"drop_layers {self.drop_layers}: distinct indices >= 0")
        return self

    def check_architecture(self, given: Architecture) -> None:
        check_prunable(given)


def check_prunable(given: Architecture) -> None:
    """ValueError unless `blocks` can read this layout: prune's, and a search's, whose candidates are pruned."""
    if given.model_type not in PRUNABLE or given.sharing != (1, 1):
        raise ValueError(f"prune supports {' and '.join(PRUNABLE)} (ALBERT with one shared layer), not {given}")


@dataclass
class Block:
    """The prunable linears of one transformer layer (ALBERT: the shared layer, applied many times)."""

    index: int  # key in config.pruned_heads
    qkv: tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]
    attn_out: torch.nn.Linear
    ffn_in: torch.nn.Linear
    ffn_out: torch.nn.Linear

    def heads(self, head_size: int) -> int:
        return self.attn_out.in_features // head_size


def blocks(model: torch.nn.Module) -> list[Block]:
    cfg = model.config
    if cfg.model_type not in PRUNABLE:
        raise CompressError(f"prune: model_type {cfg.model_type!r} is not supported ({', '.join(PRUNABLE)})")
    if cfg.model_type == "albert" and (cfg.num_hidden_groups != 1 or cfg.inner_group_num != 1):
        raise CompressError(f"prune: ALBERT with num_hidden_groups={cfg.num_hidden_groups}, inner_group_num="
                            f"{cfg.inner_group_num} is not supported (only one shared layer)")
    bert = cfg.model_type == "bert"
    return [Block(a.index, a.qkv, a.out, *((a.layer.intermediate.dense, a.layer.output.dense) if bert
                                         else (a.layer.ffn, a.layer.ffn_output))) for a in attentions(model)]


def head_size(model: torch.nn.Module) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def encoder_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.base_model.encoder.parameters())


def group_scores(block: Block, score: Callable[[torch.Tensor], torch.Tensor], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head and per-neuron sums of an element-wise score over each structure's weights and biases."""
    h = block.heads(d)
    heads = sum(score(m.weight).view(h, -1).sum(1) + score(m.bias).view(h, -1).sum(1) for m in block.qkv)
    heads = heads + score(block.attn_out.weight).view(-1, h, d).sum((0, 2))
    neurons = score(block.ffn_in.weight).sum(1) + score(block.ffn_in.bias) + score(block.ffn_out.weight).sum(0)
    return heads, neurons


Scores = list[tuple[torch.Tensor, torch.Tensor]]  # per block: (one score per head, one per FFN neuron)
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # (model inputs, labels)


class Importance:
    """Scores every head and FFN neuron of each block; the lowest go first. Criteria share this one call, so
    the stage (and a test) can swap them by name (Torch-Pruning's Importance idiom)."""

    needs_batches = True  # False: scores come from the weights alone

    def __call__(self, model: torch.nn.Module, batches: list[Batch]) -> Scores:
        raise NotImplementedError


class MagnitudeImportance(Importance):
    """Lp norm of each structure's weights and biases; needs no data."""

    needs_batches = False

    def __init__(self, p: int):
        self.p = p

    def __call__(self, model: torch.nn.Module, batches: list[Batch]) -> Scores:
        d = head_size(model)
        with torch.no_grad():
            return [tuple(s.pow(1 / self.p) for s in group_scores(b, lambda w: w.abs().pow(self.p), d))
                    for b in blocks(model)]


class TaylorImportance(Importance):
    """First-order Taylor, |w * dL/dw| per batch, summed over the batches and over each structure's weights."""

    def __call__(self, model: torch.nn.Module, batches: list[Batch]) -> Scores:
        taylor, _ = _gradient_pass(model, batches)
        return taylor


class HeadMaskImportance(Importance):
    """Heads: |dL/dgate| of a gate on each head (Michel et al., 2019), normalised per layer as in the paper;
    neurons: Taylor from the same batches."""

    def __call__(self, model: torch.nn.Module, batches: list[Batch]) -> Scores:
        taylor, gate_grads = _gradient_pass(model, batches)
        return [(g / g.norm().clamp_min(1e-12), n) for g, (_, n) in zip(gate_grads, taylor)]


IMPORTANCE: dict[str, Importance] = {"l1": MagnitudeImportance(1), "l2": MagnitudeImportance(2),
                                     "taylor": TaylorImportance(), "head-mask": HeadMaskImportance()}


def _gradient_pass(model, batches: list[Batch]) -> tuple[Scores, list[torch.Tensor]]:
    """Taylor scores of every structure, and the summed |gradient| of a per-head gate on the input of the attention
    output projection (equal to masking that head's attention probabilities), from one backward pass per batch."""
    d, bs = head_size(model), blocks(model)
    params = [p for b in bs for m in (*b.qkv, b.attn_out, b.ffn_in, b.ffn_out) for p in (m.weight, m.bias)]
    taylor = {p: torch.zeros_like(p) for p in params}
    gates = [torch.ones(b.heads(d), requires_grad=True) for b in bs]
    gate_grads = [torch.zeros_like(g) for g in gates]
    hooks = [b.attn_out.register_forward_pre_hook(lambda m, args, g=g: (args[0] * g.repeat_interleave(d),))
             for b, g in zip(bs, gates)]
    model.eval()  # no dropout: scores measure the model as it will run
    try:
        for inputs, labels in batches:
            model.zero_grad()
            for g in gates:
                g.grad = None
            cross_entropy(model, inputs, labels).backward()
            with torch.no_grad():
                for p in params:
                    taylor[p] += (p * p.grad).abs()
                for acc, g in zip(gate_grads, gates):
                    acc += g.grad.abs()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return [group_scores(b, taylor.__getitem__, d) for b in bs], gate_grads


def scoring_batches(tokenizer, importance: ImportanceName, count: int, batch_size: int, ctx: Context) -> list[Batch]:
    """`count` seeded-random training batches for the gradient criteria (none for magnitude)."""
    if not IMPORTANCE[importance].needs_batches:
        return []
    order = torch.randperm(len(ctx.data.train), generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    examples = [ctx.data.train[i] for i in order[: count * batch_size]]
    return [({k: torch.from_numpy(v) for k, v in enc.items()}, torch.from_numpy(labels))
            for enc, labels in batches(tokenizer, examples, ctx.max_length, batch_size)]


def heads_to_prune(model, scores: list[torch.Tensor], ratio: float | dict[int, float], frac: float) -> dict[int, list[int]]:
    """Heads to cut this round so that `frac` of the round's way to `ratio` (of the original heads) is reached."""
    n_orig, bs = model.config.num_attention_heads, blocks(model)
    alive = [kept_heads(model.config, b.index) for b in bs]
    chosen: dict[int, list[int]] = {}
    if isinstance(ratio, dict):
        for i, r in ratio.items():
            if i >= len(bs):
                raise CompressError(f"prune: heads has layer {i}, but the model has {len(bs)} prunable layers")
            cut = round(r * frac * n_orig) - (n_orig - len(alive[i]))
            if cut >= len(alive[i]):
                raise CompressError(f"prune: heads[{i}] = {r} removes all {n_orig} heads of layer {i}")
            if cut > 0:
                chosen[i] = [alive[i][j] for j in scores[i].argsort()[:cut].tolist()]
        return chosen
    cut = round(ratio * frac * n_orig * len(bs)) - sum(n_orig - len(a) for a in alive)
    ranked = sorted((s, i, j) for i, sc in enumerate(scores) for j, s in enumerate(sc.tolist()))
    left = [len(a) for a in alive]
    for _, i, j in ranked:
        if cut <= 0:
            break
        if left[i] > 1:  # every layer keeps a head
            chosen.setdefault(i, []).append(alive[i][j])
            left[i], cut = left[i] - 1, cut - 1
    return chosen


def prune_ffn(model, scores: list[torch.Tensor], width: int) -> None:
    import torch_pruning as tp

    for b, s in zip(blocks(model), scores):
        cut = s.argsort()[: b.ffn_in.out_features - width].tolist()
        tp.prune_linear_out_channels(b.ffn_in, cut)
        tp.prune_linear_in_channels(b.ffn_out, cut)
    model.config.intermediate_size = width


def drop_layers(model, drop: list[int]) -> dict[int, int]:
    """Remove encoder layers; returns old -> new index of the prunable blocks (ALBERT: its one shared layer)."""
    cfg = model.config
    if any(i >= cfg.num_hidden_layers for i in drop) or len(drop) >= cfg.num_hidden_layers:
        raise CompressError(f"prune: drop_layers {drop} with {cfg.num_hidden_layers} layers: indices must exist "
                            "and at least one layer must stay")
    keep = [i for i in range(cfg.num_hidden_layers) if i not in drop]
    if cfg.model_type == "bert":
        model.bert.encoder.layer = torch.nn.ModuleList(model.bert.encoder.layer[i] for i in keep)
        renumber(cfg, keep)
    cfg.num_hidden_layers = len(keep)  # ALBERT: the shared layer simply runs fewer times
    return {old: new for new, old in enumerate(keep)} if cfg.model_type == "bert" else {0: 0}


def check_reload(model, folder: Path, tokenizer, ctx: Context) -> float:
    """Max |logit difference| between the model in memory and what was saved, loaded as the manifest tells a user
    to (load_classifier: the head its config's architectures name; a tagger must reload as one)."""
    enc = next(batches(tokenizer, ctx.data.dev[:16], ctx.max_length, 16))[0]
    feed = {k: torch.from_numpy(v) for k, v in enc.items()}
    reloaded = load_classifier(folder)
    with torch.no_grad():
        return float((model.eval()(**feed).logits - reloaded(**feed).logits).abs().max())


@register(PruneConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint")
def prune(cfg: PruneConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    model = load_classifier(parent.path, allow_pickle=ctx.allow_pickle, task=ctx.task)
    blocks(model)  # unsupported architectures stop here, before any work
    before, start, history = encoder_parameters(model), time.perf_counter(), []
    heads = cfg.heads
    if cfg.drop_layers:
        renumber = drop_layers(model, cfg.drop_layers)
        if isinstance(heads, dict):  # per-layer ratios name the input model's layers
            gone = sorted(set(heads) - set(renumber))
            if gone:
                raise CompressError(f"prune: heads names layers {gone}, which drop_layers removes")
            heads = {renumber[i]: r for i, r in heads.items()}
    width_orig, importance = model.config.intermediate_size, IMPORTANCE[cfg.importance]
    scoring = scoring_batches(tokenizer, cfg.importance, cfg.batches, cfg.batch_size, ctx)
    for round_ in range(1, cfg.iterations + 1):
        frac = round_ / cfg.iterations
        scores = importance(model, scoring)
        if heads:
            chosen = heads_to_prune(model, [h for h, _ in scores], heads, frac)
            if chosen:
                prune_heads(model, chosen)
        if cfg.ffn:
            width = round(width_orig * (1 - cfg.ffn * frac))
            if width < 1:
                raise CompressError(f"prune: ffn = {cfg.ffn} leaves no neuron of {width_orig}")
            prune_ffn(model, [n for _, n in scores], width)
        ctx.log.info("%s: round %d/%d, heads per layer %s, FFN width %d, encoder parameters %d", cfg.name, round_,
                     cfg.iterations, [b.heads(head_size(model)) for b in blocks(model)],
                     model.config.intermediate_size, encoder_parameters(model))
        if cfg.recovery and round_ < cfg.iterations:
            history.append(train(model, tokenizer, cfg.recovery, ctx, f"{cfg.name} recovery"))
    save_checkpoint(model, tokenizer, out)
    reload_diff = check_reload(model, out, tokenizer, ctx)
    if reload_diff > 1e-4:
        raise StageFailed(f"{cfg.name}: the saved checkpoint reloads with logits off by {reload_diff:.2e}")
    after = encoder_parameters(model)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {
        "importance": cfg.importance,
        "heads_per_layer": [b.heads(head_size(model)) for b in blocks(model)],
        "pruned_heads": {str(k): v for k, v in pruned_heads(model.config).items()},
        "intermediate_size": model.config.intermediate_size,
        "num_hidden_layers": model.config.num_hidden_layers,
        "encoder_parameters_before": before,
        "encoder_parameters_after": after,
        "encoder_parameter_reduction": round(1 - after / before, 4),
        "reload_max_abs_logit_diff": reload_diff,
        "recovery": history,
        "prune_seconds": round(time.perf_counter() - start, 1),
    })
