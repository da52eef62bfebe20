"""The recipe: one YAML file, validated completely before any work starts.

The recipe's `steps` schema is the union of the registered step configs (compress.stages.registry imports every
stage, and importing a stage registers it).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from benchmarks.suite import BenchmarkConfig
from compress.core.config import Architecture, RecipeShapes, Strict
from compress.core.data import SOURCE_TAGS, DataConfig
from compress.core.errors import CompressError
from compress.core.models import ModelConfig, tokenizer_kind
from compress.core.size import MACS_SEQUENCE_LENGTH
from compress.core.stage import STAGES, Context, step_classes
from compress.core.task import DEFAULT_TASK, TASKS, task_named
from compress.gate import GateConfig
from compress.stages import registry  # noqa: F401  (every stage, registered)

Step = Annotated[Union[tuple(spec.config for spec in STAGES.values())], Field(discriminator="type")]
# Union tags pydantic puts in an error's path (steps[0].quantize.static.calibration): stage types, quantize methods,
# the kinds of data.source.
TAGS = set(STAGES) | {c.model_fields["method"].default for spec in STAGES.values() for c in step_classes(spec.config)
                      if "method" in c.model_fields} | set(SOURCE_TAGS)


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds splits, sampling and training (NumPy takes "
                      "0 to 2**32 - 1).")
    task: Literal[tuple(TASKS)] = Field(DEFAULT_TASK.name, description="What the model does: one label per text (or text pair), "
                                 "or one tag per word (NER); the data must hold that kind of labels.")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    steps: list[Step] = Field(min_length=1)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gate: GateConfig | None = None

    @model_validator(mode="after")
    def _steps_connect(self) -> Recipe:
        kinds: dict[str, str] = {}
        source = Architecture.of(self.model.source_config(), tokenizer_kind(self.model.folder()))
        architectures = {None: source}  # by step name; None: the source
        previous: str | None = None
        shapes = self.shapes()
        for i, step in enumerate(self.steps):
            where = f"steps[{i}] ({step.name})"
            if step.name in kinds or step.name == "source":
                raise ValueError(f"{where}: step name {step.name!r} is taken (duplicate, or the reserved 'source')")
            parent = None if step.from_ == "source" else step.from_ or previous
            spec = STAGES[step.type]
            parent_kind = "hf-checkpoint" if parent is None else kinds.get(parent)
            if parent is not None and parent_kind is None:
                raise ValueError(f"{where}.from: {parent!r} is not an earlier step")
            if parent_kind not in spec.accepts:
                raise ValueError(f"{where}: a {step.type} step takes {spec.accepts}, but {parent!r} gives {parent_kind}")
            for field, ref in step.references().items():
                if kinds.get(ref) != "hf-checkpoint":
                    raise ValueError(f"{where}.{field}: {ref!r} is not an earlier hf-checkpoint step")
            try:
                step.check_shapes(shapes)
                step.check_architecture(architectures[parent])
                architectures[step.name] = step.output_architecture(architectures[parent])
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            kinds[step.name] = spec.produces
            previous = step.name
        measured = self.benchmark.artifacts
        for ref in measured or []:
            if ref not in kinds:
                raise ValueError(f"benchmark.artifacts: {ref!r} is not a step name")
        floored = list(self.gate.min_score) if self.gate and isinstance(self.gate.min_score, dict) else []
        if self.gate:
            for ref in [self.gate.baseline, *(self.gate.artifacts or []), *floored]:
                if ref is not None and ref not in kinds:
                    raise ValueError(f"gate: {ref!r} is not a step name")
        if measured is not None:
            needed = [self.baseline_step(), *((self.gate and self.gate.artifacts) or []), *floored]
            left_out = [ref for ref in needed if ref not in measured]
            if left_out:
                raise ValueError(f"benchmark.artifacts leaves out {left_out}: the report's baseline and the gate's "
                                 f"artifacts need a measured score")
        return self

    @model_validator(mode="after")
    def _data_fits_the_task(self) -> Recipe:
        held = self.data.builtin_task or self.task
        if held != self.task:
            raise ValueError(f"data.source {self.data.source!r} is {held} data; set task: {held}")
        if self.data.text_pair_column and not task_named(self.task).pairs:
            raise ValueError(f"data.text_pair_column: {self.task} tags one text's words, not a pair")
        return self

    @model_validator(mode="after")
    def _lengths_fit_the_source(self) -> Recipe:
        """The step that takes the source feeds it data.max_length, and the models made from it keep (vocab_prune:
        trim) its positions and are measured at the benchmark's lengths: a longer one would fail only mid-run."""
        positions = self.model.source_config().get("max_position_embeddings")
        for field, length in self.shapes().sequence_lengths.items():
            if positions is not None and length > positions:
                raise ValueError(f"{field} {length} is longer than the max_position_embeddings {positions} of "
                                 f"model.source {self.model.source!r}")
        return self

    def shapes(self) -> RecipeShapes:
        """The longest sequences and largest batches any model of this recipe will be fed, and by what."""
        fed = {"data.max_length": self.data.max_length,
               "benchmark.sequence_lengths": max(self.benchmark.sequence_lengths)}
        return RecipeShapes(
            sequence_lengths=fed,
            batch_sizes={"benchmark.batch_sizes": max(self.benchmark.batch_sizes),
                         "benchmark.eval_batch_size": self.benchmark.eval_batch_size},
            positions=fed | {"the report's MACs sequence length": MACS_SEQUENCE_LENGTH})

    def context(self, run_dir: Path, log: logging.Logger) -> Context:
        """What the stages of this recipe get to see of it."""
        return Context(run_dir, log, self.data, self.seed, self.benchmark.eval_batch_size, self.model.allow_pickle,
                       task=task_named(self.task), allow_chance=bool(self.gate and self.gate.allow_chance_baseline))

    def baseline_step(self) -> str:
        """The step every row is compared with: the gate's baseline, else the first step."""
        return (self.gate.baseline if self.gate else None) or self.steps[0].name

    def parent_of(self, index: int) -> str | None:
        """The input step's name; None means the model source (`from: source`, or the first step)."""
        step = self.steps[index]
        if step.from_ == "source":
            return None
        return step.from_ or (self.steps[index - 1].name if index else None)


def _describe(err: dict[str, Any]) -> str:
    # Discriminated unions put their tags in the path (steps[0].quantize.static.calibration); drop them.
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if p not in TAGS).lstrip(".")
    value = err.get("input")
    if err["type"] == "unknown_method":  # a step's variant: its input is the whole step, show the method alone
        value = value.get("method")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
    return f"{loc or '<recipe>'}: {err['msg']}{shown}"


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CompressError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    except OSError as e:
        raise CompressError(f"{path}: cannot read the recipe: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise CompressError(f"{path}: not valid YAML: {e}") from None
    return recipe_from(raw, str(path))


def recipe_from(raw: Any, where: str) -> Recipe:
    """A recipe from its parsed YAML (or a dict given in Python); `where` names it in errors."""
    if not isinstance(raw, dict):
        raise CompressError(f"{where}: a recipe is a mapping with at least `name` and `steps`")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = "\n".join(f"  {_describe(err)}" for err in e.errors())
        raise CompressError(f"{where}: invalid recipe\n{lines}") from None
