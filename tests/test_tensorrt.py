"""The TensorRT paths on CPU: the profile the recipe needs, the stage's caches and checks, and our calls into TensorRT.

TensorRT needs an NVIDIA GPU, so `build_engine` and `TrtEngine` are exercised here against a FAKE `tensorrt` module
and host memory in place of CUDA. The fake answers the calls our code makes with the names and return values
TensorRT's Python API documents (set_input_shape gives False outside the profile, build_serialized_network gives
bytes, ...); it builds nothing and its "engine" only sums token ids. A pass here says our calls are right, never
that TensorRT builds or agrees: that is tests/test_deploy.py's job, skipped without TensorRT and a GPU.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import json
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import export.tensorrt as stage
from compress.core.artifact import Artifact
from compress.core.config import RecipeShapes
from compress.core.data import DataConfig
from compress.core.errors import CompressError, StageFailed
from compress.core.models import copy_model_files, load_tokenizer
from compress.core.stage import Context
from compress.recipe import load_recipe
from export.tensorrt import ShapeRange, TensorRTConfig, build_tensorrt, prepare_onnx
from runtimes import Unavailable, tensorrt_engine
from runtimes.ort_runtime import OrtRuntime, session_plan
from runtimes.tensorrt_engine import TrtEngine, build_engine
from runtimes.tensorrt_runtime import tensorrt_missing
from tests.conftest import write_recipe

SHAPES = {"input_ids": ((1, 1), (1, 8), (4, 8)), "attention_mask": ((1, 1), (1, 8), (4, 8)),
          "token_type_ids": ((1, 1), (1, 8), (4, 8))}  # the stage passes every tokenizer output; the network takes two

# ---------------------------------------------------------------- the fake: what our code calls, nothing more

Severity = SimpleNamespace(**{n: SimpleNamespace(name=n) for n in ("VERBOSE", "INFO", "WARNING", "ERROR")})


class ILogger:
    Severity = Severity


class Logger(ILogger):
    WARNING = Severity.WARNING

    def __init__(self, min_severity: SimpleNamespace) -> None:
        self.min_severity = min_severity


class Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.inputs, self.outputs = flags, [], []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=self.inputs[i])


class OnnxParser:
    """Takes the graph's inputs and outputs; ONNX Runtime's com.microsoft ops fail the parse, as in TensorRT."""

    def __init__(self, network: Network, logger: ILogger) -> None:
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        graph = onnx.load(path).graph
        self.errors = [f"No importer registered for op: {n.op_type}" for n in graph.node if n.domain == "com.microsoft"]
        self.network.inputs = [i.name for i in graph.input]
        self.network.outputs = [o.name for o in graph.output]
        return not self.errors

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class BuilderConfig:
    def __init__(self) -> None:
        self.pools, self.profiles, self.timing_read, self.timing_cache = {}, [], None, None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: Profile) -> None:
        self.profiles.append(profile)

    def create_timing_cache(self, data: bytes) -> TimingCache:
        self.timing_read = data
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache


class Builder:
    """Each build adds to the timing cache it was given and is recorded in `builds` (one list per fake module)."""

    builds: list[SimpleNamespace]

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int) -> Network:
        return Network(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        self.logger.log(Severity.VERBOSE, "tactic chatter")
        self.logger.log(Severity.INFO, "fake build")
        [profile] = config.profiles
        config.timing_cache.data += b"+tactics"
        plan = json.dumps({"inputs": network.inputs, "outputs": network.outputs, "profile": profile.shapes}).encode()
        self.builds.append(SimpleNamespace(flags=network.flags, profile=profile.shapes, config=config, plan=plan))
        return plan


class Engine:
    def __init__(self, plan: dict) -> None:
        self.plan, self.names = plan, plan["inputs"] + plan["outputs"]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.plan["inputs"] else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return "int64" if name in self.plan["inputs"] else "float"

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[list[int]]:
        return self.plan["profile"][name]

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self)


class ExecutionContext:
    """set_input_shape answers False outside the profile, as TensorRT does; execute reads the inputs from their
    buffers and writes logits [sum of ids under the mask, tokens under the mask] to the output's."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        low, _, high = self.engine.plan["profile"][name]
        if len(shape) != len(low) or not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes[name] if name in self.shapes else (self.shapes["input_ids"][0], 2)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def _input(self, name: str) -> np.ndarray:
        count = int(np.prod(self.shapes[name]))
        return np.ctypeslib.as_array((ctypes.c_int64 * count).from_address(self.addresses[name])).reshape(self.shapes[name])

    def execute_async_v3(self, stream_handle: int | None) -> bool:
        ids, mask = self._input("input_ids"), self._input("attention_mask")
        logits = np.ascontiguousarray(np.stack([(ids * mask).sum(1), mask.sum(1)], 1), dtype=np.float32)
        ctypes.memmove(self.addresses[self.engine.plan["outputs"][0]], logits.ctypes.data, logits.nbytes)
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine:
        return Engine(json.loads(data))


def fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec sees it; tensorrt_missing still says no GPU
    trt.__version__ = "10.99.0-fake"
    trt.ILogger, trt.Logger, trt.OnnxParser, trt.Runtime = ILogger, Logger, OnnxParser, Runtime
    trt.Builder = type("Builder", (Builder,), {"builds": []})
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = SimpleNamespace()  # TensorRT 11: no FP16/INT8 flags
    trt.TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = {"int64": np.int64, "float": np.float32}.__getitem__
    return trt


class HostCuda:
    """Cuda's calls on host memory; a copy past the end of a "device" buffer fails instead of corrupting memory."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        self.stream = ctypes.c_void_p(0)
        self.blocks: dict[int, ctypes.Array] = {}

    def malloc(self, nbytes: int) -> int:
        block = (ctypes.c_char * max(nbytes, 1))()
        self.blocks[ctypes.addressof(block)] = block
        return ctypes.addressof(block)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        assert nbytes <= ctypes.sizeof(self.blocks[dst if kind == self.H2D else src]), "copy past a device buffer"
        ctypes.memmove(dst, src, nbytes)

    def sync(self) -> None:
        pass


@pytest.fixture
def trt(monkeypatch) -> types.ModuleType:
    fake = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_engine, "Cuda", HostCuda)
    return fake


def tiny_classifier(path: Path, vocab: int, contrib: bool = False) -> Path:
    """input_ids, attention_mask -> logits (batch, 2): the masked sum of embeddings times a weight. `contrib` puts
    an ONNX Runtime-only op (com.microsoft FastGelu) in, as the fused model.onnx has."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    weights = {"embedding": rng.randn(vocab, 8), "classifier": rng.randn(8, 2)}
    initializers = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    initializers += [numpy_helper.from_array(np.array([axis], np.int64), n) for n, axis in (("last", 2), ("seq", 1))]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
             helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
             helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "seq"], ["pooled"], keepdims=0)]
    if contrib:
        nodes.append(helper.make_node("FastGelu", ["pooled"], ["pooled_act"], domain="com.microsoft"))
    nodes.append(helper.make_node("MatMul", [nodes[-1].output[0], "classifier"], ["logits"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                     ["batch", 2])], initializers)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    return path


# ---------------------------------------------------------------- build_engine and TrtEngine against the fake


def test_build_engine_reports_what_tensorrt_could_not_parse(trt, tmp_path):
    network = tiny_classifier(tmp_path / "model.onnx", 20, contrib=True)
    with pytest.raises(RuntimeError, match="TensorRT could not parse model.onnx: No importer registered for op: FastGelu"):
        build_engine(network, tmp_path / "model.engine", SHAPES)
    assert not (tmp_path / "model.engine").exists() and trt.Builder.builds == []


