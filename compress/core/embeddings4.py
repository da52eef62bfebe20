"""4-bit storage for the INT8 embedding tables of an ONNX model, expanded back to INT8 when ONNX Runtime loads it.

Why: after vocabulary pruning the INT8 word table is still most of a pruned student's bytes (5.0 of 8.0 MB for
the default recipe's). ONNX Runtime's own 4-bit lookup (GatherBlockQuantized) halves it too, but its kernel took
0.37 ms a run where QEmbedLayerNormalization takes 0.10 (ORT 1.32, 1 thread). Here each table is stored as 4-bit
codes, two to a byte, and one FP16 scale per block of a row; a chain of standard ONNX ops turns them back into the
INT8 table, and ONNX Runtime's constant folding runs that chain once at load, so the graph it runs, its speed and,
once loaded, its memory are those of the 8-bit model: the file shrinks, loading costs a little (the chain's
intermediate results). Codes are symmetric around the table's zero point, so a zero row stays zero. Any opset from
13 reads it (ONNX's own 4-bit types need opset 21).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PACKED = "_4bit"  # the codes of table T are the initializer T + PACKED; its scales and the chain's constants
META = "_4bit/"   # are named T + META + what (quantization metadata, not parameters)
LOOKUP = f"embeddings.{META}byte_pairs"  # one for all tables: a byte's two centred codes, [256, 2] INT8
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


def pack_embeddings(path: Path, block_size: int) -> None:
    """Rewrite `path` with every 8-bit embedding table stored in 4 bits, one scale per `block_size` values of a
    row. Raises ValueError when there is none, or a row's width is not a multiple of `block_size`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    tables = embedding_tables(model)
    if not tables:
        raise ValueError(f"{path} has no INT8 embedding table to store in 4 bits")
    stored = {t.name: t for t in model.graph.initializer}
    byte = np.arange(256)
    constants = {LOOKUP: (np.stack([byte // 16, byte % 16], -1) - 8).astype(np.int8)}
    chains = []
    for name, zero_point_name in tables.items():
        table = numpy_helper.to_array(stored[name])
        if table.ndim != 2 or table.shape[1] % block_size:
            raise ValueError(f"{path}: embedding table {name} of shape {list(table.shape)}: its rows do not split "
                             f"into blocks of {block_size} (embedding_block_size)")
        zero_point = int(numpy_helper.to_array(stored[zero_point_name])) if zero_point_name else 0
        codes, scales = quantize_blocks(table, zero_point, block_size)
        model.graph.initializer.remove(stored[name])
        constants |= {name + PACKED: pack_pairs(codes), name + META + "scale": scales[..., None]}
        chain_constants, nodes = expansion(name, table.shape, table.dtype, zero_point, block_size)
        constants |= chain_constants
        chains += nodes
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    nodes = chains + list(model.graph.node)  # the chains' inputs are all initializers: first in topological order
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, path)


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
    """The constants and nodes that compute table `name` (8-bit, `shape`) from its codes and scales: the bytes
    grouped by block, each byte's two centred codes looked up (LOOKUP), scaled per block, and put back on the 8-bit
    grid by QuantizeLinear (rounding half to even, saturating, plus the zero point). Standard ops, all constant, so
    ONNX Runtime folds them at load; few of them, as folding holds each full-size result for a while (a first
    version that unpacked the bytes with integer arithmetic peaked at 300-400 MB for a 12,939 x 384 table)."""
    from onnx import TensorProto
    from onnx.helper import make_node

    rows, width = shape
    k = lambda what: name + META + what  # noqa: E731
    constants = {k("blocks"): np.array([rows, width // block_size, block_size // 2]),
                 k("shape"): np.array([rows, width]), k("one"): np.array(1, np.float32),
                 k("zero"): np.array(zero_point, dtype)}
    steps = [
        ("Reshape", [name + PACKED, k("blocks")], "bytes_by_block", {}),
        ("Cast", [k("bytes_by_block")], "bytes", {"to": TensorProto.INT32}),
        ("Gather", [LOOKUP, k("bytes")], "codes", {}),
        ("Cast", [k("codes")], "codes_float", {"to": TensorProto.FLOAT}),
        ("Cast", [k("scale")], "scale_float", {"to": TensorProto.FLOAT}),
        ("Mul", [k("codes_float"), k("scale_float")], "steps", {}),
        ("QuantizeLinear", [k("steps"), k("one"), k("zero")], "grid", {}),
    ]
    nodes = [make_node(op, inputs, [k(out)], **attrs) for op, inputs, out, attrs in steps]
    return constants, nodes + [make_node("Reshape", [k("grid"), k("shape")], [name])]
