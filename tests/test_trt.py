"""export.trt: the CPU preflight on real and deliberately broken graphs, the no-GPU build path, build records,
and (on a machine with an NVIDIA GPU and TensorRT) real engine builds run through the TensorRT runner."""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from enum import IntEnum
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import export.trt.__main__ as trt_cli
import export.trt.runtime as trt_runtime
from alexnet_zoo.cli import run_cli
from export.contract import input_chw, metadata, read_onnx
from export.runner import BackendUnavailable
from export.trt.build import BatchProfile, build_engine
from export.trt.preflight import SUPPORTED_OPS, check_onnx
from export.trt.record import EngineRecordError, check_record, read_record, record_path
from export.trt.runtime import TensorRTUnavailable, load_engine

REPO = Path(__file__).resolve().parents[1]


def _tensorrt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_GPU_TRT = torch.cuda.is_available() and _tensorrt_installed()


# ---------------------------------------------------------------------------------------------------- graphs


@pytest.fixture(scope='module')
def real_graphs(exported_graphs):
    """The three graphs export.onnx writes (the test run's trained alexnet_bn): {precision: path}."""
    result, _ = exported_graphs
    assert sorted(result.paths) == ['fp16', 'fp32', 'int8']
    return result.paths


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset), *extra_opsets])
    path = tmp_path / f'{name}.onnx'
    onnx.save(model, path)
    return path


def _float_input(shape, name='input', elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def tiny_convnet(tmp_path: Path, batch='batch') -> Path:
    """A small valid classifier with a dynamic (or static) batch: Conv, Relu, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), 'w'),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), 'fc')]
    nodes = [helper.make_node('Conv', ['input', 'w'], ['c'], name='conv', pads=[1, 1, 1, 1]),
             helper.make_node('Relu', ['c'], ['r'], name='relu'),
             helper.make_node('GlobalAveragePool', ['r'], ['p'], name='pool'),
             helper.make_node('Flatten', ['p'], ['f'], name='flatten'),
             helper.make_node('Gemm', ['f', 'fc'], ['logits'], name='fc', transB=1)]
    return _save(tmp_path, 'tiny', nodes, [_float_input([batch, 3, 8, 8])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [batch, 5])], inits)


def qdq_graph(tmp_path: Path, zero_point: int) -> Path:
    """input -> QuantizeLinear 'quant_in' -> DequantizeLinear 'dequant_in' -> Relu, int8 with the given zero point."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), 'scale'),
             numpy_helper.from_array(np.array(zero_point, np.int8), 'zp')]
    nodes = [helper.make_node('QuantizeLinear', ['input', 'scale', 'zp'], ['q'], name='quant_in'),
             helper.make_node('DequantizeLinear', ['q', 'scale', 'zp'], ['dq'], name='dequant_in'),
             helper.make_node('Relu', ['dq'], ['logits'], name='relu')]
    return _save(tmp_path, f'qdq_zp{zero_point}', nodes, [_float_input(['batch', 4])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 4])], inits)


# ------------------------------------------------------------------------------------------------- the CLI


def cli(argv, capsys):
    """Run ``python -m export.trt`` in-process: (exit code, stdout, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(trt_cli.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err.splitlines()


# ------------------------------------------------------------------------------------------- the preflight


def test_preflight_passes_the_exported_graphs(real_graphs, capsys):
    """The exported graphs pass; ``--check-only`` reads and writes nothing (a kill at any moment cannot leave a
    file: there is none), so the folder is byte for byte as it was."""
    assert sorted(real_graphs) == ['fp16', 'fp32', 'int8']
    for precision, path in real_graphs.items():
        assert check_onnx(path) == [], precision
    folder = real_graphs['int8'].parent
    before = _folder_bytes(folder)
    code, out, err = cli(['--onnx', real_graphs['int8'], '--check-only'], capsys)
    assert (code, err) == (0, []) and 'passes the TensorRT preflight' in out
    assert _folder_bytes(folder) == before


def _folder_bytes(folder: Path) -> dict:
    """Every file under ``folder`` (and every folder, as None) with the sha256 of its bytes."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in folder.rglob('*')}


def test_preflight_passes_a_symmetric_qdq_graph(tmp_path):
    assert check_onnx(qdq_graph(tmp_path, 0)) == []


def test_preflight_names_the_node_with_an_asymmetric_zero_point(tmp_path, capsys):
    path = qdq_graph(tmp_path, 3)
    problems = check_onnx(path)
    assert len(problems) == 2, problems  # the Q and the DQ node
    assert "'quant_in'" in problems[0] and 'zero point' in problems[0] and 'not 0' in problems[0]
    assert "'dequant_in'" in problems[1]
    code, out, err = cli(['--onnx', path, '--check-only'], capsys)
    assert code == 1 and out == '' and len(err) == 2 and all(line.startswith('error: ') for line in err)


