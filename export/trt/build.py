"""ONNX graph -> strongly typed TensorRT engine, in small steps (after Polygraphy's loaders): check the inputs,
parse the network, configure the builder, build, then write the engine and its build record together.

TensorRT 10 and 11 build *strongly typed* networks (TensorRT 11 has no FP16/INT8 builder flags and no
calibrators), so the precision comes from the graph itself.
"""
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import onnx

from alexnet_zoo.cli import UsageError
from alexnet_zoo.files import PathLike, atomic_path, ensure_writable_dir

from export.contract import graph_precision, input_chw, read_onnx
from export.trt import runtime
from export.trt.record import record_path

if TYPE_CHECKING:  # TensorRT's published stubs (tensorrt-stubs): the tests type-check the calls below against them
    import tensorrt

CPU_HINT = ' (use --check-only to lint the graph on CPU)'


@dataclass(frozen=True)
class BatchProfile:
    """The one optimization profile: the range of batch sizes the engine accepts, and the one it is tuned for."""
    min: int = 1
    opt: int = 8
    max: int = 64

    def __post_init__(self):
        if self.min < 1:
            raise UsageError(f'--min-batch must be at least 1, got {self.min}')
        if not self.min <= self.opt <= self.max:
            raise UsageError(f'batch sizes out of order: need min <= opt <= max, '
                             f'got {self.min}, {self.opt}, {self.max}')

    def shapes(self, chw: Sequence[int]) -> Dict[str, List[int]]:
        return {k: [getattr(self, k), *chw] for k in ('min', 'opt', 'max')}


@dataclass
class BuildResult:
    plan: Path
    record_path: Path
    record: dict


def default_plan(onnx_path: PathLike, precision: str) -> Path:
    return Path(onnx_path).with_name(f'model.{precision}.plan')


def parse_network(trt, builder: 'tensorrt.Builder', onnx_path: Path, data: bytes) -> 'tensorrt.INetworkDefinition':
    """A strongly typed network from TensorRT's ONNX parser (``data``: the file's bytes); every parser error on one
    line if it fails."""
    # The flag's value differs by version (10: EXPLICIT_BATCH 0, STRONGLY_TYPED 1; 11: STRONGLY_TYPED 0): take it
    # from the enum, never a constant. TensorRT 11 networks are always strongly typed and keep the flag.
    strongly_typed = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    network: 'tensorrt.INetworkDefinition' = builder.create_network(1 << int(strongly_typed))
    if not network.get_flag(strongly_typed):
        raise RuntimeError(f'TensorRT {trt.__version__} did not create a strongly typed network')
    parser: 'tensorrt.OnnxParser' = trt.OnnxParser(network, runtime.trt_logger(trt))
    if not parser.parse(data, str(onnx_path.resolve())):  # the path locates weights stored beside the graph
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise ValueError(f'TensorRT could not parse {onnx_path.name}: ' + '; '.join(map(parser_error_text, errors)))
    return network


def parser_error_text(error: 'tensorrt.ParserError') -> str:
    """One parser error in words: where (node index, name and operator, or 'the graph' when it is tied to no node),
    what (the error code's name in words), and TensorRT's description."""
    code = error.code()
    what = getattr(code, 'name', str(code).rsplit('.', 1)[-1]).lower().replace('_', ' ')
    index = error.node()
    if index < 0:
        where = 'the graph'
    else:
        name = error.node_name() if hasattr(error, 'node_name') else ''
        operator = error.node_operator() if hasattr(error, 'node_operator') else ''
        where = f'node {index}' + (f' {name!r}' if name else '') + (f' ({operator})' if operator else '')
    return f'{where}: {what}: {" ".join(str(error.desc()).split())}'


def builder_config(trt, builder: 'tensorrt.Builder', input_name: str, shapes: Dict[str, List[int]],
                   precision: str = 'fp32', workspace_gb: Optional[float] = None,
                   timing_cache: Optional[Path] = None) -> 'tensorrt.IBuilderConfig':
    """The builder config: the batch profile, fp32 kept fp32 (TF32 off), layer details for the engine inspector,
    the workspace limit, and the timing cache read from disk."""
    config: 'tensorrt.IBuilderConfig' = builder.create_builder_config()
    if precision == 'fp32' and hasattr(trt.BuilderFlag, 'TF32'):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: ~1e-3 relative error, beyond the fp32 gate
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for create_engine_inspector
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile: 'tensorrt.IOptimizationProfile' = builder.create_optimization_profile()
    # pybind11 converts a list to Dims implicitly; the stubs declare only Dims
    profile.set_shape(input_name, shapes['min'], shapes['opt'], shapes['max'])  # type: ignore[arg-type]
    if config.add_optimization_profile(profile) < 0:
        raise ValueError(f'TensorRT rejected the batch profile {shapes} for input {input_name!r}')
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b'')
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise ValueError(f'timing cache {timing_cache} is unreadable or was written for another GPU or '
                             f'TensorRT version; delete it or name another --timing-cache')
    return config


