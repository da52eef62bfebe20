"""The recipe: one YAML file, validated completely before any work starts."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from compress.errors import CompressError
from compress.models import BUILTIN_MODELS, check_checkpoint_folder
from compress.stage import STAGES, Strict
from compress import stages  # noqa: F401  (fills STAGES)
from compress.data import BUILTIN_DATASETS
from runtimes import BACKENDS


class SplitConfig(Strict):
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    group_column: str | None = Field(None, description="Keep rows sharing this value in one split (user files).")


class DataConfig(Strict):
    source: str = Field("rotten_tomatoes", description=f"Built-in name {sorted(BUILTIN_DATASETS)} or a path.")
    format: Literal["auto", "csv", "tsv", "jsonl", "hf-disk"] = "auto"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = Field(64, ge=8, le=512)
    split: SplitConfig = SplitConfig()
    limit_train: int | None = Field(None, ge=1, description="Use only this many training examples (smoke runs).")
    limit_eval: int | None = Field(None, ge=1, description="Use only this many dev and test examples each.")

    @field_validator("source")
    @classmethod
    def _source_exists(cls, v: str) -> str:
        if v not in BUILTIN_DATASETS and not Path(v).exists():
            raise ValueError(f"data file not found: {v!r} (built-in names: {sorted(BUILTIN_DATASETS)})")
        return v


class ModelConfig(Strict):
    allow_pickle: bool = Field(False, description="Allow pytorch_model.bin (pickle) weights. Off: safetensors only.")
    source: str = Field("minilm", description=f"Built-in {sorted(BUILTIN_MODELS)} or a local checkpoint folder.")

    @field_validator("source")
    @classmethod
    def _checkpoint_usable(cls, v: str, info: ValidationInfo) -> str:
        if v not in BUILTIN_MODELS:
            check_checkpoint_folder(Path(v), info.data.get("allow_pickle", False))
        return v


class BenchmarkConfig(Strict):
    backends: list[str] = Field(
        ["torch-cpu", "ort-cpu", "torch-cuda", "torch-cuda-fp16", "ort-cuda", "ort-trt", "tensorrt"],
        description="Runtimes to try; each artifact is measured on those that accept its kind.",
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1]
    sequence_lengths: list[Annotated[int, Field(ge=8, le=512)]] = [128]
    threads: int = Field(2, ge=1)
    warmup: int = Field(10, ge=0)
    min_repeats: int = Field(30, ge=5)
    min_seconds: float = Field(3.0, ge=0, description="Measure each latency point at least this long (capped by "
                               "max_seconds): a shared machine's load swings over seconds.")
    max_seconds: float = Field(8.0, gt=0, description="Time budget per latency point.")
    eval_batch_size: int = Field(64, ge=1)
    artifacts: list[str] | None = Field(None, description="Steps whose artifacts are measured; default: all. "
                                        "Each row costs a process and a pass over the test split.")

    def measurement_settings(self) -> dict:
        """What a row's figures depend on (its cache key): which artifacts are measured is not among them."""
        return self.model_dump(exclude={"artifacts"})

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown back ends {unknown}; known: {sorted(BACKENDS)}")
        return v


class GateConfig(Strict):
    baseline: str | None = Field(None, description="Step whose accuracy is the reference; default: the first step.")
    max_accuracy_drop: float = Field(1.0, ge=0, description="Points of test accuracy an artifact may lose.")
    artifacts: list[str] | None = Field(None, description="Steps the gate applies to; default: all.")


Step = Annotated[Union[tuple(spec.config for spec in STAGES.values())], Field(discriminator="type")]


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    steps: list[Step] = Field(min_length=1)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gate: GateConfig | None = None

    @model_validator(mode="after")
    def _steps_connect(self) -> Recipe:
        kinds: dict[str, str] = {}
        previous: str | None = None
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
                step.check_recipe(self)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            kinds[step.name] = spec.produces
            previous = step.name
        measured = self.benchmark.artifacts
        for ref in measured or []:
            if ref not in kinds:
                raise ValueError(f"benchmark.artifacts: {ref!r} is not a step name")
        if self.gate:
            for ref in [self.gate.baseline, *(self.gate.artifacts or [])]:
                if ref is not None and ref not in kinds:
                    raise ValueError(f"gate: {ref!r} is not a step name")
        if measured is not None:
            needed = [self.baseline_step(), *((self.gate and self.gate.artifacts) or [])]
            left_out = [ref for ref in needed if ref not in measured]
            if left_out:
                raise ValueError(f"benchmark.artifacts leaves out {left_out}: the report's baseline and the gate's "
                                 f"artifacts need a measured accuracy")
        return self

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
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    # Discriminated unions put the tag in the path (steps[0].finetune.epochs); drop it.
    for t in STAGES:
        loc = loc.replace(f".{t}.", ".").replace(f".{t}", "")
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
    return f"{loc or '<recipe>'}: {err['msg']}{shown}"


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CompressError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise CompressError(f"{path}: a recipe is a mapping with at least `name` and `steps`")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = "\n".join(f"  {_describe(err)}" for err in e.errors())
        raise CompressError(f"{path}: invalid recipe\n{lines}") from None