def test_preflight_rejects_uint8_quantization(tmp_path):
    path = qdq_graph(tmp_path, 0)
    model = onnx.load(path)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), 'zp'))
    onnx.save(model, path)
    problems = check_onnx(path)
    assert any('uint8' in p and "'quant_in'" in p for p in problems), problems


def test_preflight_rejects_an_unsupported_op(tmp_path):
    nodes = [helper.make_node('Det', ['input'], ['logits'], name='determinant')]
    path = _save(tmp_path, 'det', nodes, [_float_input(['batch', 3, 3])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch'])])
    problems = check_onnx(path)
    assert len(problems) == 1 and 'op Det' in problems[0] and "'determinant'" in problems[0], problems


def test_preflight_rejects_ops_from_other_domains(tmp_path):
    nodes = [helper.make_node('FastGelu', ['input'], ['logits'], name='gelu', domain='com.microsoft')]
    path = _save(tmp_path, 'msft', nodes, [_float_input(['batch', 4])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 4])],
                 extra_opsets=[helper.make_opsetid('com.microsoft', 1)])
    problems = check_onnx(path)
    assert any('com.microsoft::FastGelu' in p and "'gelu'" in p for p in problems), problems


def test_preflight_rejects_a_static_batch(tmp_path):
    problems = check_onnx(tiny_convnet(tmp_path, batch=1))
    assert len(problems) == 1 and 'static batch dimension (1)' in problems[0], problems


def test_preflight_rejects_float64(tmp_path):
    nodes = [helper.make_node('Relu', ['input'], ['r'], name='relu'),
             helper.make_node('Cast', ['r'], ['logits'], name='to_float', to=TensorProto.FLOAT)]
    path = _save(tmp_path, 'double', nodes, [_float_input(['batch', 4], elem=TensorProto.DOUBLE)],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 4])])
    problems = check_onnx(path)
    assert len(problems) == 1 and 'double' in problems[0] and "'input'" in problems[0], problems


def test_preflight_rejects_an_opset_outside_tensorrts_range(tmp_path):
    nodes = [helper.make_node('Relu', ['input'], ['logits'], name='relu')]
    path = _save(tmp_path, 'old', nodes, [_float_input(['batch', 4])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 4])], opset=7)
    problems = check_onnx(path)
    assert problems == ['opset 7: TensorRT 10/11 parse opsets 9 to 24'], problems


def test_preflight_reports_checker_errors(tmp_path):
    nodes = [helper.make_node('Relu', ['missing'], ['logits'], name='relu')]  # input of no one
    path = _save(tmp_path, 'broken', nodes, [_float_input(['batch', 4])],
                 [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 4])])
    problems = check_onnx(path)
    assert problems and problems[0].startswith('ONNX checker: '), problems


def test_supported_op_list_covers_what_export_writes():
    assert {'Conv', 'Relu', 'MaxPool', 'BatchNormalization', 'Gemm', 'Reshape', 'Flatten', 'Cast',
            'QuantizeLinear', 'DequantizeLinear', 'LRN', 'AveragePool', 'Softmax'} <= SUPPORTED_OPS
    assert not {'Det', 'Unique', 'ConvInteger', 'QLinearConv', 'DynamicQuantizeLinear'} & SUPPORTED_OPS


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    tiny = tiny_convnet(tmp_path)
    (tmp_path / 'static').mkdir()
    static = tiny_convnet(tmp_path / 'static', batch=1)
    out_dir = tmp_path / 'out'
    cases = [
        (['--onnx', tmp_path / 'missing.onnx', '--output', out_dir / 'm.plan'], 1, 'ONNX file not found'),
        (['--onnx', tmp_path / 'missing.onnx', '--check-only'], 1, 'ONNX file not found'),
        (['--onnx', garbage, '--output', out_dir / 'm.plan'], 1, 'not an ONNX model'),
        (['--onnx', garbage, '--check-only'], 1, 'not an ONNX model'),
        (['--onnx', tiny, '--min-batch', '8', '--opt-batch', '4', '--output', out_dir / 'm.plan'], 2, 'out of order'),
        (['--onnx', tiny, '--opt-batch', '128', '--max-batch', '64', '--output', out_dir / 'm.plan'], 2, 'out of order'),
        (['--onnx', tiny, '--min-batch', '0', '--output', out_dir / 'm.plan'], 2, '--min-batch: must be above 0'),
        (['--onnx', static, '--output', out_dir / 'm.plan'], 1, 'static batch dimension'),
        (['--onnx', tiny, '--output', tiny], 2, 'must be an engine path'),
    ]
    before = sorted(p.name for p in tmp_path.rglob('*'))
    for argv, expected_code, message in cases:
        code, out, err = cli(argv, capsys)
        assert code == expected_code, (argv, err)
        assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], (argv, err)
    assert sorted(p.name for p in tmp_path.rglob('*')) == before
    assert not out_dir.exists()


