"""Data sources and splits: deterministic, grouped, and loud about bad files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from compress.core.data import load_dataset, split_indices
from compress.core.errors import CompressError
from compress.core.data import DataConfig


def test_split_is_seeded_and_deterministic():
    a = split_indices(100, None, 0.1, 0.2, seed=3)
    b = split_indices(100, None, 0.1, 0.2, seed=3)
    c = split_indices(100, None, 0.1, 0.2, seed=4)
    assert all((a[s] == b[s]).all() for s in a)
    assert not (a["test"] == c["test"]).all()
    assert sorted(np.concatenate(list(a.values()))) == list(range(100))
    assert (len(a["train"]), len(a["dev"]), len(a["test"])) == (70, 10, 20)


def test_groups_never_straddle_splits():
    groups = np.array([f"g{i % 17}" for i in range(300)])
    parts = split_indices(300, groups, 0.1, 0.2, seed=0)
    seen = [set(groups[parts[s]]) for s in ("train", "dev", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_user_csv_with_groups_and_labels(tiny_csv):
    ds = load_dataset(DataConfig(source=str(tiny_csv), split={"group_column": "movie"}), seed=0)
    assert ds.labels == ["neg", "pos"]
    assert len(ds.train) + len(ds.dev) + len(ds.test) == 240
    assert load_dataset(DataConfig(source=str(tiny_csv), split={"group_column": "movie"}), seed=0).test == ds.test


def test_jsonl_and_text_pairs(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "y": i % 2} for i in range(50)]
    path = tmp_path / "pairs.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    ds = load_dataset(DataConfig(source=str(path), text_column="q", text_pair_column="a", label_column="y"), seed=0)
    assert ds.labels == ["0", "1"] and ds.train[0].text_pair.startswith("answer")


@pytest.mark.parametrize("column", ["text_column", "label_column"])
def test_missing_column_names_file_and_column(tiny_csv, column):
    with pytest.raises(CompressError, match=rf"{tiny_csv.name}: no column 'nope'"):
        load_dataset(DataConfig(source=str(tiny_csv), **{column: "nope"}), seed=0)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(CompressError, match="empty.csv"):
        load_dataset(DataConfig(source=str(path)), seed=0)


def test_label_unseen_in_training(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b", "g": f"g{i % 10}"} for i in range(40)]
    rows += [{"text": "odd", "label": "zebra", "g": "zebra-only"}]
    groups = np.array([r["g"] for r in rows])
    # a seed that puts the zebra group outside train
    seed = next(s for s in range(100) if len(rows) - 1 not in split_indices(len(rows), groups, 0.1, 0.2, s)["train"])
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(CompressError, match=r"d.csv: column 'label' has labels in (dev|test) not seen in train: "
                                            r"\['zebra'\]"):
        load_dataset(DataConfig(source=str(path), split={"group_column": "g"}), seed=seed)


def test_builtin_rotten_tomatoes_split_by_movie():
    ds = load_dataset(DataConfig(source="rotten_tomatoes"), seed=0)
    assert ds.labels == ["fresh", "rotten"]
    assert len(ds.train) + len(ds.dev) + len(ds.test) == 12808
    train_texts = {e.text for e in ds.train}
    assert len(train_texts & {e.text for e in ds.test}) < 0.01 * len(ds.test)  # only snippets quoted for two films


def test_rotten_tomatoes_plots_are_unlabeled_text_from_training_movies_only():
    from compress.core.data import _rotten_tomatoes_csv, _rotten_tomatoes_plots

    ds = load_dataset(DataConfig(source="rotten_tomatoes"), seed=0)
    assert len(ds.unlabeled) > len(_rotten_tomatoes_csv().query("category == 'plot'"))  # split into sentences
    reviews, plots = _rotten_tomatoes_csv().query("category != 'plot'"), _rotten_tomatoes_plots()
    only_in = lambda split: set(reviews[reviews["text"].isin({e.text for e in split})]["movie_name"])
    held_out = (only_in(ds.dev) | only_in(ds.test)) - only_in(ds.train)
    own = plots.drop_duplicates("text", keep=False)  # sentences that belong to one movie alone
    kept = set(ds.unlabeled)
    assert held_out and not own[own["movie_name"].isin(held_out)]["text"].isin(kept).any()
    assert own[~own["movie_name"].isin(held_out)]["text"].isin(kept).mean() > 0.9


def test_builtin_bbc_news():
    ds = load_dataset(DataConfig(source="bbc_news"), seed=0)
    assert ds.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(ds.train) + len(ds.dev) + len(ds.test) == 2225
