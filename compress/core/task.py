"""What differs between tasks, in one place: one small class per task, chosen once (from the recipe, a checkpoint's
config or a model's class) and asked wherever the code would otherwise branch on the task.

A task says which head transformers puts on the encoder, how its labels line up with the tokens, which axes its
output has, how outputs become predictions and the score (with the score's name), and which rows of two runtimes'
outputs parity compares. Another task (extractive QA) is one more class here. The edge runner ships standalone and
keeps its own small mapping (export/edge_runner.SCORERS); a test holds it to these classes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from compress.core.errors import CompressError

IGNORE = -100  # a position with no label: torch's cross_entropy ignore_index, as Hugging Face token heads use
OUTSIDE = "O"  # the IOB tag of a word in no entity: what a word cut off by max_length is predicted as
RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]
Text = str | list[str]  # what the tokenizer reads of an example: a text, or (token classification) its words


@dataclass(frozen=True)
class Example:
    """One labelled input. Sequence classification: a text (and pair) with one class id. Token classification:
    pre-split `words` with one tag id per word in `label`, and `text` their words joined by spaces."""

    text: str
    label: int | tuple[int, ...]
    text_pair: str | None = None
    words: tuple[str, ...] | None = None


class Task(ABC):
    """One task's answers to what data loading, training, export, parity, scoring and the edge bundle ask."""

    name: ClassVar[str]  # the recipe's `task:`
    head: ClassVar[str]  # transformers' head class suffix (BertForTokenClassification)
    metric: ClassVar[str]  # the score's key in a metrics dict
    metric_label: ClassVar[str]  # the score as the report's readers see it
    per_class: ClassVar[str]  # what a metrics dict's per_class is keyed by
    by_class: ClassVar[str | None]  # the title of the report's table of per-class scores across rows, if any
    formats: ClassVar[tuple[str, ...]]  # user-file formats that hold this task's labels
    columns: ClassVar[dict[str, str]] = {}  # DataConfig fields whose default differs for this task
    output_axes: ClassVar[dict[int, str]]  # the logits' dynamic axes in an ONNX export
    pairs: ClassVar[bool]  # whether an example may carry a text pair
    labels_where: ClassVar[str]  # where the labels are, as messages say it ({} is data.label_column)
    # The names a benchmark row gives figures whose own name means something else there (precision: fp32, int8).
    row_names: ClassVar[dict[str, str]] = {}

    def __reduce__(self):
        """Unpickled (a benchmark row's spawned process gets the Dataset) as the registry's one instance."""
        return task_named, (self.name,)

    def auto_class(self):
        """transformers' Auto class for the task's head."""
        import transformers

        return getattr(transformers, f"AutoModel{self.head}")

    @classmethod
    def headline(cls, figures: dict) -> dict:
        """A metrics dict: the score's name (key and label) and value, which dev selection, the gate and the
        report read, before the task's own figures."""
        return {"metric": cls.metric, "metric_label": cls.metric_label, "score": figures[cls.metric]} | figures

    # data: a source's rows (role names text, label, text_pair) -> examples
    @abstractmethod
    def rows(self, rows: pd.DataFrame, origin: str) -> pd.DataFrame:
        """The rows with their labels checked and as strings."""

    @abstractmethod
    def label_set(self, labels: pd.Series) -> set[str]:
        """Every label a column of row labels holds."""

    @abstractmethod
    def example(self, text, label, pair, label_id: dict[str, int]) -> Example:
        """A row as an example, its labels as ids."""

    @abstractmethod
    def unlabeled(self, line: str) -> Example:
        """A line of extra text as an example without labels (IGNORE), for distillation's soft losses."""

    @abstractmethod
    def texts(self, examples: list[Example]) -> list[Text]:
        """What the tokenizer reads of the examples, in the form the model reads it."""

    # model inputs and outputs
    @abstractmethod
    def encode(self, tokenizer, examples: list[Example], max_length: int,
               pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """Token ids as int64 numpy arrays, the common currency of every runtime."""

    @abstractmethod
    def encode_labeled(self, tokenizer, examples: list[Example], max_length: int,
                       pad_to_max: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The inputs and the training targets, aligned with the logits."""

    @abstractmethod
    def decisions(self, logits: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """A row of logits per decision the model makes: parity compares two runtimes row by row."""

    @abstractmethod
    def predict(self, run: RunBatch, tokenizer, examples: list[Example], max_length: int, names: list[str]) -> list:
        """What the model predicts for each example, in the form `score` reads."""

    @abstractmethod
    def score(self, examples: list[Example], predicted: list, names: list[str], parts: bool) -> dict:
        """The task's metrics; `parts`: also each example's share of the score (compress.core.evaluate.score_of)."""

    @abstractmethod
    def chance(self, metrics: dict) -> tuple[float, str] | None:
        """The score a model with no skill gets on what `metrics` was measured on, and how; None when the
        metrics cannot say."""

    @abstractmethod
    def device_row(self, tokenizer, example: Example, max_length: int) -> tuple[dict[str, np.ndarray], dict]:
        """An example's token ids (a batch of one) and what else the edge runner, which has no tokenizer, needs
        to score it."""

    def row_figures(self, metrics: dict) -> dict:
        """What a benchmark row keeps of the metrics, under row names."""
        return {self.row_names.get(k, k): v for k, v in metrics.items() if k != "examples"}


def classification_metrics(labels: np.ndarray, pred: np.ndarray, names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class figures of one class id per example."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    return SequenceClassification.headline({
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "examples": int(len(labels)),
    })


class SequenceClassification(Task):
    """One label per text or text pair; scored by accuracy."""

    name = "sequence-classification"
    head = "ForSequenceClassification"
    metric, metric_label = "accuracy", "accuracy"
    per_class, by_class = "class", None
    formats = ("csv", "tsv", "jsonl", "hf-disk")
    output_axes = {0: "batch"}
    pairs = True
    labels_where = "column {!r}"

    def rows(self, rows: pd.DataFrame, origin: str) -> pd.DataFrame:
        return rows.assign(label=rows["label"].astype(str))

    def label_set(self, labels: pd.Series) -> set[str]:
        return set(labels)

    def example(self, text, label, pair, label_id: dict[str, int]) -> Example:
        return Example(str(text), label_id[label], pair)

    def unlabeled(self, line: str) -> Example:
        return Example(line, IGNORE)

    def texts(self, examples: list[Example]) -> list[Text]:
        return [e.text for e in examples] + [e.text_pair for e in examples if e.text_pair is not None]

    def encode(self, tokenizer, examples: list[Example], max_length: int,
               pad_to_max: bool = False) -> dict[str, np.ndarray]:
        pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
        enc = tokenizer([e.text for e in examples], pairs, truncation=True, max_length=max_length,
                        padding="max_length" if pad_to_max else "longest", return_tensors="np")
        return {k: v.astype(np.int64) for k, v in enc.items()}

    def encode_labeled(self, tokenizer, examples: list[Example], max_length: int,
                       pad_to_max: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self.encode(tokenizer, examples, max_length, pad_to_max), np.array([e.label for e in examples])

    def decisions(self, logits: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return logits

    def predict(self, run: RunBatch, tokenizer, examples: list[Example], max_length: int, names: list[str]) -> list:
        return run(self.encode(tokenizer, examples, max_length)).argmax(-1).tolist()

    def score(self, examples: list[Example], predicted: list, names: list[str], parts: bool) -> dict:
        labels, pred = np.array([e.label for e in examples]), np.array(predicted)
        correct = {"parts": (pred == labels).astype(float)[:, None]} if parts else {}
        return classification_metrics(labels, pred, names) | correct

    def chance(self, metrics: dict) -> tuple[float, str] | None:
        """The share of the most frequent class: a model that answers one class for everything gets at most that,
        however imbalanced the labels. None without per-class supports (rows measured elsewhere and ingested)."""
        support = [c["support"] for c in (metrics.get("per_class") or {}).values()]
        if not sum(support):
            return None
        return max(support) / sum(support), "always answering its most frequent class"

    def device_row(self, tokenizer, example: Example, max_length: int) -> tuple[dict[str, np.ndarray], dict]:
        return self.encode(tokenizer, [example], max_length), {}


def encode_words(tokenizer, examples: list[Example], max_length: int,
                 pad_to_max: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Token ids of pre-split words, and at each position the index of the word whose first piece it is (-1 on
    later pieces, specials and padding): where a word's tag is trained and read."""
    if not tokenizer.is_fast:
        raise CompressError(f"token classification needs a fast tokenizer (its word_ids map pieces to words); "
                            f"{type(tokenizer).__name__} is not one: save the model with a tokenizer.json")
    enc = tokenizer([list(e.words) for e in examples], is_split_into_words=True, truncation=True,
                    max_length=max_length, padding="max_length" if pad_to_max else "longest", return_tensors="np")
    first = np.full(enc["input_ids"].shape, -1, dtype=np.int64)
    for i in range(len(examples)):
        previous = None
        for j, word in enumerate(enc.word_ids(i)):
            if word is not None and word != previous:
                first[i, j] = word
            previous = word
    return {k: v.astype(np.int64) for k, v in enc.items()}, first


def word_predictions(logits: np.ndarray, first: np.ndarray, examples: list[Example], outside: int) -> list[list[int]]:
    """A tag id per word, read at the word's first piece; words past max_length get `outside` (a miss, not a
    word left out of the score)."""
    tags = [[outside] * len(e.words) for e in examples]
    for i, j in zip(*np.nonzero(first >= 0)):
        tags[i][first[i, j]] = int(logits[i, j].argmax())
    return tags


def outside_id(names: list[str]) -> int:
    """The id of the tag a word cut off by max_length is predicted as (a miss, as evaluation counts it)."""
    return names.index(OUTSIDE) if OUTSIDE in names else 0


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level scores as CoNLL's conlleval (seqeval's default mode): an entity counts only when its type
    and both boundaries match. `per_class` is per entity type."""
    from seqeval.metrics import accuracy_score as token_accuracy
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    types = {k: v for k, v in report.items() if not k.endswith(" avg")}
    return TokenClassification.headline({
        "entity_f1": float(micro["f1-score"]), "precision": float(micro["precision"]),
        "recall": float(micro["recall"]), "macro_f1": float(macro["f1-score"]),
        "token_accuracy": float(token_accuracy(gold, predicted)),
        "per_class": {t: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                          "f1": float(v["f1-score"]), "support": int(v["support"])} for t, v in sorted(types.items())},
        "examples": len(gold),
    })


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """(true positives, false positives, false negatives) of entities per sentence: the parts micro-F1 sums."""
    from seqeval.metrics.sequence_labeling import get_entities

    rows = []
    for g, p in zip(gold, predicted):
        true, found = set(get_entities(g)), set(get_entities(p))
        rows.append((len(true & found), len(found - true), len(true - found)))
    return np.array(rows, dtype=float).reshape(-1, 3)


class TokenClassification(Task):
    """One tag per word (NER); scored by entity-level micro-F1. Tags are trained and read at each word's first
    piece, as Hugging Face's token-classification recipes do."""

    name = "token-classification"
    head = "ForTokenClassification"
    metric, metric_label = "entity_f1", "entity F1"
    per_class = "entity type"
    by_class = "Entity F1 by type (test split, entity level: type and both boundaries must match)"
    formats = ("conll", "jsonl")
    columns = {"text_column": "tokens", "label_column": "tags"}
    output_axes = {0: "batch", 1: "sequence"}  # a tag per position: the graph must take any length
    pairs = False
    labels_where = "tags"
    row_names = {"precision": "entity_precision", "recall": "entity_recall"}

    def rows(self, rows: pd.DataFrame, origin: str) -> pd.DataFrame:
        """A list of words and a list of as many string tags. Anything else is an error naming the row, not a
        row to drop: a misaligned tag list means the file is not what the recipe says it is."""
        for i, (words, tags) in enumerate(zip(rows["text"], rows["label"])):
            if not (isinstance(words, list) and isinstance(tags, list)):
                raise CompressError(f"{origin}: row {i}: token classification needs lists of words and tags, got "
                                    f"{type(words).__name__} and {type(tags).__name__} ({str(words)[:60]!r})")
            if len(words) != len(tags):
                raise CompressError(f"{origin}: row {i}: {len(words)} words but {len(tags)} tags ({words[:8]!r})")
        return rows.assign(text=rows["text"].map(lambda w: [str(x) for x in w]),
                           label=rows["label"].map(lambda t: [str(x) for x in t]))

    def label_set(self, labels: pd.Series) -> set[str]:
        return set(labels.explode())

    def example(self, text, label, pair, label_id: dict[str, int]) -> Example:
        return Example(" ".join(text), tuple(label_id[t] for t in label), None, tuple(text))

    def unlabeled(self, line: str) -> Example:
        """Its whitespace-separated words, each tagged IGNORE (the soft losses read every token, the hard one
        none)."""
        words = tuple(line.split())
        return Example(" ".join(words), (IGNORE,) * len(words), None, words)

    def texts(self, examples: list[Example]) -> list[Text]:
        return [list(e.words) for e in examples]

    def encode(self, tokenizer, examples: list[Example], max_length: int,
               pad_to_max: bool = False) -> dict[str, np.ndarray]:
        return encode_words(tokenizer, examples, max_length, pad_to_max)[0]

    def encode_labeled(self, tokenizer, examples: list[Example], max_length: int,
                       pad_to_max: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per position the tag of the word it starts: labels on first pieces, IGNORE on the rest."""
        inputs, first = encode_words(tokenizer, examples, max_length, pad_to_max)
        labels = np.full(first.shape, IGNORE, dtype=np.int64)
        for i, e in enumerate(examples):
            starts = first[i] >= 0
            labels[i, starts] = np.asarray(e.label, dtype=np.int64)[first[i, starts]]
        return inputs, labels

    def decisions(self, logits: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """A row per real token, in order."""
        return logits[inputs["attention_mask"].astype(bool)]

    def predict(self, run: RunBatch, tokenizer, examples: list[Example], max_length: int, names: list[str]) -> list:
        inputs, first = encode_words(tokenizer, examples, max_length)
        return word_predictions(run(inputs), first, examples, outside_id(names))

    def score(self, examples: list[Example], predicted: list, names: list[str], parts: bool) -> dict:
        gold = [[names[t] for t in e.label] for e in examples]
        tags = [[names[t] for t in p] for p in predicted]
        return entity_metrics(gold, tags) | ({"parts": entity_counts(gold, tags)} if parts else {})

    def chance(self, metrics: dict) -> tuple[float, str] | None:
        """0: tagging every word O finds no entity."""
        return 0.0, "finding no entity"

    def device_row(self, tokenizer, example: Example, max_length: int) -> tuple[dict[str, np.ndarray], dict]:
        """Also its words and, per position, the index of the word whose first piece it is (-1 elsewhere): where
        the runner reads each word's tag."""
        ids, first = encode_words(tokenizer, [example], max_length)
        return ids, {"words": list(example.words), "first": first[0].tolist()}


TASKS: dict[str, Task] = {t.name: t for t in (SequenceClassification(), TokenClassification())}
DEFAULT_TASK = TASKS[SequenceClassification.name]  # a recipe's without `task:`, and a bare encoder's


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise CompressError(f"unknown task {name!r} (tasks: {', '.join(TASKS)})")
    return TASKS[name]


def task_headed(class_names: list[str]) -> Task:
    """The task of the first head class among `class_names` (BertForTokenClassification: token classification);
    no head (a bare encoder): the default task."""
    return next((t for t in TASKS.values() if any(n.endswith(t.head) for n in class_names)), DEFAULT_TASK)


def task_for(config) -> Task:
    """The task a checkpoint's head does, read off its config's architectures (a transformers config, or
    config.json as a dict)."""
    names = config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)
    return task_headed(names or [])


def model_task(model) -> Task:
    """The task of a model in memory, read off its class: its config's `architectures` still name the checkpoint
    it was loaded from, whose head may have been another (finetune puts a token head on a bare encoder)."""
    return task_headed([type(model).__name__])


def scored_by(metric: str) -> Task | None:
    """The task whose score `metric` names (a metrics dict or a report row carries the name, not the task); None
    for a name no task scores by."""
    return next((t for t in TASKS.values() if t.metric == metric), None)


def example_task(examples: list[Example]) -> Task:
    """The task a list of examples was made for (token examples carry their words), for the helpers below that
    get examples alone."""
    tagged = bool(examples) and examples[0].words is not None
    return TASKS[TokenClassification.name] if tagged else DEFAULT_TASK


def encode(tokenizer, examples: list[Example], max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Token ids as int64 numpy arrays, the common currency of every runtime (Task.encode)."""
    return example_task(examples).encode(tokenizer, examples, max_length, pad_to_max)


def encode_labeled(tokenizer, examples: list[Example], max_length: int,
                   pad_to_max: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs and training targets (Task.encode_labeled)."""
    return example_task(examples).encode_labeled(tokenizer, examples, max_length, pad_to_max)


def batches(tokenizer, examples: list[Example], max_length: int, batch_size: int):
    """(inputs, targets) of consecutive batches."""
    for i in range(0, len(examples), batch_size):
        yield encode_labeled(tokenizer, examples[i : i + batch_size], max_length)
