"""The benchmark harness: parity figures on known arrays, latency bookkeeping, every CPU runner against PyTorch,
a real ``python -m benchmarks --quick`` run checked against the report schema, ``--compare``, and bad input."""
import json
import re
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_zoo.cli import UsageError, run_cli
from alexnet_zoo.data import parity_views, sample_batch
from alexnet_zoo.samples import PHOTOGRAPHS, photographs
from benchmarks.__main__ import main
from alexnet_zoo.stats import flops_per_image
from benchmarks.measure.environment import cpu_has_amx
from benchmarks.run.harness import infer_in_batches, tile
from benchmarks.measure.latency import summarize, time_runner
from benchmarks.backends.onnxruntime_runner import OnnxRuntimeRunner
from benchmarks.backends.openvino_runner import OpenVINORunner
from benchmarks.backends.registry import Spec, parse_batch_sizes, parse_list, plan
from benchmarks.report.plots import PLOTS
from benchmarks.report.files import read_report
from benchmarks.report.schema import SCHEMA_VERSION
from benchmarks.backends.torch_runner import TorchRunner
from export import parity
from export.runner import BackendUnavailable, Runner

REPO = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
LATENCY_KEYS = {'mean', 'std', 'min', 'p50', 'p90', 'p95', 'p99', 'max'}
PARITY_KEYS = {'reference', 'views', 'max_abs_err', 'max_rel_err', 'sqnr_db', 'identical', 'nonfinite', 'cosine_min',
               'top1_agreement', 'top5_agreement', 'near_tie_margin', 'near_ties', 'near_tie_flips',
               'decisive_top1_agreement', 'judged', 'passed', 'reference_max_abs'}
ACCURACY_KEYS = {'accuracy_top1', 'reference_accuracy_top1', 'accuracy_views'}  # in 'parity' with labels


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def graphs(quick_run):
    """fp32 and int8 graphs of the trained model, written by export.onnx during the quick run."""
    proc, _, folder = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {'fp32': folder / 'model.onnx', 'int8': folder / 'model.int8.onnx'}


@pytest.fixture(scope='module')
def photo_batch(trained_model):
    return sample_batch(trained_model)[1].numpy()


@pytest.fixture(scope='module')
def reference(trained_model, photo_batch):
    with torch.inference_mode():
        return trained_model(torch.from_numpy(photo_batch)).numpy()


# ------------------------------------------------------------------------------------ parity on known arrays


def test_compare_identical_logits():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    figures = parity.compare(ref, ref.copy())
    assert figures['max_abs_err'] == 0 and figures['max_rel_err'] == 0
    assert figures['sqnr_db'] == math.inf
    assert figures['cosine_min'] == pytest.approx(1.0)
    assert figures['top1_agreement'] == 1.0 and figures['top5_agreement'] == 1.0


def test_compare_known_noise():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    figures = parity.compare(ref, ref + 0.1)
    assert figures['max_abs_err'] == pytest.approx(0.1)
    assert figures['max_rel_err'] == pytest.approx(0.05)  # 0.1 / max|logit| of the second row (2)
    assert figures['sqnr_db'] == pytest.approx(10 * math.log10(15 / 0.06))  # sum ref^2 = 15, sum d^2 = 6 x 0.01
    assert figures['top1_agreement'] == 1.0


def test_compare_top1_and_top5_agreement():
    ref = np.array([[3.0, 1.0, 0.0, 0, 0, 0], [0.0, 2.0, 1.0, 0, 0, 0]])
    swapped = np.array([[1.0, 3.0, 0.0, 0, 0, 0], [0.0, 2.0, 1.0, 0, 0, 0]])
    figures = parity.compare(ref, swapped)
    assert figures['top1_agreement'] == 0.5
    assert figures['top5_agreement'] == 1.0
    assert figures['cosine_min'] == pytest.approx(0.6)  # (3 + 3) / (sqrt(10) sqrt(10))


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        parity.compare(np.zeros((2, 3)), np.zeros((2, 4)))


def test_judge_gates():
    """One rule for every network: agreement (or, with labels, accuracy) on the decisive views, at least 100 of
    them; the SQNR is reported, not gated; fp16 also needs fp32's logits inside its range."""
    good_int8 = {'decisive_top1_agreement': 0.99, 'sqnr_db': 25.0, 'max_rel_err': 0.05, 'nonfinite': 0,
                 'views': 256, 'near_ties': 100, 'reference_max_abs': 12.0}
    assert parity.judge('int8', good_int8, trained=False) == {'judged': False, 'passed': None}
    assert parity.judge('int8', good_int8, trained=True) == {'judged': True, 'passed': True}
    assert parity.judge('int8', {**good_int8, 'sqnr_db': 10.0}, trained=True)['passed'] is True  # no SQNR floor
    assert parity.judge('int8', {**good_int8, 'decisive_top1_agreement': 0.98}, trained=True)['passed'] is False
    few = {**good_int8, 'near_ties': 157}  # 99 of 256 decisive: the verdict would rest on too few views
    assert parity.judge('int8', few, trained=True)['passed'] is False
    assert '99 of 256 views decisive (< 100): the error (SQNR 25.0 dB)' in parity.gate_failure('int8', few)
    assert parity.judge('int8', {**few, 'near_ties': 156}, trained=True)['passed'] is True
    assert parity.min_decisive(18) == 9 and parity.min_decisive(256) == 100  # a small set: half of its views
    labelled = {**good_int8, 'decisive_top1_agreement': 0.9, 'accuracy_top1': 0.95, 'reference_accuracy_top1': 0.94}
    assert parity.judge('int8', labelled, trained=True)['passed'] is True  # accuracy kept: agreement not required
    # with labels, the resolution is the labelled decisive views' (a benchmark's --data views beside the photographs'):
    # EfficientNet-Lite0's int8 on ONNX Runtime, 99 of the photographs' 256 views decisive and 144 labelled ones
    lite0 = {**labelled, 'near_ties': 157, 'accuracy_views': 144}
    assert parity.judge('int8', lite0, trained=True)['passed'] is True
    assert parity.judge('int8', {**lite0, 'accuracy_views': 99}, trained=True)['passed'] is False
    assert '99 of 256 labelled views decisive (< 100)' in parity.gate_failure('int8', {**lite0, 'accuracy_views': 99})
    fp16 = {**good_int8, 'decisive_top1_agreement': 1.0, 'sqnr_db': 30.0}
    assert parity.judge('fp16', fp16, True)['passed'] is True
    assert parity.judge('fp16', {**fp16, 'reference_max_abs': 7e4}, True)['passed'] is False  # beyond 65504
    assert parity.judge('fp16', {**fp16, 'decisive_top1_agreement': 0.99}, True)['passed'] is False
    assert parity.judge('fp32', {'decisive_top1_agreement': 1.0, 'sqnr_db': 90.0, 'max_rel_err': 2e-4}, True)['passed'] is False