@pytest.mark.slow  # starts a Python process
def test_build_without_a_gpu_fails_before_tensorrt_and_writes_nothing(tmp_path):
    """A real build where there is no GPU: one error line, exit 1, no engine, record, or partial file."""
    onnx_path = tiny_convnet(tmp_path)
    out_dir = tmp_path / 'engines'
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}  # no GPU for the child even on a GPU machine
    proc = subprocess.run([sys.executable, '-m', 'export.trt', '--onnx', str(onnx_path), '--output',
                           str(out_dir / 'model.fp32.plan'), '--timing-cache', str(tmp_path / 'timing.cache')],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        'error: TensorRT needs an NVIDIA GPU; none found (use --check-only to lint the graph on CPU)']
    assert proc.stdout == ''
    assert sorted(p.name for p in tmp_path.iterdir()) == ['tiny.onnx']


def test_missing_tensorrt_is_reported_as_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed \(pip install 'alexnet-zoo\[trt\]'\)"):
        trt_runtime.import_tensorrt()
    assert issubclass(TensorRTUnavailable, BackendUnavailable)


def test_batch_profile_shapes():
    assert BatchProfile(1, 8, 64).shapes([3, 227, 227]) == {
        'min': [1, 3, 227, 227], 'opt': [8, 3, 227, 227], 'max': [64, 3, 227, 227]}
    BatchProfile(4, 4, 4)  # a fixed batch is fine


# ------------------------------------------------------------------------------------------- build records


def fake_engine(tmp_path: Path, precision: str = 'fp32', graph: Path = None, profile: BatchProfile = BatchProfile(1, 8, 64),
                **overrides) -> Path:
    """An engine file (arbitrary bytes) with a build record as build_engine writes it for ``graph`` (by default a
    tiny classifier written beside it): the graph's file, hash and model name, its input at ``profile``'s batches."""
    graph = graph or tiny_convnet(tmp_path)
    name, chw = input_chw(read_onnx(graph))
    plan = tmp_path / f'model.{precision}.plan'
    plan.write_bytes(b'not really an engine')
    record = {'tensorrt_version': '10.7.0', 'gpu': {'name': 'NVIDIA H100 80GB HBM3', 'compute_capability': '9.0'},
              'precision': precision, 'strongly_typed': True, 'input': {'name': name, **profile.shapes(chw)},
              'outputs': ['logits'], 'onnx': {'file': graph.name, 'sha256': hashlib.sha256(graph.read_bytes()).hexdigest(),
                                              'model_name': metadata(read_onnx(graph)).get('model_name', 'model')},
              'engine': {'file': plan.name, 'sha256': hashlib.sha256(plan.read_bytes()).hexdigest(),
                         'bytes': plan.stat().st_size},
              'workspace_bytes': None, 'build_seconds': 1.0, 'built_at': '2025-01-01T00:00:00+00:00', **overrides}
    record_path(plan).write_text(json.dumps(record))
    return plan


def test_record_path_sits_beside_the_engine():
    assert record_path('out/model.int8.plan') == Path('out/model.int8.plan.json')


def test_read_record_checks_presence_and_the_engine_hash(tmp_path):
    plan = fake_engine(tmp_path)
    assert read_record(plan)['precision'] == 'fp32'
    plan.write_bytes(b'another engine')
    with pytest.raises(EngineRecordError, match='does not match its build record'):
        read_record(plan)
    record_path(plan).write_text('{not json')
    with pytest.raises(EngineRecordError, match='unreadable'):
        read_record(plan)
    record_path(plan).unlink()
    with pytest.raises(EngineRecordError, match='no build record'):
        read_record(plan)


def test_check_record_names_both_builds_on_a_mismatch(tmp_path):
    record = read_record(fake_engine(tmp_path))
    check_record(record, '10.7.0', 'NVIDIA H100 80GB HBM3', '9.0')  # the same machine: fine
    with pytest.raises(EngineRecordError) as error:
        check_record(record, '10.8.0', 'NVIDIA H100 80GB HBM3', '9.0')
    assert 'built with TensorRT 10.7.0' in str(error.value) and 'this machine has TensorRT 10.8.0' in str(error.value)
    with pytest.raises(EngineRecordError, match=r'NVIDIA A100.*\(compute 8\.0\)'):
        check_record(record, '10.7.0', 'NVIDIA A100-SXM4-80GB', '8.0')


def _fake_tensorrt(version='10.7.0', engine=None):
    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return engine

    fake = ModuleType('tensorrt')
    fake.__version__, fake.Logger, fake.Runtime = version, Logger, Runtime
    return fake


