"""The one exception type that means "the user's input is wrong" (exit code 2)."""


class CompressError(Exception):
    """Bad recipe, data file, checkpoint or argument. The message names the culprit.

    Anything else that escapes is a bug in compress and keeps its traceback.
    """


class StageFailed(Exception):
    """A stage ran but its result is not acceptable (e.g. ONNX parity beyond tolerance). Exit code 1."""
