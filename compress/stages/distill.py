"""distill: train a student (the input, a layer-dropped copy, an ALBERT conversion or a fresh model) on a teacher.

The loss is a weighted sum of small objects sharing one signature, chosen by name from the
recipe (`loss: {kl: 1, ce: 0.5, hidden: 1}`); the loop is compress.core.train's, under Accelerate.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from compress.core.artifact import Artifact
from compress.core.config import Architecture, StepConfig, Strict
from compress.core.errors import CompressError
from compress.core.evaluate import evaluate
from compress.core.heads import kept_heads
from compress.core.models import load_classifier, save_checkpoint
from compress.core.section import Measured, Metrics, Ran, Section
from compress.core.stage import Context, StageResult, register
from compress.core.task import IGNORE, Example, encode
from compress.core.train import TrainingSettings, token_rows, train
from compress.stages.augment import AugmentConfig, WordSwap
from compress.stages.students import (GradualSharing, StudentSpec, build_student, embedding_row_counts,
                                      parameter_split, student_architecture)
from runtimes.torch_runtime import TorchRuntime


class LossConfig(Strict):
    kl: float = Field(1.0, ge=0, description="Soft-label KL(teacher || student) at `temperature`, scaled by T^2.")
    ce: float = Field(0.5, ge=0, description="alpha: hard-label cross-entropy (labelled examples only).")
    hidden: float = Field(0.0, ge=0, description="Hidden-state MSE on mapped layers (projected if widths differ).")
    attention: float = Field(0.0, ge=0, description="Attention-map MSE on mapped layers: a pruned student's "
                             "heads against the teacher heads they were cut from.")
    temperature: float = Field(2.0, gt=0)
    layer_map: dict[int, int] | None = Field(
        None, description="Student hidden-state index -> teacher's (0 = embeddings); default: evenly spaced.")


class DistillSettings(TrainingSettings):
    """How a student learns from its teacher, whichever student it is: the keys a search's candidates share."""

    loss: LossConfig = LossConfig()
    unlabeled: Literal["data"] | Path | None = Field(
        None, description="Extra text for the soft losses only: a file, one example per line, or 'data' for the "
                          "unlabeled text the data source carries (rotten_tomatoes: plot summaries; a source "
                          "without any, a user's file: its training texts, which distillation reads anyway).")
    augment: AugmentConfig | None = Field(None, description="Perturbed copies of training batches, labelled by the "
                                          "teacher (compress/stages/augment.py); unset: the texts as they are.")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    cache_teacher: bool = Field(True, description="Keep the teacher's outputs for each training text after its first "
                                "pass, so later epochs run the student only. Costs memory: the logits, plus "
                                "float16 hidden states (and attention maps) of the mapped layers for every token.")

    @field_validator("unlabeled")
    @classmethod
    def _unlabeled_exists(cls, v: Path | str | None) -> Path | str | None:
        if isinstance(v, Path) and not v.is_file():
            raise ValueError(f"unlabeled text file not found: {str(v)!r}")
        return v


class DistillConfig(StepConfig, DistillSettings):
    type: Literal["distill"] = "distill"
    teacher: str | None = Field(None, description="Earlier hf-checkpoint step that teaches; default: the input.")
    student: StudentSpec = Field("parent", description="parent | {layer_drop: [..]} | {albertize: {..}} | {fresh: {..}}")

    def references(self) -> dict[str, str]:
        return {"teacher": self.teacher} if self.teacher else {}

    def check_architecture(self, given: Architecture) -> None:
        student_architecture(self.student, given)

    def output_architecture(self, given: Architecture) -> Architecture:
        return student_architecture(self.student, given)


class Term:
    """One loss term: (student outputs, teacher outputs, labels, attention mask) -> scalar."""

    needs: set[str] = set()

    def __init__(self, cfg: LossConfig, layer_map: dict[int, int], projections: torch.nn.ModuleDict,
                 head_pairs: dict[int, list[int]] | None = None):
        # How the student maps onto the teacher: layers, widths (projections) and heads (student layer -> the
        # teacher head of each of its heads; absent: the same positions).
        self.cfg, self.layer_map, self.projections = cfg, layer_map, projections
        self.head_pairs = head_pairs or {}