def test_near_ties_are_counted_and_set_aside():
    """A view whose margin is below twice the candidate's typical (95th percentile) max error may flip without
    the candidate being at fault; a decisive view that flips counts against agreement."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10)) * 3
    ref[:, 0] = ref.max(axis=1) + 4.0  # class 0 wins every view by at least 4
    ref[0, 1] = ref[0, 0] - 0.01  # view 0: a near-tie, margin 0.01
    cand = ref + rng.normal(scale=0.05, size=ref.shape)
    cand[0, 1] = cand[0, 0] + 0.02  # ... which the candidate flips
    figures = parity.compare(ref, cand)
    assert figures['views'] == 200 and figures['near_ties'] == 1 and figures['near_tie_flips'] == 1
    assert figures['top1_agreement'] == pytest.approx(199 / 200) and figures['decisive_top1_agreement'] == 1.0
    assert 0.1 < figures['near_tie_margin'] < 0.5
    cand[5, 2] = cand[5, 0] + 1.0  # a decisive view (margin >= 4) flipped by one large error
    figures = parity.compare(ref, cand)
    assert figures['decisive_top1_agreement'] == pytest.approx(198 / 199)
    assert 'top-1 99.5 % < 100.0 %' in parity.gate_failure('fp32', figures)


def test_non_finite_logits_are_never_exact():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    for bad in (np.nan, np.inf):
        cand = ref.copy()
        cand[1, 2] = bad
        figures = parity.compare(ref, cand)
        assert figures['nonfinite'] == 1 and not figures['identical'] and math.isnan(figures['sqnr_db'])
        assert parity.sqnr_text(figures) == 'non-finite'
        assert parity.judge('fp16', figures, trained=True)['passed'] is False
        assert '1 non-finite logits' in parity.gate_failure('fp16', figures)
    assert parity.sqnr_text(parity.compare(ref, ref.copy())) == 'exact'


def test_accuracy_gate_is_relative_to_the_reference():
    figures = {'decisive_top1_agreement': 1.0, 'sqnr_db': 40.0, 'max_rel_err': 0.01, 'nonfinite': 0,
               'views': 256, 'near_ties': 20, 'reference_accuracy_top1': 0.90}
    assert parity.judge('int8', {**figures, 'accuracy_top1': 0.892}, True)['passed'] is True  # 99.1 % of 0.90
    failed = {**figures, 'accuracy_top1': 0.88}
    assert parity.judge('int8', failed, True)['passed'] is False
    assert 'accuracy 88.0 % < 99 % of fp32\'s 90.0 %' in parity.gate_failure('int8', failed)


def test_margin_std():
    logits = np.array([[2.0, 0.0, 0.0, 0.0]])  # margin 2, std sqrt(0.75)
    assert parity.margin_std(logits) == pytest.approx(2 / math.sqrt(0.75))


# ---------------------------------------------------------------------------------------- harness helpers


class RecordingRunner(Runner):
    """Logits = per-image sums; records every batch size it is given and every run."""
    backend = 'recording'

    def __init__(self):
        self.batches, self.runs = [], 0

    def prepare(self, x):
        self.batches.append(len(x))
        return x

    def run(self, prepared):
        self.runs += 1
        return np.stack([prepared.sum(axis=(1, 2, 3)), prepared.mean(axis=(1, 2, 3))], axis=1)


@pytest.mark.parametrize('count, sizes, expected', [
    (19, (1, 32), [32]),
    (19, (1,), [1] * 19),
    (19, (8,), [8, 8, 8]),
    (40, (1, 32), [32, 32]),
])
def test_infer_in_batches_uses_only_benchmarked_sizes(count, sizes, expected):
    x = np.random.default_rng(0).normal(size=(count, 3, 4, 4)).astype(np.float32)
    runner = RecordingRunner()
    logits = infer_in_batches(runner, x, sizes)
    assert runner.batches == expected
    np.testing.assert_allclose(logits, runner.run(x), rtol=1e-6)


def test_tile_repeats_real_images():
    x = np.arange(3)[:, None, None, None] * np.ones((3, 1, 2, 2))
    assert tile(x, 7)[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_time_runner_counts_warmup_and_timed_runs():
    runner = RecordingRunner()
    times = time_runner(runner, np.zeros((1, 1, 1, 1)), warmup_iters=2, warmup_s=0, min_iters=7, min_time_s=0)
    assert len(times) == 7 and runner.runs == 9
    assert all(t >= 0 for t in times)


def test_summarize_known_times():
    s = summarize([1.0, 2.0, 3.0, 4.0], batch_size=2)
    assert s['latency_ms']['mean'] == 2.5 and s['latency_ms']['min'] == 1 and s['latency_ms']['max'] == 4
    assert s['latency_ms']['p50'] == 2.5 and set(s['latency_ms']) == LATENCY_KEYS
    assert s['throughput_ips'] == pytest.approx(2 * 4 / 0.010)
    assert s['iterations'] == 4


def test_parse_lists_and_batch_sizes():
    assert parse_list('openvino, torch', ('torch', 'openvino'), 'backend') == ('openvino', 'torch')
    assert parse_batch_sizes('32,1,32') == (1, 32)
    for bad in ('0', '-4', 'x', ''):
        with pytest.raises(UsageError):
            parse_batch_sizes(bad)
    with pytest.raises(UsageError, match='unknown backend'):
        parse_list('torch,nope', ('torch',), 'backend')


def test_plan_covers_every_combination():
    specs = plan(('torch', 'openvino', 'tensorrt'), ('fp32', 'bf16', 'int8'), gpu=False)
    assert ('torch', 'int8', 'cpu') in specs and ('tensorrt', 'fp32', 'cuda') in specs
    assert len(specs) == 9
    assert 'not supported' in Spec('torch', 'int8', 'cpu').unavailable()
    assert 'no bf16 graph' in Spec('onnxruntime', 'bf16', 'cpu').unavailable()
    assert Spec('openvino', 'fp32', 'cpu').unavailable() is None


@pytest.mark.skipif(HAS_GPU, reason='checks the reason given on a machine without a GPU')
def test_tensorrt_unavailable_without_gpu():
    assert 'GPU' in Spec('tensorrt', 'int8', 'cuda').unavailable()


# ------------------------------------------------------------------------------------------------- runners


def _check_runner(runner, x, reference, precision):
    """The interface: float32 (N, classes) logits; prepare/run/fetch is infer; agreement with PyTorch fp32."""
    logits = runner.infer(x)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    prepared = runner.prepare(x[:3])
    first, second = runner.fetch(runner.run(prepared)), runner.fetch(runner.run(prepared))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, logits[:3], rtol=1e-3, atol=1e-3 * np.abs(logits).max())
    figures = parity.compare(reference, logits)
    assert parity.judge(precision, figures, trained=True)['passed'], figures
    return figures


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason='needs a CUDA GPU')
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'bf16'])
def test_torch_runner_on_cuda(trained_model, photo_batch, reference, precision):
    """PyTorch on CUDA within each precision's gate against the CPU fp32 reference; fp32 without TF32 passes the
    fp32 gate (max error 1e-4 of the largest logit)."""
    with TorchRunner(trained_model, precision, 'cuda') as runner:
        _check_runner(runner, photo_batch, reference, precision)


def test_torch_runner(trained_model, photo_batch, reference):
    with TorchRunner(trained_model) as runner:
        figures = _check_runner(runner, photo_batch, reference, 'fp32')
    assert figures['max_abs_err'] < 1e-4


def test_the_profiler_prints_nothing_alarming(capfd):
    """The per-layer profile of a PyTorch row (PyTorch's profiler) leaves stderr free of its start/stop markers and,
    without a GPU, of its CUDA probe's 'ERROR' line (captured at the file descriptor: they come from C++)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    with TorchRunner(model) as runner:
        layers = runner.layer_times(np.zeros((1, 3, 8, 8), np.float32), runs=2)
    assert layers and any('conv' in layer['name'] for layer in layers), layers
    err = capfd.readouterr().err
    assert not re.search(r'error|USDT|fail', err, re.IGNORECASE), err


def test_torch_runner_unsupported_precisions(trained_model):
    """int8 is never a PyTorch row; fp16 is CUDA's only; bf16 runs on a CPU with AMX and is refused, saying why,
    on one without (each case asserted on whichever machine runs the test)."""
    with pytest.raises(BackendUnavailable, match='not supported'):
        TorchRunner(trained_model, 'int8')
    with pytest.raises(BackendUnavailable, match='CUDA only; no GPU here' if not HAS_GPU else 'see the cuda row'):
        TorchRunner(trained_model, 'fp16')
    assert (TorchRunner.available('bf16', 'cpu') is None) == cpu_has_amx()
    if not cpu_has_amx():
        with pytest.raises(BackendUnavailable, match='AMX'):
            TorchRunner(trained_model, 'bf16')


@pytest.mark.skipif(not cpu_has_amx(), reason='PyTorch bf16 rows need a CPU with AMX; this one has none')
def test_torch_runner_bf16(trained_model, photo_batch, reference):
    with TorchRunner(trained_model, 'bf16') as runner:
        _check_runner(runner, photo_batch, reference, 'bf16')


@pytest.mark.parametrize('precision', ['fp32', 'int8'])
def test_onnxruntime_runner(graphs, photo_batch, reference, precision):
    with OnnxRuntimeRunner(graphs[precision], precision, threads=2) as runner:
        _check_runner(runner, photo_batch, reference, precision)


def test_onnxruntime_runs_the_int8_graph_on_uint8_activations(graphs, photo_batch):
    """On the CPU, ONNX Runtime gets the int8 graph with uint8 activations (its u8s8 kernels) and each
    Q → DQ → ReLU → Q folded into one uint8 Quantize: no ReLU left, every activation zero point uint8 (0 where the
    tensor cannot be negative, else 128), the logits those of the graph on disk within int8's own noise, and the
    file on disk untouched (still symmetric int8, for TensorRT)."""
    import hashlib

    import onnx
    from onnx import TensorProto, numpy_helper

    from export.int8.uint8 import uint8_activations
    from export.ort_session import ort_session
    before = hashlib.sha256(graphs['int8'].read_bytes()).hexdigest()
    disk = onnx.load(str(graphs['int8']))
    assert sum(n.op_type == 'Relu' for n in disk.graph.node) == 8  # after 5 convolutions and 3 FC layers
    rewritten = uint8_activations(onnx.load(str(graphs['int8'])))
    nodes = rewritten.graph.node
    assert not [n for n in nodes if n.op_type == 'Relu']
    zero_points = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    activation_zps = [zero_points[n.input[2]] for n in nodes if n.op_type == 'QuantizeLinear']
    assert activation_zps and all(z.dtype == np.uint8 for z in activation_zps)
    assert {int(z) for z in activation_zps} == {0, 128}
    assert all(i.data_type != TensorProto.UINT8 for i in disk.graph.initializer)
    plain = ort_session(str(graphs['int8']), 2).run(['logits'], {'input': photo_batch})[0]
    with OnnxRuntimeRunner(graphs['int8'], 'int8', threads=2) as runner:
        fast = runner.infer(photo_batch)
    figures = parity.compare(plain, fast)
    assert figures['sqnr_db'] > 30 and figures['top1_agreement'] == 1.0, figures
    assert hashlib.sha256(graphs['int8'].read_bytes()).hexdigest() == before


@pytest.mark.slow  # a real process: what is checked is that it does not die
def test_openvino_runners_closed_in_any_order_leave_signal_handlers_working(tmp_path):
    """Two OpenVINO runners compiled, then closed and freed first-made first: a Python signal handler still runs
    (Ctrl-C's is one). With a Core per runner, OpenVINO's CPU plugin left the thread's signal stack on the first
    Core's freed stack, and the next handler died with SIGSEGV: a pytest-xdist worker died so, on SIGCHLD."""
    from onnx import TensorProto, helper, save
    graph = tmp_path / 'relu.onnx'
    save(helper.make_model(helper.make_graph(
        [helper.make_node('Relu', ['input'], ['logits'])], 'relu',
        [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3])],
        [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 3])]),
        opset_imports=[helper.make_opsetid('', 17)]), str(graph))
    script = f"""
import gc, os, signal
import numpy as np
from benchmarks.backends.openvino_runner import OpenVINORunner
first, second = OpenVINORunner({str(graph)!r}, threads=1), OpenVINORunner({str(graph)!r}, threads=1)
for runner in (first, second):
    runner.infer(np.ones((2, 3), np.float32))
first.close(); del first; gc.collect()
second.close(); del second; gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print('handled', flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
"""
    proc = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == 'handled\n', (proc.returncode, proc.stderr[-2000:])


