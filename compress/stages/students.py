"""Students for distillation, built from a BERT-style classifier or tagger: fewer layers (of a BERT or an ALBERT),
ALBERT, or a fresh config. A student has its input's head (sequence or token classification).

Each builder returns a stock `transformers` model, so the student saves with `save_pretrained`
and loads anywhere without this package.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from compress.core.config import Architecture, Strict
from compress.core.errors import CompressError
from compress.core.heads import renumber
from compress.core.models import build_model
from compress.core.task import model_task


class LayerDrop(Strict):
    layer_drop: list[int] = Field(min_length=1, description="Teacher layers (0-based) the student keeps, in order; an ALBERT shares its layers, so there only their number matters.")


class AlbertizeSpec(Strict):
    embedding_size: int = Field(128, ge=2, description="E: word embeddings are factorized into V x E and E x H.")
    num_groups: int = Field(1, ge=1, description="Shared layer groups; each takes a contiguous block of layers.")
    layers_per_group: int = Field(1, ge=1, description="Distinct layers inside a group, applied in turn (ALBERT's "
                                  "inner_group_num); the group repeats to the teacher's depth, so compute is unchanged.")
    init: Literal["average", "first", "middle", "last"] = Field(
        "average", description="How a group's shared layer is initialised from the teacher layers it replaces.")
    weight_rows: Literal["corpus", "uniform"] = Field(
        "corpus", description="corpus: the SVD weights each embedding row by how often the training text uses it "
        "(+1), so the E dimensions go to the words the task reads; uniform: plain truncated SVD.")
    anneal: float = Field(0.0, ge=0, le=1, description="Share gradually: the student starts with one layer per "
                          "teacher layer, each written as shared + c * own, and c falls linearly from 1 to 0 over "
                          "this fraction of the training steps; from then on it is the shared student that is "
                          "saved. 0: shared from the first step.")


class Albertize(Strict):
    albertize: AlbertizeSpec


class Fresh(Strict):
    fresh: dict[str, int | float | str] = Field(description="Config overrides on the input's config; random weights.")


StudentSpec = Literal["parent"] | LayerDrop | Albertize | Fresh


def student_architecture(spec: StudentSpec, given: Architecture) -> Architecture:
    """The architecture of the student built from an input of `given` (albertize makes an ALBERT of its groups);
    ValueError when the student cannot be built from it: albertize reads a BERT encoder's layers, layer_drop a
    BERT's or an ALBERT's whose groups can share the new depth."""
    if isinstance(spec, LayerDrop) and given.model_type == "albert":
        problem = albert_depth_problem(len(spec.layer_drop), given.sharing)
        if problem:
            raise ValueError(f"student.layer_drop: {problem}")
    elif isinstance(spec, (LayerDrop, Albertize)) and given.model_type != "bert":
        raise ValueError(f"student.{next(iter(spec.model_dump()))} needs a BERT input, not {given}")
    if isinstance(spec, Albertize):
        return replace(given, model_type="albert", sharing=(spec.albertize.num_groups, spec.albertize.layers_per_group))
    return given


def albert_depth_problem(layers: int, sharing: tuple[int, int]) -> str | None:
    """Why an ALBERT with (num_hidden_groups, inner_group_num) `sharing` cannot apply its groups `layers` times, or
    None. transformers gives each group an equal block of num_hidden_layers / num_hidden_groups applications, and
    hands it a head-mask slice of that length, one entry per inner layer: a shorter block crashes the forward."""
    groups, inner = sharing
    if layers % groups:
        return (f"{layers} layers do not split evenly over the ALBERT's {groups} shared groups (num_hidden_groups); "
                f"keep a multiple of {groups}")
    if layers // groups < inner:
        return (f"{layers} layers give each of the {groups} groups {layers // groups} applications, fewer than its "
                f"{inner} inner layers (inner_group_num), which transformers' ALBERT cannot run")
    return None


def _encoder(model) -> torch.nn.Module:
    encoder = getattr(getattr(model, model.base_model_prefix), "encoder", None)
    if not isinstance(getattr(encoder, "layer", None), torch.nn.ModuleList):
        raise CompressError(f"student: {model.config.model_type!r} has no encoder.layer list (BERT-style needed)")
    return encoder


def layer_drop(model, keep: list[int]):
    """A copy keeping only the `keep` encoder layers, each initialised from the teacher layer of that index.
    An ALBERT's layers are applications of its shared groups, so its copy applies them len(keep) times: there
    the indices only say how many."""
    config = model.config
    albert = config.model_type == "albert"
    depth = config.num_hidden_layers if albert else len(_encoder(model).layer)
    bad = [i for i in keep if not 0 <= i < depth]
    if bad or len(set(keep)) != len(keep):
        raise CompressError(f"student.layer_drop: {keep} must be distinct layer indices in 0..{depth - 1}")
    problem = albert_depth_problem(len(keep), (config.num_hidden_groups, config.inner_group_num)) if albert else None
    if problem:
        raise CompressError(f"student.layer_drop: {problem}")
    student = copy.deepcopy(model)
    student.config.num_hidden_layers = len(keep)  # the copy's modules read this same (deep-copied) config
    if albert:
        return student
    layers = _encoder(model).layer
    kept = torch.nn.ModuleList([copy.deepcopy(layers[i]) for i in keep])
    for new, layer in enumerate(kept):  # attention modules that know their index (KV caches) must be renumbered
        if hasattr(layer.attention.self, "layer_idx"):
            layer.attention.self.layer_idx = new
    _encoder(student).layer = kept
    renumber(student.config, keep)
    return student


def fresh(model, overrides: dict):
    """The input's architecture, vocabulary and head with `overrides` applied, randomly initialised."""
    config = copy.deepcopy(model.config)
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise CompressError(f"student.fresh: {unknown} are not {config.model_type} config keys")
    for k, v in overrides.items():
        setattr(config, k, v)
    if config.hidden_size % config.num_attention_heads:
        raise CompressError(f"student.fresh: hidden_size {config.hidden_size} is not a multiple of "
                            f"num_attention_heads {config.num_attention_heads}")
    return build_model(model_task(model).auto_class(), config)