def tf32_allowed(trt, config: 'tensorrt.IBuilderConfig') -> bool:
    return hasattr(trt.BuilderFlag, 'TF32') and bool(config.get_flag(trt.BuilderFlag.TF32))


def build_record(trt, model: onnx.ModelProto, onnx_path: Path, onnx_sha256: str, plan: Path, engine: bytes, gpu,
                 precision: str, shapes: Dict[str, List[int]], workspace_gb: Optional[float], seconds: float,
                 tf32: bool = False) -> dict:
    """What built the engine, from which graph, for which inputs: checked before every load."""
    input_name, _ = input_chw(model)
    return {
        'tensorrt_version': trt.__version__,
        'gpu': {'name': gpu[0], 'compute_capability': gpu[1]},
        'precision': precision,
        'strongly_typed': True,
        'tf32': tf32,  # whether fp32 layers were allowed TF32 (cleared for fp32 engines)
        'input': {'name': input_name, **shapes},
        'outputs': [o.name for o in model.graph.output],
        'onnx': {'file': onnx_path.name, 'sha256': onnx_sha256,
                 'model_name': {p.key: p.value for p in model.metadata_props}.get('model_name')},
        'engine': {'file': plan.name, 'sha256': hashlib.sha256(engine).hexdigest(), 'bytes': len(engine)},
        'workspace_bytes': None if workspace_gb is None else int(workspace_gb * (1 << 30)),
        'build_seconds': round(seconds, 2),
        'built_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
    }


def build_engine(onnx_path: PathLike, plan: Optional[PathLike] = None, profile: BatchProfile = BatchProfile(),
                 timing_cache: Optional[PathLike] = None, workspace_gb: Optional[float] = None) -> BuildResult:
    """Parse ``onnx_path`` into a strongly typed network and build its engine.

    Writes ``plan`` and its build record atomically (both or neither) and, if ``timing_cache`` is given, reads it
    before the build and writes it back after. Checks the inputs, then the GPU, then TensorRT, before building.
    """
    onnx_path = Path(onnx_path)
    model = read_onnx(onnx_path)
    input_name, chw = input_chw(model)
    precision = graph_precision(model)
    plan = Path(plan) if plan else default_plan(onnx_path, precision)
    if plan.suffix == '.json' or plan.resolve() == onnx_path.resolve():
        raise UsageError(f'--output must be an engine path like model.{precision}.plan, got {plan}')
    if workspace_gb is not None and workspace_gb <= 0:
        raise UsageError(f'--workspace-gb must be positive, got {workspace_gb}')
    gpu = runtime.require_gpu(CPU_HINT)
    trt = runtime.import_tensorrt(CPU_HINT)
    ensure_writable_dir(plan.parent)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    if timing_cache is not None:
        ensure_writable_dir(timing_cache.parent)

    data = onnx_path.read_bytes()
    builder: 'tensorrt.Builder' = trt.Builder(runtime.trt_logger(trt))
    network = parse_network(trt, builder, onnx_path, data)
    shapes = profile.shapes(chw)
    config = builder_config(trt, builder, input_name, shapes, precision, workspace_gb, timing_cache)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise RuntimeError(f'TensorRT could not build an engine from {onnx_path.name} (see its messages above)')
    engine = bytes(memoryview(serialized))  # IHostMemory: a buffer, not bytes

    record = build_record(trt, model, onnx_path, hashlib.sha256(data).hexdigest(), plan, engine, gpu, precision,
                          shapes, workspace_gb, seconds, tf32_allowed(trt, config))
    with atomic_path(record_path(plan)) as tmp_record, atomic_path(plan) as tmp_plan:  # engine renamed first
        tmp_plan.write_bytes(engine)
        tmp_record.write_text(json.dumps(record, indent=2) + '\n')
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(plan, record_path(plan), record)