def test_openvino_runs_the_int8_graph_as_onnx_runtime_does(graphs, photo_batch):
    """OpenVINO gets the same uint8-activation form of the int8 graph as ONNX Runtime (export.int8.uint8.cpu_graph),
    so the parity a row reports for either runtime is that of one graph: OpenVINO's logits lie nearer that form's
    than the symmetric file's (whose ReLU outputs have half the steps)."""
    from export.ort_session import ort_session
    from export.int8.uint8 import cpu_graph
    uint8 = ort_session(cpu_graph(graphs['int8'], 'int8'), 2).run(['logits'], {'input': photo_batch})[0]
    symmetric = ort_session(str(graphs['int8']), 2).run(['logits'], {'input': photo_batch})[0]
    with OpenVINORunner(graphs['int8'], 'int8', threads=2) as runner:
        ov = runner.infer(photo_batch)
    near, far = parity.compare(uint8, ov)['sqnr_db'], parity.compare(symmetric, ov)['sqnr_db']
    assert near > far + 3 and near > 30, (near, far)


@pytest.mark.parametrize('precision', ['fp32', 'int8'])
def test_openvino_runner(graphs, photo_batch, reference, precision):
    with OpenVINORunner(graphs[precision], precision, threads=2) as runner:
        _check_runner(runner, photo_batch, reference, precision)
        assert len(runner.compiled) == 2  # one static compilation per batch size seen (all images, then 3)