def test_build_engine_sets_the_profile_and_reads_and_writes_the_timing_cache(trt, tmp_path):
    network, timing = tiny_classifier(tmp_path / "network.onnx", 20), tmp_path / "timing.cache"
    log = build_engine(network, tmp_path / "a.engine", SHAPES, timing, workspace_mib=64)
    build_engine(network, tmp_path / "b.engine", SHAPES, timing)
    first, second = trt.Builder.builds
    assert first.profile == {n: SHAPES[n] for n in ("input_ids", "attention_mask")}
    assert first.flags == 1 << 1 and first.config.pools == {"workspace": 64 << 20}  # strongly typed
    assert (first.config.timing_read, second.config.timing_read) == (b"", b"+tactics")  # the second reads the first's
    assert timing.read_bytes() == b"+tactics+tactics"
    assert (tmp_path / "a.engine").read_bytes() == first.plan and log == ["[INFO] fake build"]


def test_an_engine_run_goes_through_the_device_buffers(trt, tmp_path):
    build_engine(tiny_classifier(tmp_path / "network.onnx", 20), tmp_path / "model.engine", SHAPES)
    engine = TrtEngine(tmp_path / "model.engine")
    sizes = {n: ctypes.sizeof(engine.cuda.blocks[address]) for n, address in engine.buffers.items()}
    assert sizes == {"input_ids": 4 * 8 * 8, "attention_mask": 4 * 8 * 8, "logits": 4 * 2 * 4}  # the profile's max
    ids = np.array([[2, 5, 7, 3], [2, 6, 3, 0]])
    logits = engine.run({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": 0 * ids})
    assert logits.dtype == np.float32 and logits.tolist() == [[17, 4], [11, 3]]


def test_a_shape_outside_the_profile_is_an_error_naming_input_shape_and_range(trt, tmp_path):
    build_engine(tiny_classifier(tmp_path / "network.onnx", 20), tmp_path / "model.engine", SHAPES)
    engine = TrtEngine(tmp_path / "model.engine")
    ids = np.ones((1, 9), np.int64)
    with pytest.raises(ValueError, match=r"input 'input_ids' of shape \(1, 9\) is outside the engine's optimization "
                                         r"profile \(1, 1\)\.\.\(4, 8\)"):
        engine.run({"input_ids": ids, "attention_mask": ids})


# ---------------------------------------------------------------- ort-trt: ONNX Runtime's TensorRT provider


def test_ort_trt_takes_the_plain_export_with_cuda_and_cpu_behind_and_caches_beside_the_artifact(tmp_path):
    artifact = Artifact("onnx", "onnx", tmp_path / "01-onnx", "abc", files={"model": "model.onnx",
                                                                           "raw": "model.raw.onnx"})
    model, providers = session_plan(artifact, "trt")
    cache = tmp_path / "cache" / "ort-trt"
    assert model == tmp_path / "01-onnx" / "model.raw.onnx"
    assert providers == [("TensorrtExecutionProvider", {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache / "abc"),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}),
        "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_other_providers_and_artifacts_without_a_plain_export_load_model_onnx(tmp_path):
    quantized = Artifact("q", "onnx", tmp_path, "h", files={"model": "model.onnx"})
    assert session_plan(quantized, "trt")[0] == tmp_path / "model.onnx"
    exported = Artifact("e", "onnx", tmp_path, "h", files={"model": "model.onnx", "raw": "model.raw.onnx"})
    assert session_plan(exported, "cpu") == (tmp_path / "model.onnx", ["CPUExecutionProvider"])


def test_ort_trt_is_unavailable_when_tensorrt_did_not_initialise(tmp_path, monkeypatch):
    """ONNX Runtime falls back to CUDA quietly when TensorRT fails; such a row must not pass for a TensorRT one."""
    import onnxruntime

    sessions = []

    class FellBack:
        def __init__(self, path: str, options, providers: list) -> None:
            sessions.append((path, providers))

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["TensorrtExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FellBack)
    artifact = Artifact("onnx", "onnx", tmp_path / "01-onnx", "abc", files={"model": "model.onnx",
                                                                           "raw": "model.raw.onnx"})
    with pytest.raises(Unavailable, match="TensorrtExecutionProvider failed to initialise"):
        OrtRuntime.open(artifact, "trt")
    assert sessions == [(str(tmp_path / "01-onnx" / "model.raw.onnx"), session_plan(artifact, "trt")[1])]
    assert (tmp_path / "cache" / "ort-trt" / "abc").is_dir()


# ---------------------------------------------------------------- the profile: sized to what the recipe feeds

@pytest.fixture
def tensorrt_here(monkeypatch) -> None:
    """Lets a TensorRTConfig be made on this machine: its validator refuses it where TensorRT cannot run."""
    monkeypatch.setattr(stage, "tensorrt_missing", lambda: None)


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present: the step is accepted here")
def test_a_tensorrt_step_is_still_refused_where_tensorrt_cannot_run():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a tensorrt step cannot run on this machine"):
        TensorRTConfig(name="trt")


FED = RecipeShapes(sequence_lengths={"data.max_length": 16, "benchmark.sequence_lengths": 128},
                   batch_sizes={"benchmark.batch_sizes": 8, "benchmark.eval_batch_size": 64}, positions={})


def test_the_default_profile_takes_the_longest_sequence_and_largest_batch_fed(tensorrt_here):
    cfg = TensorRTConfig(name="trt")
    cfg.check_shapes(FED)
    assert cfg.batch == ShapeRange(min=1, opt=1, max=64) and cfg.sequence == ShapeRange(min=1, opt=128, max=128)
    assert cfg.model_dump()["sequence"]["max"] == 128  # in the step's hash: a longer benchmark rebuilds the engine


@pytest.mark.parametrize("key, given, message", [
    ("batch", {"min": 1, "opt": 1, "max": 32}, "batch.max 32 is smaller than benchmark.eval_batch_size 64"),
    ("sequence", {"min": 1, "opt": 16, "max": 64}, "sequence.max 64 is smaller than benchmark.sequence_lengths 128"),
])
def test_an_explicit_profile_that_cannot_take_a_fed_shape_is_refused(tensorrt_here, key, given, message):
    with pytest.raises(ValueError, match=message):
        TensorRTConfig(name="trt", **{key: given}).check_shapes(FED)


def test_the_recipe_refuses_a_profile_smaller_than_its_benchmark(tensorrt_here, tmp_path, tiny_bert, tiny_csv):
    steps = [{"name": "onnx", "type": "export"}, {"name": "trt", "type": "tensorrt", "batch": {"min": 1, "opt": 1, "max": 32}}]
    with pytest.raises(CompressError, match=r"steps\[1\] \(trt\): batch.max 32 is smaller than benchmark.eval_batch_size 64"):
        load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps))
    steps[1].pop("batch")
    recipe = load_recipe(write_recipe(tmp_path, tiny_bert, tiny_csv, steps,
                                      benchmark={"backends": ["tensorrt"], "sequence_lengths": [128]}))
    assert recipe.steps[1].batch.max == 64 and recipe.steps[1].sequence.max == 128


# ---------------------------------------------------------------- the stage: parity, caches, what TensorRT can build


@pytest.fixture
def parent(tmp_path, tiny_bert) -> Artifact:
    """An ONNX artifact as an export leaves it: model, tokenizer, config.json."""
    folder = tmp_path / "run" / "01-onnx"
    copy_model_files(tiny_bert, folder)
    tiny_classifier(folder / "model.onnx", len(load_tokenizer(folder)))
    return Artifact("onnx", "onnx", folder, "parent-hash", files={"model": "model.onnx"})


@pytest.fixture
def ctx(tmp_path, tiny_csv, trt, tensorrt_here, monkeypatch) -> Context:
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device=None: "Fake GPU 80GB")
    return Context(tmp_path / "run", logging.getLogger("test"),
                   DataConfig(source=str(tiny_csv), max_length=16, split={"group_column": "movie"}))


