"""Progress bars with ETA that stay readable in CI logs (no carriage-return spam when not a TTY)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, mininterval=0.5 if interactive else 15.0, dynamic_ncols=True,
                leave=interactive)