def test_load_engine_turns_a_refused_engine_into_one_clear_error(tmp_path, monkeypatch):
    """TensorRT's deserializer returns None on a mismatch; that must not surface as an AttributeError later."""
    plan = fake_engine(tmp_path)
    monkeypatch.setattr(trt_runtime, 'require_gpu', lambda hint='': ('NVIDIA H100 80GB HBM3', '9.0'))
    monkeypatch.setattr(trt_runtime, 'import_tensorrt', lambda hint='': _fake_tensorrt())
    with pytest.raises(EngineRecordError, match='could not deserialize model.fp32.plan'):
        load_engine(plan)
    monkeypatch.setattr(trt_runtime, 'import_tensorrt', lambda hint='': _fake_tensorrt(version='11.0.0'))
    with pytest.raises(EngineRecordError, match='built with TensorRT 10.7.0'):
        load_engine(plan)


def test_verify_cli_reports_a_record_mismatch_in_one_line(tmp_path, capsys):
    plan = fake_engine(tmp_path)
    plan.write_bytes(b'tampered')
    code, out, err = cli(['--verify', plan], capsys)
    assert code == 1 and len(err) == 1 and 'does not match its build record' in err[0]


def test_runner_without_gpu_is_unavailable_with_the_reason(tmp_path):
    from benchmarks.backends.tensorrt_runner import TensorRTRunner
    with pytest.raises(BackendUnavailable, match='CUDA devices only'):
        TensorRTRunner(fake_engine(tmp_path), device='cpu')
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='needs an NVIDIA GPU'):
            TensorRTRunner(fake_engine(tmp_path))


class ErrorCode(IntEnum):  # nvonnxparser::ErrorCode
    SUCCESS = 0
    INTERNAL_ERROR = 1
    INVALID_VALUE = 2
    INVALID_GRAPH = 3
    INVALID_NODE = 4
    UNSUPPORTED_GRAPH = 5
    UNSUPPORTED_NODE = 6


class _ParserError:
    """nvonnxparser::IParserError as the Python bindings expose it (10.0+): an enum code, node -1 when the error is
    not tied to a node."""

    def __init__(self, node, desc, name='', operator='', code=ErrorCode.UNSUPPORTED_NODE):
        self._node, self._desc, self._name, self._operator, self._code = node, desc, name, operator, code

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._operator

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc


# The creation flags of the two layouts TensorRT has shipped: in 10, EXPLICIT_BATCH (ignored) is bit 0 and
# STRONGLY_TYPED bit 1 (flags = 2); in 11, STRONGLY_TYPED is bit 0 (flags = 1).
LAYOUTS = {
    '10.13.0': IntEnum('NetworkDefinitionCreationFlag', {'EXPLICIT_BATCH': 0, 'STRONGLY_TYPED': 1}),
    '11.1.0': IntEnum('NetworkDefinitionCreationFlag', {'STRONGLY_TYPED': 0}),
}
BuilderFlag = IntEnum('BuilderFlag', {'DEBUG': 2, 'GPU_FALLBACK': 3, 'REFIT': 4, 'DISABLE_TIMING_CACHE': 5, 'TF32': 6})
ProfilingVerbosity = IntEnum('ProfilingVerbosity', {'LAYER_NAMES_ONLY': 0, 'NONE': 1, 'DETAILED': 2})
MemoryPoolType = IntEnum('MemoryPoolType', {'WORKSPACE': 0})


def host_memory(data: bytes) -> np.ndarray:
    """IHostMemory: a read-only buffer (memoryview works), not bytes."""
    return np.frombuffer(data, dtype=np.uint8)