def embedding_row_counts(encoded: dict[str, np.ndarray], config) -> torch.Tensor:
    """How often token arrays use each row of the stacked tables [W; P; T] (word ids, positions, token types)."""
    mask = torch.from_numpy(encoded["attention_mask"]).bool()
    ids = torch.from_numpy(encoded["input_ids"])
    types = torch.from_numpy(encoded.get("token_type_ids", np.zeros_like(encoded["input_ids"])))
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return torch.cat([torch.bincount(x[mask], minlength=n).double() for x, n in
                      [(ids, config.vocab_size), (positions, config.max_position_embeddings),
                       (types, config.type_vocab_size)]])


def factorize_embeddings(tables: list[torch.Tensor], gain: torch.Tensor, bias: torch.Tensor, e: int,
                         row_weights: torch.Tensor | None = None):
    """BERT's H-wide embedding tables + LayerNorm -> E-wide tables and the E -> H mapping ALBERT applies after them.

    BERT computes LN_H(w + p + t). LayerNorm first centres its input, which is linear, so we factorize the
    centred, stacked tables [W; P; T]·C by truncated SVD (rank E-1) and rotate the E-dim codes into the
    subspace orthogonal to the all-ones vector: then the codes have zero mean, ALBERT's LN_E (gain 1, bias 0)
    only rescales them, and a mapping sqrt(H/E)·B·diag(gain) + bias reproduces LN_H up to truncation error.
    `row_weights` make it a weighted SVD: the basis fits the heavy rows best, every row is projected onto it.
    Why: at E=128 a plain SVD of MiniLM spends its rank on 30k words a review never uses; before any training
    the factorized teacher scored 0.39 dev accuracy on Rotten Tomatoes, 0.82 with rows weighted by use (teacher 0.83).
    """
    h = tables[0].shape[1]
    if not 2 <= e <= h:
        raise CompressError(f"student.albertize.embedding_size: {e} must be between 2 and the hidden size {h}")
    stacked = torch.cat(tables).double()
    centred = stacked - stacked.mean(dim=1, keepdim=True)
    weights = torch.ones(len(centred), dtype=torch.double) if row_weights is None else row_weights.double()
    _, _, vt = torch.linalg.svd(centred * weights.sqrt()[:, None], full_matrices=False)
    basis = vt[: e - 1]  # (E-1, H)
    codes = centred @ basis.T  # (N, E-1): each row's best fit in the basis
    q, _ = torch.linalg.qr(torch.cat([torch.ones(e, 1), torch.eye(e)[:, : e - 1]], dim=1).double())
    rotate = q[:, 1:]  # (E, E-1): orthonormal columns, each orthogonal to the all-ones vector
    codes, basis = codes @ rotate.T, rotate @ basis
    mapping = math.sqrt(h / e) * basis.T * gain.double()[:, None]  # Linear weight (H, E)
    split = torch.split(codes.float(), [t.shape[0] for t in tables])
    kept = (codes**2).sum() / (centred**2).sum()  # unweighted share of the tables' centred energy
    return list(split), mapping.float(), bias.clone(), float(kept)