def test_the_prepared_onnx_is_held_to_parity_before_an_engine_is_built(parent, ctx, trt, tmp_path):
    cfg = TensorRTConfig(name="trt", precision="fp16", parity={"examples": 16, "max_logit_diff": 1e-9})
    with pytest.raises(StageFailed, match="trt: prepared fp16 ONNX vs the input on ONNX Runtime: logits differ"):
        build_tensorrt(cfg, parent, ctx, tmp_path)
    assert trt.Builder.builds == []


def test_the_caches_outlive_the_stage_folder_and_are_reused(parent, ctx, trt, tmp_path, monkeypatch):
    calibrated = []
    reader = stage.calibration_reader
    monkeypatch.setattr(stage, "calibration_reader", lambda *args: calibrated.append(args) or reader(*args))
    # The fake engine only sums ids, so its agreement with ONNX Runtime is not what this test is about.
    cfg = TensorRTConfig(name="trt", precision="int8", calibration_examples=16, parity={"examples": 16,
                                                                                        "min_agreement": 0.0})
    for build in ("first", "second"):  # each into a fresh, empty folder, as the pipeline gives a rebuilt step
        (tmp_path / build).mkdir()
        result = build_tensorrt(cfg, parent, ctx, tmp_path / build)
    cache = tmp_path / "run" / "cache" / "tensorrt"
    [ranges] = cache.glob("calibration-*.json")
    timing = cache / "timing-10.99.0-fake-Fake_GPU_80GB.cache"
    assert len(calibrated) == 1  # the second build read the ranges the first one kept
    assert [b.config.timing_read for b in trt.Builder.builds] == [b"", b"+tactics"]
    assert timing.read_bytes() == (tmp_path / "second" / "timing.cache").read_bytes() == b"+tactics+tactics"
    assert (tmp_path / "second" / "calibration.json").read_bytes() == ranges.read_bytes()
    assert result.files["timing_cache"] == "timing.cache" and result.files["calibration_cache"] == "calibration.json"
    assert result.metrics["profile"] == {"batch": {"min": 1, "opt": 1, "max": 64}, "sequence": {"min": 1, "opt": 16,
                                                                                                "max": 16}}