def test_openvino_bf16_needs_native_bf16(graphs):
    import openvino as ov
    if 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
        pytest.skip('this CPU has native bf16: the OpenVINO bf16 row runs here')
    with pytest.raises(BackendUnavailable, match='bf16'):
        OpenVINORunner(graphs['fp32'], 'bf16')


def test_openvino_bf16_runs_in_bf16_where_the_cpu_has_it(graphs, photo_batch, reference):
    """The precision hint takes effect: bf16 logits differ from fp32's as bf16 does (SQNR far below fp32's
    120+ dB) yet pass the bf16 gate."""
    reason = OpenVINORunner.available('bf16', 'cpu')
    if reason:
        pytest.skip(reason)
    with OpenVINORunner(graphs['fp32'], 'bf16') as bf16, OpenVINORunner(graphs['fp32'], 'fp32') as fp32:
        assert bf16.config['INFERENCE_PRECISION_HINT'] == 'bf16'
        low, full = bf16.infer(photo_batch), fp32.infer(photo_batch)
    assert parity.compare(reference, full)['sqnr_db'] > 100
    figures = parity.compare(reference, low)
    assert 40 <= figures['sqnr_db'] < 80, figures['sqnr_db']
    assert parity.judge('bf16', figures, trained=True)['passed']


def test_onnxruntime_cuda_unavailable_without_gpu(graphs):
    import onnxruntime
    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        pytest.skip('this onnxruntime has the CUDA EP')
    with pytest.raises(BackendUnavailable, match='CUDAExecutionProvider'):
        OnnxRuntimeRunner(graphs['fp32'], 'fp32', device='cuda')


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_GPU, reason='TensorRT needs an NVIDIA GPU; none here')
def test_tensorrt_runner(graphs, photo_batch, reference, tmp_path):
    pytest.importorskip('tensorrt', reason='TensorRT is not installed')
    from export.trt.build import BatchProfile, build_engine
    from benchmarks.backends.tensorrt_runner import TensorRTRunner
    built = build_engine(graphs['fp32'], tmp_path / 'model.fp32.plan', BatchProfile(1, 32, 32))
    with TensorRTRunner(built.plan) as runner:
        _check_runner(runner, photo_batch, reference, 'fp32')


def test_crosscheck_against_benchmark_app(graphs, monkeypatch):
    """benchmark_app (from the openvino wheel) and the harness on the same int8 graph, in the form the harness's
    runner runs it (uint8 activations); both figures reported."""
    from benchmarks import crosscheck as module
    from export.int8.uint8 import cpu_graph
    given = []
    real = module.run_benchmark_app
    monkeypatch.setattr(module, 'run_benchmark_app', lambda path, *args: given.append(path.read_bytes()) or real(
        path, *args))
    (row,) = module.crosscheck(graphs['int8'], batch_size=1, rounds=1, seconds=1)
    assert given == [cpu_graph(graphs['int8'], 'int8')]
    assert row['benchmark_app_ms'] > 0 and row['harness_ms'] > 0
    assert row['ratio'] == pytest.approx(row['harness_ms'] / row['benchmark_app_ms'])
    assert 0 <= row['overhead_ms'] < row['harness_ms']


def test_crosscheck_refuses_a_graph_that_names_no_model(tmp_path, capsys):
    """The graph's own model and input size, or one line saying they are missing: never another model's."""
    import onnx
    from onnx import TensorProto, helper
    from benchmarks import crosscheck
    from test_promises import one_error_line
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ['batch', 3, 8, 8])  # noqa: E731
    graph = helper.make_graph([helper.make_node('Identity', ['input'], ['logits'])], 'g', [value('input')],
                              [value('logits')])
    path = tmp_path / 'model.onnx'
    onnx.save_model(helper.make_model(graph), str(path))
    with pytest.raises(SystemExit) as exit_:
        run_cli(crosscheck.main, ['--onnx', str(path)])
    line = one_error_line(capsys.readouterr().err)
    assert exit_.value.code == 1 and line == f'error: {path} names no model_name in its metadata (export it with ' \
                                             f'python -m export.onnx)'


# ------------------------------------------------------------------------------------------ the whole command