def _recording_tensorrt(parse_errors=(), engine=b'serialized engine', version='10.13.0', profile_index=0,
                        cache_accepted=True, honours_flags=True):
    """A stand-in for the tensorrt module with the published signatures (positional arguments as the bindings
    name them, enums with TensorRT's values for ``version``'s layout) that records the build calls (the real one
    needs a GPU)."""
    calls = {}
    flags_enum = LAYOUTS[version]

    class Profile:
        def set_shape(self, input, min, opt, max):
            calls['profile'] = (input, min, opt, max)

    class Cache:
        def serialize(self):
            return host_memory(b'timing cache')

    class Config:
        def __init__(self):
            self.flags = {BuilderFlag.TF32}  # TF32 is on by default
            self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag: BuilderFlag):
            self.flags.add(BuilderFlag(flag))

        def clear_flag(self, flag: BuilderFlag):
            self.flags.discard(BuilderFlag(flag))

        def get_flag(self, flag: BuilderFlag) -> bool:
            return BuilderFlag(flag) in self.flags

        def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int):
            calls['workspace'] = (MemoryPoolType(pool), pool_size)

        def add_optimization_profile(self, profile: Profile) -> int:
            calls['config'] = self
            return profile_index

        def create_timing_cache(self, serialized_timing_cache: bytes):
            calls['cache_in'] = serialized_timing_cache
            return Cache()

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            calls['ignore_mismatch'] = ignore_mismatch
            return cache_accepted

        def get_timing_cache(self):
            return Cache()

    class Network:
        def __init__(self, flags: int):
            self.flags = flags

        def get_flag(self, flag) -> bool:
            return bool(self.flags >> int(flags_enum(flag)) & 1)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags: int = 0):
            calls['network_flags'] = flags
            return Network(flags if honours_flags else 0)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            calls['network'] = network
            return None if engine is None else host_memory(engine)

    class OnnxParser:
        num_errors = len(parse_errors)

        def __init__(self, network: Network, logger):
            pass

        def parse(self, model: bytes, path: str = None) -> bool:
            calls['parsed'] = (len(model), path)
            return not parse_errors

        def get_error(self, index: int) -> _ParserError:
            return _ParserError(*parse_errors[index])

    trt = _fake_tensorrt(version=version)
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag, trt.BuilderFlag = flags_enum, BuilderFlag
    trt.ProfilingVerbosity, trt.MemoryPoolType = ProfilingVerbosity, MemoryPoolType
    return trt, calls


@pytest.fixture
def recording_build(monkeypatch):
    def use(**kwargs):
        trt, calls = _recording_tensorrt(**kwargs)
        monkeypatch.setattr(trt_runtime, 'require_gpu', lambda hint='': ('NVIDIA H100 80GB HBM3', '9.0'))
        monkeypatch.setattr(trt_runtime, 'import_tensorrt', lambda hint='': trt)
        return calls
    return use


@pytest.mark.parametrize('version, flags', [('10.13.0', 2), ('11.1.0', 1)])
def test_build_sequence_writes_engine_record_and_timing_cache(tmp_path, recording_build, version, flags):
    """The build's bookkeeping under both enum layouts, with TensorRT's calls recorded rather than run (the GPU
    test runs them): a strongly typed network (the flag from the enum, never a constant), TF32 off for fp32."""
    calls = recording_build(version=version)
    onnx_path = tiny_convnet(tmp_path)
    (tmp_path / 'caches').mkdir()
    cache = tmp_path / 'caches' / 'timing.cache'
    cache.write_bytes(b'earlier cache')
    result = build_engine(onnx_path, tmp_path / 'out' / 'model.fp32.plan', BatchProfile(2, 4, 16),
                          timing_cache=cache, workspace_gb=0.5)
    assert calls['network_flags'] == flags and calls['network'].get_flag(LAYOUTS[version].STRONGLY_TYPED)
    assert not calls['config'].get_flag(BuilderFlag.TF32) and result.record['tf32'] is False
    assert calls['config'].profiling_verbosity == ProfilingVerbosity.DETAILED
    assert calls['parsed'] == (onnx_path.stat().st_size, str(onnx_path.resolve()))
    assert calls['profile'] == ('input', [2, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8])
    assert calls['workspace'] == (MemoryPoolType.WORKSPACE, 1 << 29)
    assert calls['cache_in'] == b'earlier cache' and calls['ignore_mismatch'] is False
    assert cache.read_bytes() == b'timing cache'
    assert result.plan.read_bytes() == b'serialized engine'
    record = read_record(result.plan)
    assert record == result.record and record['tensorrt_version'] == version
    assert record['precision'] == 'fp32' and record['gpu'] == {'name': 'NVIDIA H100 80GB HBM3', 'compute_capability': '9.0'}
    assert record['input'] == {'name': 'input', 'min': [2, 3, 8, 8], 'opt': [4, 3, 8, 8], 'max': [16, 3, 8, 8]}
    assert record['onnx']['sha256'] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sorted(p.name for p in result.plan.parent.iterdir()) == ['model.fp32.plan', 'model.fp32.plan.json']


def test_a_reduced_precision_engine_keeps_tf32_and_says_so(tmp_path, recording_build):
    calls = recording_build()
    fp16 = tmp_path / 'model.fp16.onnx'
    from export.onnx.fp16 import to_fp16
    onnx.save(to_fp16(onnx.load(str(tiny_convnet(tmp_path)))), str(fp16))
    result = build_engine(fp16, tmp_path / 'out' / 'model.fp16.plan', BatchProfile(1, 1, 2))
    assert result.record['precision'] == 'fp16' and result.record['tf32'] is True
    assert calls['config'].get_flag(BuilderFlag.TF32)


def test_a_weakly_typed_network_is_refused(tmp_path, recording_build, capsys):
    recording_build(honours_flags=False)
    code, out, err = cli(['--onnx', tiny_convnet(tmp_path), '--output', tmp_path / 'out' / 'm.plan'], capsys)
    assert code == 1 and len(err) == 1 and 'did not create a strongly typed network' in err[0]