def qdq_model(path: Path, zero_point: np.ndarray | None) -> Path:
    """x -> QuantizeLinear -> DequantizeLinear -> y, with `zero_point` (None: left out, ONNX's uint8 default)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    quantize_inputs = ["x", "scale"] + (["zero"] if zero_point is not None else [])
    initializers = [numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    initializers += [numpy_helper.from_array(zero_point, "zero")] if zero_point is not None else []
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", quantize_inputs, ["q"]),
         helper.make_node("DequantizeLinear", ["q"] + quantize_inputs[1:], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("zero_point, found", [(np.array(128, np.uint8), "uint8 with zero point 128"),
                                               (None, r"uint8 \(no zero point given"),
                                               (np.array(3, np.int8), "int8 with zero point 3")])
def test_an_asymmetric_qdq_parent_is_refused_naming_it_and_the_fix(tmp_path, zero_point, found):
    qdq_model(tmp_path / "model.onnx", zero_point)
    parent = Artifact("static-u8", "onnx", tmp_path, "h", files={"model": "model.onnx"})
    (tmp_path / "out").mkdir()
    with pytest.raises(CompressError, match=rf"static-u8: model.onnx quantizes 'x' to {found}.*"
                                            r"`activation_type: int8, symmetric_activations: true`"):
        prepare_onnx("int8", parent, None, [], 16, tmp_path / "out")


def test_a_symmetric_int8_qdq_parent_is_taken_as_it_is(tmp_path):
    qdq_model(tmp_path / "model.onnx", np.array(0, np.int8))
    parent = Artifact("static-s8", "onnx", tmp_path, "h", files={"model": "model.onnx"})
    (tmp_path / "out").mkdir()
    network = prepare_onnx("int8", parent, None, [], 16, tmp_path / "out")
    assert network.read_bytes() == (tmp_path / "model.onnx").read_bytes()