def check_schema(report: dict, ceilings_measured: bool = True):
    assert report['schema_version'] == SCHEMA_VERSION
    env = report['environment']
    for key in ('cpu', 'memory_gb', 'os', 'python', 'packages', 'gpu'):
        assert key in env
    assert env['cpu']['model'] and env['cpu']['logical_cores'] >= 1
    assert {'torch', 'onnxruntime', 'openvino'} <= set(env['packages'])
    assert report['results'], 'no result rows'
    for row in report['results']:
        for key in ('backend', 'precision', 'device', 'batch_size', 'latency_ms', 'throughput_ips', 'iterations',
                    'parity', 'parity_fp64'):
            assert key in row, key
        assert set(row['latency_ms']) == LATENCY_KEYS
        lat = row['latency_ms']
        assert 0 < lat['min'] <= lat['p50'] <= lat['p90'] <= lat['p95'] <= lat['p99'] <= lat['max']
        assert row['throughput_ips'] > 0 and row['iterations'] >= 1
        rounds = report['settings']['timing']['rounds']
        assert len(row['round_medians_ms']) == rounds
        low, high = row['median_ci95_rounds_ms']
        assert min(row['round_medians_ms']) <= low <= row['median_ms'] <= high <= max(row['round_medians_ms'])
        assert row['median_ci95_ms'][0] <= low and row['median_ci95_ms'][1] >= high  # widened by run-to-run
        assert row['cv'] >= 0 and row['iterations'] >= rounds * report['settings']['timing']['min_iters']
        if row['speedup_vs_torch_fp32'] is not None:
            assert row['speedup_ci95'][0] <= row['speedup_vs_torch_fp32'] <= row['speedup_ci95'][1]
        assert set(row['parity']) - ACCURACY_KEYS == PARITY_KEYS and row['parity']['reference'] == 'torch fp32'
        assert row['parity']['views'] >= 256
        assert set(row['parity_fp64']) - ACCURACY_KEYS == PARITY_KEYS
        assert row['parity_fp64']['reference'] == 'torch fp64'
        # both references judge the same task: accuracy on the labelled views where there are labels
        assert ('accuracy_views' in row['parity_fp64']) == ('accuracy_views' in row['parity'])
    assert report['model']['flops_per_image'] > 1e8  # the fixture's alexnet_bn at 67 x 67: 0.18 GFLOPs
    assert report['model']['activation_bytes'] > 0 and report['model']['activation_bytes_source']
    assert [s['module'] for s in report['model']['stages']][:1] == ['features.3']  # its feature_info
    ceilings = report['ceilings']
    if not ceilings_measured:  # an in-process run that skipped them (the no_ceilings fixture): said so, no roofline
        assert ceilings == {'error': 'not measured in this test'}
        assert all(not row['roofline'] for row in report['results'])
    else:
        cpu = ceilings['cpu']
        assert math.isfinite(cpu['memory']['dram']['bytes_per_s']) and cpu['memory']['dram']['bytes_per_s'] > 0
        assert cpu['memory']['dram']['working_set'] >= 4 * (cpu['memory']['llc_bytes'] or 0)
        fp32 = cpu['compute']['fp32']
        assert fp32['attainable'] == max(fp32['measured'].values()) > 0 and cpu['seconds'] < 20
        assert any(name.startswith('torch ') for name in fp32['measured'])  # more than one library
        assert any(name.startswith('OpenVINO ') for name in fp32['measured'])
        assert cpu['clock_ghz'] is None or fp32['documented'] > 0 and 'ops/cycle/core' in fp32['documented_basis']
    for row in report['results'] if ceilings_measured else ():
        f = row['roofline']
        if row['device'] != 'cpu':
            continue
        assert f and all(math.isfinite(v) and v > 0 for v in (f['ops_per_s'], f['bytes_per_s'], f['intensity'],
                                                               f['bound_ms'], f['times_bound']))
        assert f['bound'] in ('memory', 'compute') and row['weight_bytes'] > 1e6
        assert f['bytes'] > row['weight_bytes']  # weights and the batch's activations
        assert f['memory'] == ('llc' if f['bytes'] <= (cpu['memory']['llc_bytes'] or 0) else 'dram')
        # consistent: no row beats the attainable ceiling by more than the measurement's noise
        slowest = report['model']['flops_per_image'] * row['batch_size'] / (row['median_ci95_ms'][1] / 1e3)
        assert slowest <= 1.25 * f['attainable_ops_per_s'], (row['backend'], row['precision'], slowest, f)
        assert f['times_bound'] * f['bound_ms'] == pytest.approx(row['median_ms'])
    for fastest in report['summary']['fastest_passing'] if ceilings_measured else ():  # what bounds it, said
        assert fastest['bound'].startswith(f'{fastest["backend"]} {fastest["precision"]} b{fastest["batch_size"]}: ')
        assert '× its' in fastest['bound'] and 'most time in' in fastest['bound']
    timing = report['timing']
    assert len(timing['rows']) == len(report['results']) and len(timing['order']) == rounds
    assert all(sorted(visit) == list(range(len(report['results']))) for visit in timing['order'])
    assert set(report['noise']) >= {'steal', 'baseline_cv', 'round_noise', 'warnings', 'trusted'}
    for entry in report['skipped']:
        assert entry['backend'] and entry['precision'] and entry['reason']