def test_build_reports_every_parser_error_in_one_line_and_writes_nothing(tmp_path, recording_build, capsys):
    recording_build(parse_errors=[(0, 'Conv: unsupported padding', '/features/conv0/Conv', 'Conv'),
                                  (-1, 'opset 99 is not supported', '', '', ErrorCode.UNSUPPORTED_GRAPH)])
    onnx_path = tiny_convnet(tmp_path)
    code, out, err = cli(['--onnx', onnx_path, '--output', tmp_path / 'out' / 'm.plan'], capsys)
    assert code == 1 and len(err) == 1
    assert ("node 0 '/features/conv0/Conv' (Conv): unsupported node: Conv: unsupported padding; "
            "the graph: unsupported graph: opset 99 is not supported") in err[0]
    assert 'ErrorCode' not in err[0] and 'node -1' not in err[0]
    assert list((tmp_path / 'out').iterdir()) == []  # checked writable before the build; no file in it


@pytest.mark.parametrize('failure, message', [
    ({'engine': None}, 'could not build an engine'),
    ({'profile_index': -1}, 'rejected the batch profile'),
    ({'cache_accepted': False}, 'was written for another GPU or TensorRT version')])
def test_failed_build_writes_nothing(tmp_path, recording_build, capsys, failure, message):
    recording_build(**failure)
    onnx_path = tiny_convnet(tmp_path)
    cache = tmp_path / 'timing.cache'
    if 'cache_accepted' in failure:
        cache.write_bytes(b'a cache of TensorRT 10.7')
    code, out, err = cli(['--onnx', onnx_path, '--output', tmp_path / 'out' / 'm.plan', '--timing-cache', cache],
                         capsys)
    assert code == 1 and len(err) == 1 and message in err[0], err
    assert list((tmp_path / 'out').iterdir()) == []
    assert cache.read_bytes() == b'a cache of TensorRT 10.7' if 'cache_accepted' in failure else not cache.exists()


# ------------------------------------------------------------------------------ on an NVIDIA GPU with TensorRT


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_GPU_TRT, reason='needs an NVIDIA GPU and TensorRT (pip install .[trt])')
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'int8'])
def test_engine_build_record_and_runner(real_graphs, trained_model, tmp_path, precision, capsys):
    """A real engine per precision, judged by the project's own gate against PyTorch fp32 on the 256 parity views
    of the photographs, and its layers' data types read back from the engine inspector: an int8 engine that
    silently ran in fp32 (or an fp32 engine in TF32) fails here."""
    from alexnet_zoo.data import parity_views
    from benchmarks.run.harness import infer_in_batches
    from benchmarks.backends.tensorrt_runner import TensorRTRunner
    from export.parity import compare, judge

    onnx_path, plan, cache = real_graphs[precision], tmp_path / f'model.{precision}.plan', tmp_path / 'timing.cache'
    code, out, err = cli(['--onnx', onnx_path, '--output', plan, '--min-batch', 1, '--opt-batch', 8,
                          '--max-batch', 8, '--timing-cache', cache], capsys)
    assert code == 0, err
    assert plan.is_file() and cache.is_file() and cache.stat().st_size > 0
    record = json.loads(record_path(plan).read_text())
    import tensorrt
    assert record['tensorrt_version'] == tensorrt.__version__ and record['precision'] == precision
    name, chw = input_chw(read_onnx(onnx_path))  # the graph's own size (the fixture's 67 x 67, not AlexNet's 227)
    assert record['input'] == {'name': name, 'min': [1, *chw], 'opt': [8, *chw], 'max': [8, *chw]}
    assert record['onnx']['sha256'] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert record['tf32'] is (precision != 'fp32')
    assert cli(['--verify', plan], capsys)[0] == 0

    _, views, _ = parity_views(trained_model)
    with torch.no_grad():
        reference = trained_model(views).numpy()
    with TensorRTRunner(plan, device=f'cuda:{torch.cuda.current_device()}') as runner:
        assert runner.precision == precision
        logits = infer_in_batches(runner, views.numpy(), (1, 8))
        again = runner.fetch(runner.run(runner.prepare(views.numpy()[:8])))
        datatypes = runner.layer_datatypes()
        layers = engine_layers(runner)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:8], again)
    verdict = judge(precision, compare(reference, logits), trained=True)
    assert verdict['passed'], (precision, verdict)
    expected = {'fp32': 'float', 'fp16': 'half', 'int8': 'int8'}[precision]
    assert datatypes[expected] > 0, datatypes
    if precision == 'fp32':
        assert not datatypes['int8'] and not datatypes['half'], datatypes
    if precision == 'int8':  # every layer the graph quantized runs in int8, not just one tensor somewhere
        assert not float_quantized_layers(read_onnx(onnx_path), layers), layers


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_GPU_TRT, reason='needs an NVIDIA GPU and TensorRT (pip install .[trt])')
def test_runner_refuses_another_device_in_one_line(real_graphs, tmp_path):
    from benchmarks.backends.tensorrt_runner import TensorRTRunner
    plan = build_engine(real_graphs['fp32'], tmp_path / 'model.fp32.plan', BatchProfile(1, 1, 1)).plan
    other = torch.cuda.current_device() + 1
    with pytest.raises(ValueError, match=f'runs on the current CUDA device .*CUDA_VISIBLE_DEVICES={other}'):
        TensorRTRunner(plan, device=f'cuda:{other}')

