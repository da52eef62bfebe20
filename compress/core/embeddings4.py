"""4-bit storage for the INT8 embedding tables of an ONNX model, expanded back to INT8 when ONNX Runtime loads it.

Why: after vocabulary pruning the INT8 word table is still most of a pruned student's bytes (5.0 of 8.0 MB for
the default recipe's). ONNX Runtime's own 4-bit lookup (GatherBlockQuantized) halves it too, but its kernel took
0.37 ms a run where QEmbedLayerNormalization takes 0.10 (ORT 1.32, 1 thread). Here each table is stored as 4-bit
codes, two to a byte, and one FP16 scale per block of a row; a chain of standard ONNX ops turns them back into the
INT8 table, and ONNX Runtime's constant folding runs that chain once at load, so the graph it runs, its speed and
its memory are those of the 8-bit model: only the file shrinks. Codes are symmetric around the table's zero point,
so a zero row stays zero. Any opset from 13 reads it (ONNX's own 4-bit types need opset 21).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PACKED = "_4bit"  # the codes of table T are the initializer T + PACKED; its scales and the chain's constants
META = "_4bit/"   # are named T + META + what (quantization metadata, not parameters)
QEMBED_TABLES = {2: 13, 3: 14, 4: 15}  # QEmbedLayerNormalization: word, position, segment table -> zero point


def embedding_tables(model) -> dict[str, str]:
    """The 8-bit embedding tables of a dynamically quantized model, each with the name of its zero point ('' for
    none): QEmbedLayerNormalization's (BERT's fused embeddings) and those of a Gather whose output a
    DequantizeLinear reads (ONNX Runtime's quantized Gather: an unfused export, ALBERT's)."""
    initializers = {t.name for t in model.graph.initializer}
    tables: dict[str, str] = {}
    gathered = {}
    for node in model.graph.node:
        if node.op_type == "QEmbedLayerNormalization":
            tables |= {node.input[i]: node.input[z] for i, z in QEMBED_TABLES.items() if node.input[i]}
        elif node.op_type == "Gather" and node.input[0] in initializers:
            gathered[node.output[0]] = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.input[0] in gathered:
            tables[gathered[node.input[0]]] = node.input[2] if len(node.input) > 2 else ""
    return {t: zero_point for t, zero_point in tables.items() if t in initializers}


def pack_embeddings(path: Path, block_size: int) -> list[str]:
    """Rewrite `path` with every 8-bit embedding table stored in 4 bits, one scale per `block_size` values of a
    row. Returns the tables packed; raises ValueError when there is none, or a row's width is not a multiple of
    `block_size`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    tables = embedding_tables(model)
    if not tables:
        raise ValueError(f"{path} has no INT8 embedding table to store in 4 bits")
    stored = {t.name: t for t in model.graph.initializer}
    chains = []
    for name, zero_point_name in tables.items():
        table = numpy_helper.to_array(stored[name])
        if table.ndim != 2 or table.shape[1] % block_size:
            raise ValueError(f"{path}: embedding table {name} of shape {list(table.shape)}: its rows do not split "
                             f"into blocks of {block_size} (embedding_block_size)")
        zero_point = int(numpy_helper.to_array(stored[zero_point_name])) if zero_point_name else 0
        codes, scales = quantize_blocks(table, zero_point, block_size)
        model.graph.initializer.remove(stored[name])
        constants, nodes = expansion(name, table.shape, table.dtype, zero_point, block_size)
        model.graph.initializer.extend([numpy_helper.from_array(pack_pairs(codes), name + PACKED),
                                        numpy_helper.from_array(scales, name + META + "scale"),
                                        *(numpy_helper.from_array(v, k) for k, v in constants.items())])
        chains += nodes
    nodes = chains + list(model.graph.node)  # the chains' inputs are all initializers: first in topological order
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, path)
    return sorted(tables)


def quantize_blocks(table: np.ndarray, zero_point: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..15 (8 stands for the zero point) and FP16 scales, in INT8 steps, of each block of a row."""
    centred = table.astype(np.float32).reshape(table.shape[0], -1, block_size) - zero_point
    scales = (np.abs(centred).max(-1, keepdims=True) / 7).astype(np.float16)
    scales[scales == 0] = 1
    codes = np.clip(np.rint(centred / scales.astype(np.float32)), -8, 7) + 8
    return codes.astype(np.uint8).reshape(table.shape), scales


def pack_pairs(codes: np.ndarray) -> np.ndarray:
    """Two codes to a byte: the even column in the high half."""
    return codes[:, 0::2] * 16 + codes[:, 1::2]


def expansion(name: str, shape: tuple[int, int], dtype: np.dtype, zero_point: int,
              block_size: int) -> tuple[dict[str, np.ndarray], list]:
    """The constants and nodes that compute table `name` (8-bit, `shape`) from its codes and scales: unpack the
    halves, centre, scale, round onto the 8-bit grid. Standard ops with integer and float kernels on every
    execution provider's CPU fallback; all constant, so ONNX Runtime folds them at load."""
    from onnx import TensorProto
    from onnx.helper import make_node, np_dtype_to_tensor_dtype

    rows, width = shape
    limits = np.iinfo(dtype)
    k = lambda what: name + META + what  # noqa: E731
    constants = {k("16"): np.array(16, np.int32), k("8"): np.array(8, np.int32), k("last"): np.array([-1]),
                 k("blocks"): np.array([rows, width // block_size, block_size]), k("shape"): np.array([rows, width]),
                 k("zero"): np.array(zero_point, np.float32), k("low"): np.array(limits.min, np.float32),
                 k("high"): np.array(limits.max, np.float32)}
    steps = [
        ("Cast", [name + PACKED], "bytes", {"to": TensorProto.INT32}),
        ("Div", [k("bytes"), k("16")], "high_half", {}),
        ("Mul", [k("high_half"), k("16")], "high_shifted", {}),
        ("Sub", [k("bytes"), k("high_shifted")], "low_half", {}),
        ("Unsqueeze", [k("high_half"), k("last")], "even", {}),
        ("Unsqueeze", [k("low_half"), k("last")], "odd", {}),
        ("Concat", [k("even"), k("odd")], "pairs", {"axis": -1}),
        ("Reshape", [k("pairs"), k("blocks")], "codes", {}),
        ("Sub", [k("codes"), k("8")], "centred", {}),
        ("Cast", [k("centred")], "centred_float", {"to": TensorProto.FLOAT}),
        ("Cast", [k("scale")], "scale_float", {"to": TensorProto.FLOAT}),
        ("Mul", [k("centred_float"), k("scale_float")], "steps", {}),
        ("Add", [k("steps"), k("zero")], "shifted", {}),
        ("Round", [k("shifted")], "rounded", {}),
        ("Clip", [k("rounded"), k("low"), k("high")], "clipped", {}),
        ("Cast", [k("clipped")], "cast", {"to": np_dtype_to_tensor_dtype(np.dtype(dtype))}),
    ]
    nodes = [make_node(op, inputs, [k(out)], **attrs) for op, inputs, out, attrs in steps]
    return constants, nodes + [make_node("Reshape", [k("cast"), k("shape")], [name])]