def test_quick_run_report(quick_run, trained_model):
    proc, out, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / 'report.json').read_text())
    check_schema(report)
    rows = {(r['backend'], r['precision'], r['batch_size']) for r in report['results']}
    assert {('torch', 'fp32', 1), ('onnxruntime', 'fp32', 1), ('onnxruntime', 'int8', 1), ('openvino', 'fp32', 1),
            ('openvino', 'int8', 1)} <= rows
    assert report['model']['trained'] and report['summary']['passed'] is True
    assert report['model']['flops_per_image'] == flops_per_image(trained_model)
    assert report['graphs']['exported'] == [] and report['graphs']['reused']  # export.onnx's graphs, checked
    # --data holds the photographs under their label names: PyTorch's accuracy on views of them, computed here
    _, views, source = parity_views(trained_model)
    with torch.inference_mode():
        expected_top1 = float((trained_model(views).argmax(dim=1) == source).float().mean())
    assert report['data']['reference_accuracy']['top1'] == pytest.approx(expected_top1)
    for row in report['results']:
        assert row['parity']['judged'] and row['parity']['passed'], row
        assert 0 <= row['accuracy']['top1'] <= row['accuracy']['top5'] <= 1
        # the gate's accuracies are on the views that are decisive for this row (near-ties set aside)
        assert 0 < row['parity']['accuracy_views'] <= report['data']['views']
        assert row['parity']['accuracy_top1'] >= 0.99 * row['parity']['reference_accuracy_top1']
        # the fp64 reference's gate counts the same labelled views (a row once failed fp64's resolution on the
        # photographs' views while fp32's passed on the labelled ones)
        assert 0 < row['parity_fp64']['accuracy_views'] <= report['data']['views'] and row['parity_fp64']['passed']
        assert row['parity_fp64']['accuracy_top1'] >= 0.99 * row['parity_fp64']['reference_accuracy_top1']
        if row['precision'] == 'fp32':
            assert row['accuracy']['top1'] == pytest.approx(expected_top1)
        if (row['backend'], row['precision']) == ('torch', 'fp32'):  # identical logits: no near-tie at all
            assert row['parity']['accuracy_views'] == report['data']['views']
            assert row['parity']['accuracy_top1'] == pytest.approx(expected_top1)
    baseline = next(r for r in report['results'] if (r['backend'], r['precision']) == ('torch', 'fp32'))
    assert baseline['speedup_vs_torch_fp32'] == pytest.approx(1.0)
    assert report['data']['count'] == len(PHOTOGRAPHS) and report['data']['views'] >= 256
    assert report['images']['views'] >= 256
    assert 'report.md' in proc.stdout


def test_quick_run_per_layer_profile_of_the_fastest_row(quick_run):
    _, out, _ = quick_run
    report = json.loads((out / 'report.json').read_text())
    (profile,) = report['layer_profiles']  # --quick: batch 1 only
    fastest = report['summary']['fastest_passing'][0]
    assert (profile['backend'], profile['precision']) == (fastest['backend'], fastest['precision'])
    if profile['backend'] in ('openvino', 'onnxruntime'):  # the runtimes with a profiler
        layers = profile['layers']
        assert layers and profile['layer_count'] >= len(layers) and profile['total_ms'] > 0
        assert all(layer['name'] and layer['ms'] >= 0 for layer in layers)
        assert [layer['ms'] for layer in layers] == sorted((layer['ms'] for layer in layers), reverse=True)
        assert 0 < sum(layer['share'] for layer in layers) <= 1 + 1e-9
        assert '### Per layer:' in (out / 'report.md').read_text()
        stages = profile['stages']  # every layer by stage of the fixture's feature_info, mapped through the graph
        assert stages and sum(s['share'] for s in stages) == pytest.approx(1.0)
        assert sum(s['ms'] for s in stages if s['stage'] != 'unmapped') > 0.5 * profile['total_ms']
        assert '| stage | reduction | layers | ms | share |' in (out / 'report.md').read_text()


def test_quick_run_skips_with_reasons(quick_run):
    proc, out, _ = quick_run
    skipped = {(s['backend'], s['precision']): s['reason'] for s in json.loads((out / 'report.json').read_text())['skipped']}
    assert 'not supported' in skipped[('torch', 'int8')]
    if not HAS_GPU:
        assert 'GPU' in skipped[('tensorrt', 'fp32')] and 'GPU' in skipped[('tensorrt', 'int8')]
    markdown = (out / 'report.md').read_text()
    assert '## Skipped' in markdown and skipped[('torch', 'int8')] in markdown


def test_quick_run_files(quick_run):
    proc, out, _ = quick_run
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000, name
    markdown = (out / 'report.md').read_text()
    assert '| backend | precision | device | batch | median ms (95 % CI) |' in markdown and 'speed-up (95 % CI)' in markdown
    csv_lines = (out / 'report.csv').read_text().splitlines()
    assert csv_lines[0].startswith('backend,precision,device,batch_size,mean_ms')
    assert len(csv_lines) == 1 + len(json.loads((out / 'report.json').read_text())['results'])
    assert not list(out.glob('.*.tmp')), 'temporary files left behind'
    alarming = [line for line in proc.stderr.splitlines()  # a run that passed prints nothing a user reads as failure
                if re.search(r'\b(error|fail(ed|ure)?|traceback|exception)\b|^USDT', line, re.IGNORECASE)]
    assert not alarming, alarming


def test_non_finite_rows_read_non_finite_everywhere(quick_run):
    """A row whose logits had NaN: 'non-finite' in report.md and report.csv, never 'exact'; a failed gate."""
    from benchmarks.report.plots import render_plots
    from benchmarks.report.markdown import render_csv, render_markdown
    from benchmarks.report.schema import plain, read_back
    from benchmarks.report.summary import add_speedups
    _, out, _ = quick_run
    report = json.loads((out / 'report.json').read_text())
    row = next(r for r in report['results'] if (r['backend'], r['precision']) == ('onnxruntime', 'int8'))
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    nan = ref.copy()
    nan[0, 0] = np.nan
    for key in ('parity', 'parity_fp64'):
        row[key].update(parity.compare(ref, nan), **parity.judge('int8', parity.compare(ref, nan), True))
        row[key]['sqnr_db'] = None  # as JSON stores NaN
    report = plain(add_speedups(read_back(report)))
    markdown = render_markdown(report)
    line = next(text for text in markdown.splitlines() if text.startswith('| onnxruntime | int8 |'))
    assert 'non-finite' in line and 'exact' not in line and '**FAIL**' in line
    assert 'non-finite logits' in markdown and report['summary']['rows_failed'] >= 1
    header, *lines = render_csv(report).splitlines()
    column = header.split(',').index('parity_nonfinite')
    assert any(line.split(',')[column] == '1' for line in lines)
    assert set(render_plots(report)) == set(PLOTS)