WEIGHTED_OPS = {'Conv', 'ConvTranspose', 'Gemm', 'MatMul'}


def quantized_weighted_nodes(graph: onnx.ModelProto) -> list:
    """The weighted nodes (Conv, Gemm, MatMul) whose weights the graph quantizes (an input through DequantizeLinear
    of an initializer, or of a QuantizeLinear of one): the layers a strongly typed int8 engine must run in int8."""
    initializers = {t.name for t in graph.graph.initializer}
    producer = {out: node for node in graph.graph.node for out in node.output}

    def quantized_weight(name: str) -> bool:
        dq = producer.get(name)
        if dq is None or dq.op_type != 'DequantizeLinear':
            return False
        source = dq.input[0]
        q = producer.get(source)
        return source in initializers or (q is not None and q.op_type == 'QuantizeLinear' and q.input[0] in initializers)
    return [node.name for node in graph.graph.node
            if node.op_type in WEIGHTED_OPS and any(quantized_weight(name) for name in node.input[1:])]


def _onnx_names(layer: dict) -> set:
    """The ONNX nodes an engine layer runs: its name's parts (fused layers join them with ' + ') and, with detailed
    profiling, the ``[ONNX Layer: name]`` entries of its Metadata."""
    names = set(str(layer.get('Name', '')).split(' + '))
    return names | set(re.findall(r'\[ONNX Layer: ([^\]]+)\]', str(layer.get('Metadata', ''))))


def float_quantized_layers(graph: onnx.ModelProto, layers: list) -> list:
    """What the engine inspector's layers (detailed verbosity, JSON) say against the graph's int8 promise: each
    quantized weighted node lands in a layer whose weights are Int8 (a layer that holds no weights of its own, such
    as a matrix product fed by a constant, must read Int8 inputs). Returns one line per node that does not."""
    from benchmarks.backends.tensorrt_runner import datatype_of
    problems = []
    for node in quantized_weighted_nodes(graph):
        covering = [layer for layer in layers if isinstance(layer, dict) and node in _onnx_names(layer)]
        if not covering:
            problems.append(f'{node}: in no engine layer')
        for layer in covering:
            weights = layer.get('Weights')
            kinds = {datatype_of(str(weights.get('Type', '')))} if isinstance(weights, dict) else \
                {datatype_of(str(t.get('Format/Datatype', ''))) for t in layer.get('Inputs', [])}
            if 'int8' not in kinds:
                problems.append(f'{node}: layer {layer.get("Name")!r} runs in {sorted(kinds)}')
    return problems


def engine_layers(runner) -> list:
    """The engine inspector's layers (JSON; the engine is built with detailed profiling verbosity)."""
    import tensorrt as trt
    inspector = runner.engine.create_engine_inspector()
    for attribute in ('execution_context', 'context'):  # 11 renamed the property
        if hasattr(inspector, attribute):
            setattr(inspector, attribute, runner.context)
            break
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get('Layers', [])


def test_the_int8_engine_check_can_fail(real_graphs):
    """The GPU test's int8 check on the inspector's layers as TensorRT's documentation prints them: every quantized
    conv and FC layer of the exported graph found in an Int8 layer passes; one left in float, one missing, and a
    graph without Q/DQ (nothing to check would pass anything) do not."""
    graph = read_onnx(real_graphs['int8'])
    nodes = quantized_weighted_nodes(graph)
    weighted = [n.name for n in graph.graph.node if n.op_type in WEIGHTED_OPS]
    assert nodes and set(nodes) <= set(weighted) and not quantized_weighted_nodes(read_onnx(real_graphs['fp32']))
    int8 = 'Thirty-two wide channel vectorized row major Int8 format.'
    layers = [{'Name': f'{node} + /relu', 'LayerType': 'CaskConvolution', 'ParameterType': 'Convolution',
               'Inputs': [{'Format/Datatype': int8}], 'Weights': {'Type': 'Int8', 'Count': 64}} for node in nodes[1:]]
    layers.append({'Name': 'myelin', 'Metadata': f'[ONNX Layer: {nodes[0]}]', 'Inputs': [{'Format/Datatype': int8}]})
    assert float_quantized_layers(graph, layers) == []
    layers[-1]['Inputs'] = [{'Format/Datatype': 'Row major linear FP32 format (kLINEAR)'}]
    assert float_quantized_layers(graph, layers) == [f"{nodes[0]}: layer 'myelin' runs in ['float']"]
    layers[0]['Weights']['Type'] = 'Float'
    assert f"{nodes[1]}: layer '{nodes[1]} + /relu' runs in ['float']" in float_quantized_layers(graph, layers)
    assert f'{nodes[2]}: in no engine layer' in float_quantized_layers(graph, layers[:1] + layers[2:])