class SoftKL(Term):
    """KL per decision, averaged over decisions: per example for a sequence head (torch's batchmean), per real
    token for a token head, so padding never counts and a batch of long sentences weighs as much per token as one
    of short ones."""

    def __call__(self, s, t, labels, mask):
        T = self.cfg.temperature
        kl = F.kl_div(F.log_softmax(s.logits / T, -1), F.log_softmax(t.logits / T, -1), reduction="none",
                      log_target=True).sum(-1)  # (B,) or (B, T)
        return (kl[mask.bool()] if kl.dim() == 2 else kl).mean() * T * T


class HardCE(Term):
    """Cross-entropy on the labelled decisions: examples, or the first pieces of words (IGNORE elsewhere)."""

    def __call__(self, s, t, labels, mask):
        if (labels == IGNORE).all():
            return s.logits.sum() * 0.0
        return F.cross_entropy(*token_rows(s.logits, labels), ignore_index=IGNORE)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens only: padding carries no signal to copy."""
    m = mask.to(a.dtype).view(*mask.shape, *([1] * (a.dim() - mask.dim())))
    return ((a - b) ** 2 * m).sum() / (m.sum() * a[0, 0].numel())


class HiddenMSE(Term):
    needs = {"output_hidden_states"}

    def __call__(self, s, t, labels, mask):
        terms = []
        for si, ti in self.layer_map.items():
            h = s.hidden_states[si]
            if str(si) in self.projections:
                h = self.projections[str(si)](h)
            terms.append(_masked_mse(h, t.hidden_states[ti], mask))
        return torch.stack(terms).mean()


class AttentionMSE(Term):
    """Each student head's attention map against the teacher head it was pruned from (`head_pairs`), averaged over
    real (query, key) pairs, so the padding a batch happens to have does not dilute it."""

    needs = {"output_attentions"}

    def __call__(self, s, t, labels, mask):
        m = mask.to(s.attentions[0].dtype)
        pairs = m[:, None, :, None] * m[:, None, None, :]  # real (query, key) pairs: padding neither asks nor answers
        terms = []
        for si, ti in self.layer_map.items():
            if si == 0 or ti == 0:
                continue  # embeddings have no attention
            a, b = s.attentions[si - 1], t.attentions[ti - 1]
            if si in self.head_pairs:
                b = b[:, self.head_pairs[si]]
            terms.append(((a - b) ** 2 * pairs).sum() / (pairs.sum() * a.shape[1]))
        return torch.stack(terms).mean()


LOSSES: dict[str, type[Term]] = {"kl": SoftKL, "ce": HardCE, "hidden": HiddenMSE, "attention": AttentionMSE}


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer j <-> teacher layer round(j * Lt / Ls): the last layers meet, as the classifier reads them."""
    return {j: round(j * teacher_layers / student_layers) for j in range(1, student_layers + 1)}