def test_compare_and_images(trained_checkpoint, quick_run, graphs, tmp_path, no_ceilings):
    """A second run (own photographs, graphs reused from --onnx-dir) put beside the first with ratios."""
    _, first, graph_dir = quick_run
    images = tmp_path / 'photos'
    images.mkdir()
    for name, image in photographs(['chelsea', 'coffee', 'rocket']):
        image.save(images / f'{name}.jpg')
    out = tmp_path / 'second'
    code = main(['--checkpoint', str(trained_checkpoint), '--quick', '--backends', 'torch,openvino',
                 '--images', str(images), '--onnx-dir', str(graph_dir), '--compare', str(first / 'report.json'),
                 '--output-dir', str(out), '--no-progress'])
    assert code == 0
    assert read_report(out / 'report.json').results  # it reads back as a report, typed and checked
    report = json.loads((out / 'report.json').read_text())
    check_schema(report, ceilings_measured=False)
    assert report['images']['count'] == 3 and report['graphs']['exported'] == []
    rows = {(c['backend'], c['precision']): c for c in report['comparison']['rows']}
    both = rows[('openvino', 'int8')]
    assert both['speedup'] == pytest.approx(both['old_ms'] / both['new_ms'])
    assert both['latency_change'] in ('faster', 'slower', 'within noise')
    assert rows[('onnxruntime', 'fp32')]['new_ms'] is None  # only in the earlier report
    assert rows[('onnxruntime', 'fp32')]['latency_change'] == 'only in one report'
    assert 'Compared with' in (out / 'report.md').read_text()


@pytest.mark.slow
def test_graphs_of_other_weights_are_refused(exported_graphs, tmp_path, capsys):
    """The trained model's graphs in --onnx-dir, benchmarked for a checkpoint of other (random) weights of the same
    model and classes: one line naming the folder's graph, exit 1, no report."""
    import shutil
    from alexnet_zoo.checkpoint import save_checkpoint_dir
    from conftest import fixture_alexnet_bn
    other = save_checkpoint_dir(fixture_alexnet_bn(), tmp_path / 'other', list(PHOTOGRAPHS))
    shutil.copytree(exported_graphs[1], tmp_path / 'graphs')
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ['--checkpoint', str(other), '--quick', '--backends', 'onnxruntime',
                       '--precisions', 'fp32', '--onnx-dir', str(tmp_path / 'graphs'), '--output-dir',
                       str(tmp_path / 'out'), '--no-progress'])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and 'holds graphs of other weights' in err[0], err
    assert 'model.onnx' in err[0] and not (tmp_path / 'out' / 'report.json').exists()


@pytest.fixture
def no_ceilings(monkeypatch):
    """In-process whole runs skip measuring the machine's ceilings (seconds each): the --quick run measures and
    checks them."""
    import benchmarks.run.harness as harness
    monkeypatch.setattr(harness, 'measure_ceilings', lambda *args, **kwargs: {'error': 'not measured in this test'})


@pytest.mark.slow
def test_an_export_that_fails_its_gate_is_a_failed_row(trained_checkpoint, exported_graphs, tmp_path, monkeypatch,
                                                       no_ceilings):
    """int8 misses a gate nothing can pass: its rows are measured from the failed graph and fail, with the reason;
    the fp32 rows (export.onnx's graph, reused from --onnx-dir) run and pass; the exit code says a gate failed.
    The earlier int8 export's ranges and diagnosis left in the folder (a failed gate keeps them) are not written
    over: the benchmark's export goes apart, and the report says so."""
    import shutil
    import export.int8.remedy
    graphs = tmp_path / 'graphs'
    shutil.copytree(exported_graphs[1], graphs, ignore=shutil.ignore_patterns('model.int8.*', 'model.fp16.*'))
    earlier = {'model.int8.calibration.json': b'{"an earlier export": 1}\n', 'model.int8.layers.md': b'# earlier\n'}
    for name, data in earlier.items():
        (graphs / name).write_bytes(data)
    monkeypatch.setitem(parity.GATES['int8'], 'top1_min', 1.01)  # a gate nothing passes
    monkeypatch.setattr(export.int8.remedy, 'equalize', lambda model, crops: (model, []))  # the remedies fail as the plain
    monkeypatch.setattr(export.int8.remedy, 'float_budget', lambda graph: 0)  # graph does (tests/test_int8.py tries them for real)
    monkeypatch.setattr(export.int8.remedy, 'diagnose', lambda *args: [])  # the diagnosis: tests/test_int8.py
    monkeypatch.setattr(export.int8.remedy, 'RANGE_METHODS', ())  # the other range estimates: tests/test_int8.py
    code = main(['--checkpoint', str(trained_checkpoint), '--quick', '--backends', 'onnxruntime', '--precisions',
                 'fp32,int8', '--onnx-dir', str(graphs), '--output-dir', str(tmp_path / 'out'), '--no-progress'])
    assert code == 1
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert report['graphs']['reused'] and report['graphs']['exported'] and not (graphs / 'model.int8.onnx').exists()
    assert report['graphs']['exported_apart'] == sorted(earlier)
    assert {name: (graphs / name).read_bytes() for name in earlier} == earlier
    rows = {r['precision']: r for r in report['results']}
    assert set(rows) == {'fp32', 'int8'} and not [s for s in report['skipped'] if s['backend'] == 'onnxruntime']
    assert rows['fp32']['parity']['passed'] is True and 'export_failure' not in rows['fp32']
    assert 'top-1' in rows['int8']['export_failure'] and rows['int8']['latency_ms']['p50'] > 0
    assert report['summary']['rows_failed'] == 1 and report['summary']['passed'] is False
    markdown = (tmp_path / 'out' / 'report.md').read_text()
    assert 'the graph failed its gate at export' in markdown and '**FAIL**' in markdown
    assert 'into a temporary folder for this run (int8): `' in markdown
    assert 'keeps model.int8.calibration.json, model.int8.layers.md' in markdown


# ------------------------------------------------------------------------------------------------ bad input


