"""Calibration data for INT8: one seeded sample of the training split, and ONNX Runtime's reader over it.

Static PTQ, QAT's observer warm-up and TensorRT's INT8 network all calibrate on this, so the three see the same
kind of examples and none takes the first rows of a file that may be sorted by label or source.
"""
from __future__ import annotations

import numpy as np

from compress.core.task import Example, encode


def calibration_examples(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded random sample of `n` examples (all of them when there are fewer)."""
    order = np.random.RandomState(seed).permutation(len(examples))[:n]
    return [examples[i] for i in order]


def calibration_reader(tokenizer, examples: list[Example], max_length: int, input_names: list[str]):
    """ORT's CalibrationDataReader, one example per feed padded to `max_length`: the histogram calibrators
    (entropy, percentile) stack every feed's activations, so all must have one shape."""
    from onnxruntime.quantization import CalibrationDataReader

    feeds = [{k: v for k, v in encode(tokenizer, [e], max_length, pad_to_max=True).items() if k in input_names}
             for e in examples]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self) -> dict | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return Reader()


def onnx_input_names(path) -> list[str]:
    """The inputs an ONNX model takes (token_type_ids is absent from some exports)."""
    import onnxruntime as ort

    return [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]