def heads_per_layer(model) -> list[int]:
    """Attention heads of each layer, read off a one-token forward pass: pruned layers keep different counts."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=model.device), output_attentions=True)
    return [a.shape[1] for a in out.attentions]


def head_pairs(layer_map: dict[int, int], student, teacher) -> dict[int, list[int]]:
    """For each mapped student layer, the teacher head each of its heads is compared with. A pruned student's
    heads are the teacher's by original index (prune_heads records the pruned ones in config.pruned_heads), so a
    head is always matched with the one it was cut from; a student of other origin needs the same head count, and
    is matched position by position. Refused before training, not at the first batch."""
    counts = {"student": heads_per_layer(student), "teacher": heads_per_layer(teacher)}
    pairs, bad = {}, {}
    for si, ti in layer_map.items():
        if not (si and ti):
            continue
        ks, kt = kept_heads(student.config, si - 1), kept_heads(teacher.config, ti - 1)
        same_origin = (student.config.num_attention_heads == teacher.config.num_attention_heads
                       and len(ks) == counts["student"][si - 1] and len(kt) == counts["teacher"][ti - 1])
        if same_origin and set(ks) <= set(kt):
            pairs[si] = [kt.index(h) for h in ks]
        elif counts["student"][si - 1] != counts["teacher"][ti - 1]:  # equal counts: matched by position
            bad[si] = f"{counts['student'][si - 1]} vs {counts['teacher'][ti - 1]}"
    if bad:
        raise CompressError(f"loss.attention: student vs teacher heads differ on mapped student layers {bad}, and "
                            "the student's heads are not a subset of the teacher's (config.pruned_heads): set "
                            "attention: 0 or map only matching layers in loss.layer_map")
    return pairs


class TeacherCache:
    """The frozen teacher's outputs per training text, computed on first sight and reused every later epoch.

    Why: the teacher is in eval mode with gradients off, so its outputs for a text never change, and its forward
    pass is most of a distillation step (a 6-layer teacher vs a pruned 3-layer student: 350 ms of 630 per batch of
    32 on 2 cores). A row is keyed by its real tokens (ids and token types up to the mask's length), so a text
    hits the cache whatever batch and padding it comes in; real tokens do not see padding, so a row read from the
    cache matches a fresh forward pass to float16 rounding. Only what the loss terms read is kept: logits, and the
    hidden states and attention maps of the teacher layers the layer map names.

    `rows` may be shared by several distillations from one teacher (a search's candidates): a row serves any
    student whose layers it holds, and is recomputed with the layers of one that needs others. None: no caching."""

    def __init__(self, teacher, flags: dict[str, bool], layer_map: dict[int, int],
                 rows: dict[bytes, dict[str, Any]] | None):
        self.teacher, self.flags, self.rows = teacher, flags, rows
        self.hidden = sorted(set(layer_map.values())) if flags.get("output_hidden_states") else []
        self.attention = sorted({t - 1 for s, t in layer_map.items() if s and t}) if flags.get("output_attentions") \
            else []

    def forward(self, inputs: dict[str, torch.Tensor]):
        with torch.no_grad():
            return self.teacher.to(inputs["input_ids"].device)(**inputs, **self.flags)

    def __call__(self, inputs: dict[str, torch.Tensor]):
        if self.rows is None:
            return self.forward(inputs)
        lengths = inputs["attention_mask"].sum(1).tolist()
        keys = [self._key(inputs, i, n) for i, n in enumerate(lengths)]
        if not all(self._covers(self.rows.get(k)) for k in keys):
            out = self.forward(inputs)
            for i, (k, n) in enumerate(zip(keys, lengths)):
                if not self._covers(self.rows.get(k)):
                    self.rows[k] = self._row(out, i, n)
        return self._batch([self.rows[k] for k in keys], inputs["attention_mask"])

    def _covers(self, row: dict[str, Any] | None) -> bool:
        """Whether a cached row holds every layer this student reads."""
        return row is not None and set(self.hidden) <= row["hidden"].keys() and set(self.attention) <= row[
            "attention"].keys()

    def _key(self, inputs: dict[str, torch.Tensor], i: int, n: int) -> bytes:
        """The row's real tokens (encode pads on the right)."""
        parts = [inputs["input_ids"][i, :n]] + ([inputs["token_type_ids"][i, :n]] if "token_type_ids" in inputs
                                                 else [])
        return b"|".join(p.cpu().numpy().tobytes() for p in parts)

    def _row(self, out, i: int, n: int) -> dict[str, Any]:
        logits = out.logits[i, :n] if out.logits.dim() == 3 else out.logits[i]
        return {"logits": logits.cpu(),
                "hidden": {l: out.hidden_states[l][i, :n].half().cpu() for l in self.hidden},
                "attention": {l: out.attentions[l][i, :, :n, :n].half().cpu() for l in self.attention}}

    def _batch(self, rows: list[dict[str, Any]], mask: torch.Tensor) -> SimpleNamespace:
        """Rows padded back to the batch's length with zeros, which every term masks out (attention keys too: the
        student's attention to padding is zero)."""
        length = mask.shape[1]

        def stack(tensors: list[torch.Tensor], dims: tuple[int, ...]) -> torch.Tensor:
            return torch.stack([_pad(t, length, dims) for t in tensors]).to(mask.device)

        logits = [r["logits"] for r in rows]
        return SimpleNamespace(
            logits=stack(logits, (0,) if logits[0].dim() == 2 else ()),
            hidden_states={l: stack([r["hidden"][l] for r in rows], (0,)) for l in self.hidden},
            attentions={l: stack([r["attention"][l] for r in rows], (1, 2)) for l in self.attention})


def _pad(t: torch.Tensor, length: int, dims: tuple[int, ...]) -> torch.Tensor:
    """`t` as float32, zero-padded at the end of each of `dims` to `length`."""
    pad = [0] * (2 * t.dim())
    for d in dims:
        pad[2 * (t.dim() - 1 - d) + 1] = length - t.shape[d]
    return F.pad(t.float(), pad)


def teach(teacher: TeacherCache, swap: WordSwap | None, inputs: dict[str, torch.Tensor],
          labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
    """The batch a student trains on, its labels and the teacher's outputs for it: the batch itself, or a perturbed
    copy (`swap`), which keeps no hard label and is labelled by a fresh teacher pass (not cached: seen once)."""
    perturbed = swap.maybe(inputs) if swap else None
    if perturbed is None:
        return inputs, labels, teacher(inputs)
    return perturbed, torch.full_like(labels, IGNORE), teacher.forward(perturbed)


class DistillLoss:
    """The weighted sum of the recipe's loss terms, with the signature compress.core.train expects."""

    def __init__(self, cfg: LossConfig, teacher, student, cache: dict[bytes, dict[str, Any]] | None = None,
                 swap: WordSwap | None = None):
        """`cache`: where the teacher's outputs are kept (TeacherCache); None runs the teacher on every batch.
        `swap`: perturbs a share of the batches (augment)."""
        self.swap = swap
        ls, lt = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        self.layer_map = cfg.layer_map or default_layer_map(ls, lt)
        bad = {s: t for s, t in self.layer_map.items() if not (0 <= s <= ls and 0 <= t <= lt)}
        if bad:
            raise CompressError(f"loss.layer_map: {bad} out of range (student 0..{ls}, teacher 0..{lt})")
        hs, ht = student.config.hidden_size, teacher.config.hidden_size
        self.projections = torch.nn.ModuleDict(
            {str(s): torch.nn.Linear(hs, ht) for s in self.layer_map} if cfg.hidden and hs != ht else {})
        weights = {n: getattr(cfg, n) for n in LOSSES if getattr(cfg, n) > 0}
        if not weights:
            raise CompressError("loss: every weight is 0; set at least one of kl, ce, hidden, attention")
        pairs = {}
        if cfg.attention:  # SDPA kernels do not return attention maps
            for m in (teacher, student):
                m.set_attn_implementation("eager")
            pairs = head_pairs(self.layer_map, student, teacher)
        self.terms = {n: (w, LOSSES[n](cfg, self.layer_map, self.projections, pairs)) for n, w in weights.items()}
        self.flags = {flag: True for _, term in self.terms.values() for flag in term.needs}
        self.teacher = TeacherCache(teacher.eval().requires_grad_(False), self.flags, self.layer_map, cache)

    def __call__(self, student, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        inputs, labels, t = teach(self.teacher, self.swap, inputs, labels)
        s = student(**inputs, **self.flags)
        mask = inputs["attention_mask"]
        return sum(w * term(s, t, labels, mask) for w, term in self.terms.values())


def read_unlabeled(source: Path | str | None, ctx: Context, step: str) -> list[Example]:
    """Extra text for the soft losses. `data` means the source's own unlabeled text; a source that has none (a
    user's file, bbc_news) has its training texts, which every distillation reads already: nothing is added, and
    the log says so (a recipe written for rotten_tomatoes then runs unchanged on the user's data)."""
    if source is None:
        return []
    if source == "data":
        if not ctx.data.unlabeled:
            ctx.log.info("%s: unlabeled: 'data': %s carries no unlabeled text of its own, so distillation reads its "
                         "%d training texts only", step, ctx.data.source, len(ctx.data.train))
        lines = ctx.data.unlabeled
    else:
        lines = [l.strip() for l in Path(source).read_text(encoding="utf-8", errors="replace").splitlines()]
    return [ctx.task.unlabeled(l) for l in lines if l.strip()]


class DistillMetrics(Metrics):
    """What the report reads of a distillation: the student's dev score before and after (the task's `metric`)."""

    metric: str = "accuracy"
    teacher: str | None = None
    student: str = "?"  # the student's kind: parent, layer_drop, albert, ...
    dev_score_before: float | None = None  # None: a manifest from before the figure was kept
    best_dev_score: float | None = None


def distill_section(steps: list[Ran], measured: Measured) -> list[Section]:
    """Each distilled model beside where it started: the dev score before and after training (from the stage), and
    on the test split, where the student was the stage's input itself, that input's score on the same back end."""
    lines = []
    for step in steps:
        m = step.metrics
        if m.dev_score_before is None:
            continue
        name = measured.label(m.metric)
        line = (f"{step.name} (student: {m.student} of {step.parent}; teacher: {m.teacher}): "
                f"dev {name} {m.dev_score_before:.4f} before, {m.best_dev_score:.4f} after")
        backend = next((b for n, b in measured.scores if n == step.name), None)
        if backend:
            before = measured.scores.get((step.parent, backend)) if m.student == "parent" else None
            teacher = measured.scores.get((m.teacher, backend))
            line += (f"; test {name} on {backend}: " + (f"{before:.4f} before, " if before is not None else "")
                     + f"{measured.scores[(step.name, backend)]:.4f} after"
                     + (f" (teacher {teacher:.4f})" if teacher is not None else ""))
        lines.append(line)
    return [Section(title="Distillation: before and after", lines=lines)] if lines else []


@register(DistillConfig, accepts=("hf-checkpoint",), produces="hf-checkpoint", metrics=DistillMetrics,
          section=distill_section)
def distill(cfg: DistillConfig, parent: Artifact, ctx: Context, out: Path) -> StageResult:
    from transformers import AutoTokenizer

    labels, allow_pickle = ctx.data.labels, ctx.allow_pickle
    teacher_art = ctx.artifacts[cfg.teacher] if cfg.teacher else parent
    tokenizer = AutoTokenizer.from_pretrained(parent.path)
    if AutoTokenizer.from_pretrained(teacher_art.path).get_vocab() != tokenizer.get_vocab():
        raise CompressError(f"{cfg.name}: teacher {teacher_art.name!r} and input {parent.name!r} use different "
                            "vocabularies; distillation feeds both the same token ids")
    teacher = load_classifier(teacher_art.path, labels, allow_pickle, ctx.task)
    extra = read_unlabeled(cfg.unlabeled, ctx, cfg.name)
    parent_model = load_classifier(parent.path, labels, allow_pickle, ctx.task)
    row_counts = lambda: sum(  # noqa: E731  (apart: unlabeled lines carry no text pair)
        embedding_row_counts(encode(tokenizer, part, ctx.max_length), parent_model.config)
        for part in (ctx.data.train, extra) if part)
    student, built = build_student(cfg.student, parent_model, row_counts)
    sharing = GradualSharing.of(student)
    shared = ctx.teacher_outputs.setdefault(teacher_art.hash, {}) if ctx.teacher_outputs is not None else {}
    swap = WordSwap(cfg.augment, tokenizer, teacher, ctx.seed) if cfg.augment else None
    loss = DistillLoss(cfg.loss, teacher, student, shared if cfg.cache_teacher else None, swap)
    dev = evaluate(TorchRuntime(student.eval()).run, tokenizer, ctx.data.dev, labels, ctx.max_length,
                   ctx.eval_batch_size, desc=f"{cfg.name} dev")
    before = dev["score"]
    ctx.log.info("%s: student %s%s; dev %s before distillation %.4f", cfg.name, type(student).__name__,
                 f", shared gradually over {sharing.anneal:.0%} of training" if sharing else "", dev["metric"], before)
    start = time.perf_counter()
    result = train(student, tokenizer, cfg, ctx, cfg.name, loss_fn=loss, extra=loss.projections or None,
                   train_examples=ctx.data.train + extra if extra else None, on_step=sharing)
    if sharing:
        student = sharing.shared_model(student)
    ctx.log.info("%s: %s parameters (teacher %s)", cfg.name, parameter_split(student),
                 parameter_split(teacher)["total"])
    save_checkpoint(student, tokenizer, out)
    return StageResult("hf-checkpoint", {"model": "model.safetensors"}, {
        **result, "train_seconds": round(time.perf_counter() - start, 1), "teacher": teacher_art.name,
        "dev_score_before": before, "student": cfg.student if isinstance(cfg.student, str) else
        next(iter(cfg.student.model_dump())), "student_parameters": parameter_split(student),
        "teacher_parameters": parameter_split(teacher), "unlabeled_examples": len(extra), **built,
    })