def _run_bad(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return exc.value.code, err[0]


@pytest.fixture
def not_a_report(tmp_path):
    path = tmp_path / 'other.json'
    path.write_text('{"results": []}')
    return path


@pytest.mark.parametrize('args, code, message', [
    (['--backends', 'torch,caffe'], 2, "unknown backend: 'caffe'"),
    (['--precisions', 'fp8'], 2, "unknown precision: 'fp8'"),
    (['--batch-sizes', '0'], 2, 'must be 1 to 4096, got 0'),
    (['--batch-sizes=-2'], 2, 'must be 1 to 4096'),
    (['--batch-sizes', '5000'], 2, 'must be 1 to 4096'),
    (['--batch-sizes', 'one'], 2, 'whole number'),
    (['--checkpoint', 'missing.safetensors'], 1, 'checkpoint not found'),
    (['--checkpoint', 'x.pth', '--pretrained'], 2, 'not allowed with'),
    (['--threads', '0'], 2, 'must be above 0'),
    (['--rounds', '1e9'], 2, 'not a number'),
    (['--run-to-run', 'nan'], 2, 'finite'),
])
def test_bad_arguments(args, code, message, tmp_path, capsys):
    out = tmp_path / 'out'
    got, line = _run_bad(args + ['--output-dir', str(out)], capsys)
    assert got == code and message in line
    assert not out.exists() or not any(out.iterdir())


def test_bad_folders_and_files(tmp_path, capsys, not_a_report):
    empty = tmp_path / 'empty'
    empty.mkdir()
    no_images = tmp_path / 'no_images'
    (no_images / 'cat').mkdir(parents=True)
    (no_images / 'cat' / 'notes.txt').write_text('not an image')
    other_model = tmp_path / 'ten_classes.safetensors'
    from safetensors.torch import save_file
    import timm
    save_file(timm.create_model('alexnet_bn', num_classes=10).state_dict(), str(other_model))
    out = tmp_path / 'out'
    cases = [
        (['--images', str(empty)], 'no readable images'),
        (['--images', str(tmp_path / 'nowhere')], 'not found'),
        (['--data', str(empty)], '--data'),
        (['--data', str(no_images)], '--data'),
        (['--checkpoint', str(other_model), '--num-classes', '18'], 'has 10 classes'),
        (['--compare', str(not_a_report)], 'not a benchmark report'),
        (['--compare', str(no_images / 'cat' / 'notes.txt')], 'not a benchmark report'),
        (['--compare', str(tmp_path / 'old.json')], 'not found'),
    ]
    for args, message in cases:
        code, line = _run_bad(args + ['--output-dir', str(out), '--no-progress'], capsys)
        assert code == 1 and message in line, (args, line)
        assert not out.exists() or not any(out.iterdir()), args


@pytest.mark.slow  # a real process (imports torch): the quick loop has the in-process tests
def test_bad_input_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'benchmarks', '--backends', 'nope', '--output-dir',
                           str(tmp_path / 'out')], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith('error: ')
    assert not (tmp_path / 'out').exists()


# --- whole runs the quick run does not cover ---------------------------------------------------------------

TINY_TIMING = dict(rounds=6, seconds_per_row=0.0)


@pytest.mark.full  # make test: parity.judge with trained=False (test_judge_gates); make fuzz: the whole run
def test_random_weights_end_to_end(tmp_path, no_ceilings):
    """Random weights: every row is measured, no gate is judged ("not judged" in the report), exit 0."""
    from benchmarks import exit_code, run_benchmark
    from benchmarks.run.harness import timing_config
    import timm
    from alexnet_zoo.checkpoint import LoadedModel
    # any timm CNN: the report's "not judged" does not depend on the model (timm's small test network here)
    random = LoadedModel(timm.create_model('test_resnet', num_classes=5).eval(), 'test_resnet', 5, False,
                         'random weights', None)
    report = run_benchmark(random, tmp_path, backends='torch,onnxruntime',
                           precisions='fp32', batch_sizes='1', timing=timing_config(**TINY_TIMING), progress=False)
    assert not report.model['trained'] and not report.model['gates_judged']
    assert len(report.results) == 2 and all(r.parity.judged is False for r in report.results)
    assert report.summary.passed is None and report.summary.rows_failed == 0 and exit_code(report) == 0
    table = [line for line in (tmp_path / 'report.md').read_text().splitlines() if line.startswith('| torch | fp32 | cpu |')]
    assert table and all(line.rstrip(' |').endswith('not judged') for line in table)


# --- CUDA paths, checked on the CPU ------------------------------------------------------------------------------

def test_fp32_on_a_gpu_switches_tf32_off_only_inside_the_runner():
    from benchmarks.backends.torch_runner import exact_fp32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(KeyboardInterrupt), exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise KeyboardInterrupt
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored, even so
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_device_indices_are_honoured_or_refused_in_one_line(monkeypatch):
    from benchmarks.backends.tensorrt_runner import current_device
    from export.runner import cuda_index
    assert (cuda_index('cpu'), cuda_index('cuda'), cuda_index('cuda:3')) == (0, 0, 3)
    with pytest.raises(ValueError, match="not a device: 'cuda:x'"):
        cuda_index('cuda:x')
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    assert current_device('cuda') == current_device('cuda:0') == 0
    with pytest.raises(ValueError, match=r'current CUDA device \(cuda:0\), not cuda:1: .*CUDA_VISIBLE_DEVICES=1'):
        current_device('cuda:1')


def test_engine_inspector_formats_name_their_data_type():
    from benchmarks.backends.tensorrt_runner import datatype_of
    assert datatype_of('Row major linear FP32') == datatype_of('Float') == 'float'
    assert datatype_of('Channel major FP16 format where channel % 8 == 0') == datatype_of('Half') == 'half'
    assert datatype_of('Thirty-two wide channel vectorized row major Int8 format') == 'int8'
    assert datatype_of('Row major linear BFloat16') == 'bf16' and datatype_of('') == 'other'


def test_roofline_plot_with_many_batch_sizes():
    from benchmarks.report.plots import _plot_roofline
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [{'backend': 'openvino', 'precision': 'int8', 'device': 'cpu', 'batch_size': b,
             'roofline': {'intensity': 10.0 * b, 'ops_per_s': 1e11 * b}} for b in (1, 2, 4, 8, 16, 32, 64)]
    cpu = {'compute': {'int8': {'attainable': 2e12, 'documented': 8.6e12}, 'fp32': {'attainable': 2e11, 'documented': None}},
           'memory': {'dram': {'bytes_per_s': 5e10}, 'llc': {'62500000': {'bytes_per_s': 2e11, 'working_set': 62500000}}}}
    report = {'results': rows, 'model': {'name': 'alexnet_bn'}, 'environment': {'cpu': {'model': 'cpu'}},
              'ceilings': {'cpu': cpu}}
    fig = _plot_roofline(plt, report)
    assert len(fig.axes[0].collections) == len(rows)
    labels = fig.axes[0].get_legend_handles_labels()[1]  # every ceiling drawn: two slopes, three levels
    assert labels == ['DRAM read 50 GB/s', 'LLC at 62 MB read 200 GB/s', 'int8 attainable 2.00 TOP/s',
                      'int8 documented 8.60 TOP/s', 'fp32 attainable 0.20 TOP/s']
    plt.close(fig)
