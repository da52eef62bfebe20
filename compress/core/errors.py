"""The two exceptions that mean "not a bug", and the one place that turns them into exit codes."""
from __future__ import annotations

import sys
from typing import Callable


class CompressError(Exception):
    """Bad recipe, data file, checkpoint or argument. The message names the culprit. Exit code 2.

    Anything else that escapes is a bug in compress and keeps its traceback.
    """


class StageFailed(Exception):
    """A stage ran but its result is not acceptable (e.g. ONNX parity beyond tolerance). Exit code 1.

    `metrics`: what the stage measured before it gave up (a search's candidates), for the report."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


class StepUnavailable(Exception):
    """A step this installation cannot run: an optional package is missing or cannot be imported (Optimum, for the
    reference row). Not bad input and not a failed result: the run goes on without the step and the steps built on
    it, and their benchmark rows read "not measured" with this message."""


def exit_code(body: Callable[[], int]) -> int:
    """Run a command-line body; bad input prints `error: ...` and gives 2, a failed stage `stage failed: ...` and 1.
    Every CLI of the project goes through here, so they all answer bad input the same way."""
    try:
        return body()
    except CompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"stage failed: {e}", file=sys.stderr)
        return 1