def _combine(states: list[dict[str, torch.Tensor]], init: str) -> dict[str, torch.Tensor]:
    """One layer's weights standing for several: their average (every layer contributes; see README for why
    this is the default) or one of them."""
    if init == "average":
        return {k: torch.stack([s[k].detach() for s in states]).mean(0) for k in states[0]}
    return {k: v.detach().clone() for k, v in states[{"first": 0, "middle": len(states) // 2, "last": -1}[init]].items()}


def _shared_layer(teacher_layers: list, init: str) -> dict[str, torch.Tensor]:
    """The ALBERT layer weights for one group from the BERT layers it stands in for."""
    state = _combine([l.state_dict() for l in teacher_layers], init)
    names = {
        "attention.self.query": "attention.query", "attention.self.key": "attention.key",
        "attention.self.value": "attention.value", "attention.output.dense": "attention.dense",
        "attention.output.LayerNorm": "attention.LayerNorm", "intermediate.dense": "ffn",
        "output.dense": "ffn_output", "output.LayerNorm": "full_layer_layer_norm",
    }
    return {names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in state.items()}


def albertize(teacher, spec: AlbertizeSpec, row_counts: Callable[[], torch.Tensor] | None = None
              ) -> tuple[torch.nn.Module, dict]:
    """An ALBERT with the BERT's head (AlbertForSequenceClassification, AlbertForTokenClassification) from a BERT
    classifier: factorized embeddings, shared layer groups.
    `row_counts` gives embedding_row_counts of the training text, which weight the factorization when spec says
    corpus; a callable, so the text is tokenized only then."""
    import transformers
    from transformers import AlbertConfig

    tc = teacher.config
    if tc.model_type != "bert":
        raise CompressError(f"student.albertize: needs a BERT teacher, got model_type {tc.model_type!r}")
    if tc.num_hidden_layers % (spec.num_groups * spec.layers_per_group):
        raise CompressError(f"student.albertize: num_groups {spec.num_groups} x layers_per_group "
                            f"{spec.layers_per_group} does not divide the teacher's {tc.num_hidden_layers} layers")
    repeats = tc.num_hidden_layers // spec.layers_per_group // spec.num_groups
    if spec.anneal and spec.layers_per_group > 1:
        # the unshared start has one group per repeat, so the same transformers limit below would crash it
        raise CompressError("student.albertize: anneal needs layers_per_group 1")
    if repeats < spec.layers_per_group:
        # transformers 4.57 hands each group a head-mask slice one entry per repeat; fewer repeats than inner
        # layers crash its forward (IndexError), so such a checkpoint would not run anywhere
        raise CompressError(f"student.albertize: each of the {spec.num_groups} groups must repeat at least "
                            f"layers_per_group ({spec.layers_per_group}) times for transformers' ALBERT to run it")
    config = AlbertConfig(
        vocab_size=tc.vocab_size, embedding_size=spec.embedding_size, hidden_size=tc.hidden_size,
        num_hidden_layers=tc.num_hidden_layers // spec.layers_per_group,
        num_hidden_groups=tc.num_hidden_layers if spec.anneal else spec.num_groups,
        inner_group_num=spec.layers_per_group,
        num_attention_heads=tc.num_attention_heads, intermediate_size=tc.intermediate_size,
        hidden_act=tc.hidden_act, hidden_dropout_prob=tc.hidden_dropout_prob,
        attention_probs_dropout_prob=tc.attention_probs_dropout_prob, classifier_dropout_prob=tc.hidden_dropout_prob,
        max_position_embeddings=tc.max_position_embeddings, type_vocab_size=tc.type_vocab_size,
        layer_norm_eps=tc.layer_norm_eps, pad_token_id=tc.pad_token_id, bos_token_id=None, eos_token_id=None,
        num_labels=tc.num_labels, id2label=tc.id2label, label2id=tc.label2id,
    )
    student = getattr(transformers, f"Albert{model_task(teacher).head}")(config).eval()
    emb, a = teacher.bert.embeddings, student.albert
    tables = [emb.word_embeddings.weight, emb.position_embeddings.weight, emb.token_type_embeddings.weight]
    if spec.weight_rows == "corpus" and row_counts is None:
        raise CompressError("student.albertize.weight_rows: 'corpus' needs the training text's token counts")
    weights = row_counts() + 1 if spec.weight_rows == "corpus" else None
    (w, p, t), mapping, bias, kept = factorize_embeddings([x.detach() for x in tables], emb.LayerNorm.weight.detach(),
                                                          emb.LayerNorm.bias.detach(), spec.embedding_size, weights)
    with torch.no_grad():
        a.embeddings.word_embeddings.weight.copy_(w)
        a.embeddings.position_embeddings.weight.copy_(p)
        a.embeddings.token_type_embeddings.weight.copy_(t)
        a.embeddings.LayerNorm.weight.fill_(1.0)
        a.embeddings.LayerNorm.bias.zero_()
        a.encoder.embedding_hidden_mapping_in.weight.copy_(mapping)
        a.encoder.embedding_hidden_mapping_in.bias.copy_(bias)
    block = tc.num_hidden_layers // config.num_hidden_groups
    for g, group in enumerate(a.encoder.albert_layer_groups):
        stands_for = list(teacher.bert.encoder.layer[g * block : (g + 1) * block])
        for j, layer in enumerate(group.albert_layers):  # inner layer j runs at block positions j, j + per, ...
            layer.load_state_dict(_shared_layer(stands_for[j :: spec.layers_per_group], spec.init))
    if a.pooler is not None:  # sequence heads read the pooled [CLS]; token heads have no pooler
        a.pooler.load_state_dict(teacher.bert.pooler.dense.state_dict())
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    if spec.anneal:
        GradualSharing(spec.anneal, spec.num_groups, spec.init).attach(student)
    return student, {"embedding_svd_energy_kept": round(kept, 4)}


class _TowardShared(torch.nn.Module):
    """A parametrization: weight = shared + c * own. In eval mode c is 0, so dev accuracy (and early stopping)
    always measures the shared student, the one that will be saved."""

    def __init__(self, shared: torch.nn.Parameter, sharing: GradualSharing):
        super().__init__()
        self.shared, self.sharing = shared, sharing

    def forward(self, own: torch.Tensor) -> torch.Tensor:
        return self.shared + self.sharing.c * own if self.training else self.shared

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - self.shared


class GradualSharing:
    """Cross-layer sharing reached during training instead of imposed at its start.

    Averaging six fine-tuned layers into one at the first step throws away most of what they do (MiniLM on
    Rotten Tomatoes: dev accuracy 0.83 -> 0.62) and distillation on a few thousand snippets does not win it back.
    Here the student keeps one layer per teacher layer, written as shared + c * own; distillation trains both
    while c falls to 0, so the layers are pulled together while the losses hold the function in place.
    """

    def __init__(self, anneal: float, num_groups: int, init: str):
        self.anneal, self.num_groups, self.init, self.c = anneal, num_groups, init, 1.0
        self.shared: dict[str, torch.nn.Parameter] = {}  # final model's parameter name -> the tensor it becomes

    def attach(self, student) -> None:
        """Parametrize the unshared student's layers around one shared tensor per group and weight."""
        from torch.nn.utils import parametrize

        layers = [g.albert_layers[0] for g in student.albert.encoder.albert_layer_groups]
        block = len(layers) // self.num_groups
        for g in range(self.num_groups):
            members = layers[g * block : (g + 1) * block]
            shared = _combine([dict(l.named_parameters()) for l in members], self.init)
            for name, value in shared.items():
                tensor = self.shared[f"albert.encoder.albert_layer_groups.{g}.albert_layers.0.{name}"] = \
                    torch.nn.Parameter(value)
                for layer in members:
                    module, attr = layer.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
                    parametrize.register_parametrization(module, attr, _TowardShared(tensor, self))

    def __call__(self, step: int, total: int) -> None:
        """compress.core.train's on_step: c = 1 at the first step, 0 from step anneal * total on."""
        self.c = max(0.0, 1.0 - step / (self.anneal * total))

    def shared_model(self, student):
        """The stock ALBERT (the student's own head class) with num_groups groups that the student has become."""
        config = copy.deepcopy(student.config)
        config.num_hidden_groups = self.num_groups
        final = type(student)(config)
        state = {k: v for k, v in student.state_dict().items() if ".albert_layer_groups." not in k}
        state |= {name: tensor.detach() for name, tensor in self.shared.items()}
        final.load_state_dict(state)
        return final.eval()

    @staticmethod
    def of(model) -> GradualSharing | None:
        return next((m.sharing for m in model.modules() if isinstance(m, _TowardShared)), None)


def build_student(spec: StudentSpec, parent_model, row_counts: Callable[[], torch.Tensor] | None = None
                  ) -> tuple[torch.nn.Module, dict]:
    """The student a recipe asks for, built from the stage's input model, and facts about how it was built.
    `row_counts`: see albertize, the one student that uses them."""
    if spec == "parent":
        return parent_model, {}
    if isinstance(spec, LayerDrop):
        return layer_drop(parent_model, spec.layer_drop), {"kept_layers": spec.layer_drop}
    if isinstance(spec, Albertize):
        return albertize(parent_model, spec.albertize, row_counts)
    return fresh(parent_model, spec.fresh), {"fresh": spec.fresh}


def parameter_split(model) -> dict[str, int]:
    """Parameters by role: embeddings (ALBERT's E -> H mapping included), encoder layers, pooler + classifier."""
    split = {"embeddings": 0, "encoder": 0, "head": 0}
    for name, p in model.named_parameters():
        role = ("embeddings" if ".embeddings." in name or "embedding_hidden_mapping" in name
                else "encoder" if ".encoder." in name else "head")
        split[role] += p.numel()
    return split | {"total": sum(split.values())}