# ------------------------------------------------------------------------- type check against TensorRT's stubs

TYPE_CHECKED = ['export/trt/build.py', 'export/trt/runtime.py', 'benchmarks/backends/tensorrt_runner.py']


def loadable_stubs(tmp_path: Path) -> Path:
    """A copy of the tensorrt-stubs the Makefile installed, with the few lines its generator wrote that Python
    cannot parse (a parameter named ``in``, a parameter without default after one with) made parseable: mypy
    stops at the first syntax error of an imported stub."""
    import ast
    import re
    import shutil
    installed = Path(sys.prefix) / 'trt-stubs'
    if not (installed / 'tensorrt_bindings' / 'tensorrt.pyi').is_file():
        pytest.skip(f'TensorRT stubs not installed in {installed} (the Makefile installs tensorrt-stubs there)')
    stubs = tmp_path / 'stubs'
    shutil.copytree(installed, stubs)
    path = stubs / 'tensorrt_bindings' / 'tensorrt.pyi'
    lines = path.read_text().split('\n')
    for _ in range(100):
        try:
            ast.parse('\n'.join(lines))
            break
        except SyntaxError as e:
            line = lines[e.lineno - 1]
            fixed = re.sub(r'([(,]\s*)(in|from|is|not|and|or|lambda|class|def|return)(\s*:)', r'\1\2_\3', line)
            if fixed == line:  # a parameter without a default after one with: give it one
                head, params, tail = re.match(r'(\s*def \w+\()(.*)(\)\s*->.*)$', line).groups()
                seen, out = False, []
                for p in (p.strip() for p in params.split(', ')):
                    seen |= '=' in p
                    out.append(p + ' = ...' if seen and '=' not in p and not p.startswith('*') else p)
                fixed = head + ', '.join(out) + tail
            assert fixed != line, (e.lineno, e.msg, line)
            lines[e.lineno - 1] = fixed
    path.write_text('\n'.join(lines))
    return stubs


def mypy(files, cwd: Path, stubs: Path, cache: Path, monkeypatch):
    """mypy on ``files`` against the stubs, with an incremental cache kept between runs (pytest's cache folder)."""
    api = pytest.importorskip('mypy.api', reason='mypy is not installed (the dev extra has it)')
    monkeypatch.setenv('MYPYPATH', str(stubs))
    monkeypatch.chdir(cwd)
    out, err, code = api.run([*files, '--config-file', str(REPO / 'pyproject.toml'), '--cache-dir', str(cache)])
    return code, out + err


@pytest.mark.slow
def test_tensorrt_calls_type_check_against_the_published_stubs(tmp_path, monkeypatch, request):
    """Every TensorRT call of the builder, the runtime and the runner against TensorRT 10.13's published stubs:
    a misspelt method or a wrong argument fails here, not on the first GPU. The check can fail: the same code
    with one call misspelt and one argument too many does."""
    import shutil
    stubs = loadable_stubs(tmp_path)
    cache = request.config.cache.mkdir('mypy') if getattr(request.config, 'cache', None) else tmp_path / 'mypy-cache'
    code, out = mypy(TYPE_CHECKED, REPO, stubs, cache, monkeypatch)
    assert code == 0, out
    broken = tmp_path / 'broken'
    for package in ('export', 'benchmarks'):
        shutil.copytree(REPO / package, broken / package, ignore=shutil.ignore_patterns('__pycache__'))
    build = broken / 'export' / 'trt' / 'build.py'
    text = build.read_text()
    assert 'builder.create_builder_config()' in text and 'config.clear_flag(trt.BuilderFlag.TF32)' in text
    build.write_text(text.replace('builder.create_builder_config()', 'builder.create_builder_confg()')
                     .replace('network.get_flag(strongly_typed)', 'network.get_flag(strongly_typed, True)'))
    code, out = mypy(TYPE_CHECKED, broken, stubs, cache, monkeypatch)
    assert code == 1 and 'create_builder_confg' in out and 'get_flag' in out, out
