"""The three ceilings: the documented rate's arithmetic, the placing of a row, what bounds the fastest one, and
probes that fail becoming skipped figures with their reasons (docs/benchmarks.md, "Against the machine's
ceilings")."""
from types import SimpleNamespace

import pytest

from benchmarks.roofline.ceilings import datasheet, documented_rate, memory_ceiling, place, what_bounds

AMX = {'amx': True, 'avx512_vnni': True, 'avx512_bf16': True, 'avx512': True, 'avx2': True}
CASCADE_LAKE = {'avx512_vnni': True, 'avx512': True, 'avx2': True}
ZEN = {'avx512_vnni': True, 'avx512_bf16': True, 'avx512': True, 'avx2': True}


@pytest.mark.parametrize('precision, features, vendor, family, ops, unit', [
    ('int8', AMX, 'GenuineIntel', 6, 2048 * 2 * 2.1e9, 'AMX: 2048'),       # 8.6 TOPS on 2 cores at 2.1 GHz
    ('bf16', AMX, 'GenuineIntel', 6, 1024 * 2 * 2.1e9, 'AMX: 1024'),
    ('fp32', AMX, 'GenuineIntel', 6, 64 * 2 * 2.1e9, 'AVX-512 FMA: 64'),
    ('int8', CASCADE_LAKE, 'GenuineIntel', 6, 256 * 2 * 2.1e9, 'AVX-512 VNNI: 256'),
    ('int8', ZEN, 'AuthenticAMD', 26, 256 * 2 * 2.1e9, 'AVX-512 VNNI: 256'),   # Zen 5: full-width 512-bit units
    ('int8', ZEN, 'AuthenticAMD', 25, 128 * 2 * 2.1e9, 'AVX-512 VNNI: 128'),   # Zen 4: two passes of 256 bits
    ('bf16', ZEN, 'AuthenticAMD', 25, 64 * 2 * 2.1e9, 'AVX512-BF16: 64'),
    ('fp32', {'avx2': True}, 'GenuineIntel', 6, 32 * 2 * 2.1e9, 'AVX2 FMA: 32'),
])
def test_documented_rate_is_the_widest_unit_times_cores_times_clock(precision, features, vendor, family, ops, unit):
    rate, basis = documented_rate(precision, features, cores=2, ghz=2.1, vendor=vendor, family=family)
    assert rate == pytest.approx(ops)
    assert basis.startswith(unit) and '× 2 cores × 2.10 GHz' in basis


def test_documented_rate_says_why_there_is_none():
    rate, reason = documented_rate('bf16', CASCADE_LAKE, cores=2, ghz=2.1)
    assert rate is None and reason == 'no bf16 unit this CPU documents (needs AMX or AVX512-BF16)'
    rate, reason = documented_rate('int8', AMX, cores=2, ghz=None)
    assert rate is None and reason == 'AMX: 2048 ops/cycle/core, but the clock is unknown'


def test_gpu_data_sheet_by_name():
    assert datasheet('NVIDIA H100 PCIe')['int8'] == 1513e12  # the more specific entry wins over 'H100'
    assert datasheet('NVIDIA H100 80GB HBM3')['memory'] == 3.35e12
    assert datasheet('NVIDIA H200')['fp16'] == 989e12
    assert datasheet('NVIDIA GeForce GTX 1080') is None


CPU = {'compute': {'fp32': {'attainable': 200e9, 'documented': 266e9},
                   'int8': {'attainable': 2e12, 'documented': 8.6e12}},
       'memory': {'llc_bytes': 100_000_000, 'dram': {'bytes_per_s': 20e9},
                  'llc': {'62500000': {'bytes_per_s': 50e9}}}}


def row(precision, batch_size, ms, weight_bytes, device='cpu'):
    return {'backend': 'openvino', 'precision': precision, 'device': device, 'batch_size': batch_size,
            'median_ms': ms, 'weight_bytes': weight_bytes}


def test_a_row_is_held_to_the_attainable_rate_and_where_its_weights_live():
    flops = 2e9
    int8_b32 = place(row('int8', 32, 64.0, 62_500_000), {'cpu': CPU}, flops)
    assert int8_b32['bound'] == 'compute' and int8_b32['ceiling'] == 'int8'
    assert int8_b32['bound_ms'] == pytest.approx(32.0)  # 64 GOP at the attainable 2 TOP/s
    assert int8_b32['times_bound'] == pytest.approx(2.0)
    assert int8_b32['share_of_documented'] == pytest.approx(1e12 / 8.6e12)  # 64 GOP in 64 ms against 8.6 TOP/s
    int8_b1 = place(row('int8', 1, 2.0, 62_500_000), {'cpu': CPU}, flops)
    assert int8_b1['bound'] == 'memory' and int8_b1['memory'] == 'llc'  # 62.5 MB fit the 100 MB cache
    assert int8_b1['bound_ms'] == pytest.approx(1.25)  # 62.5 MB at 50 GB/s, more than 1 ms of compute
    assert int8_b1['intensity'] == pytest.approx(32.0)
    fp32_b1 = place(row('fp32', 1, 25.0, 250_000_000), {'cpu': CPU}, flops)
    assert fp32_b1['memory'] == 'dram' and fp32_b1['bound_ms'] == pytest.approx(12.5)  # 250 MB at 20 GB/s
    fp16 = place(row('fp16', 1, 25.0, 125_000_000), {'cpu': CPU}, flops)
    assert fp16['ceiling'] == 'fp32'  # an fp16 graph on a CPU computes in fp32
    assert place(row('fp32', 1, 1.0, 1000, 'cuda'), {'cpu': CPU}, flops) is None  # no GPU ceilings measured
    assert place(row('fp32', 1, 1.0, 1000), {'error': 'failed'}, flops) is None


def test_bytes_that_fit_the_cache_take_the_nearest_probe_below_or_dram_without_one():
    memory = {**CPU['memory'], 'llc': {'1000000': {'bytes_per_s': 90e9}, '62500000': {'bytes_per_s': 50e9}}}
    assert memory_ceiling(62_500_000, memory) == ('llc', 50e9)  # measured at that size
    assert memory_ceiling(50_000_000, memory) == ('llc', 90e9)  # not: the probe below it, the higher rate
    assert memory_ceiling(70_000_000, memory) == ('llc', 50e9)
    assert memory_ceiling(500_000, memory) == ('llc', 90e9)  # below every probe: the smallest
    assert memory_ceiling(200_000_000, memory) == ('dram', 20e9)  # larger than the cache
    assert memory_ceiling(50_000_000, {**CPU['memory'], 'llc': {}}) == ('dram', 20e9)  # no cache probe at all
    assert memory_ceiling(50_000_000, {'llc_bytes': None, 'llc': {}, 'dram': None}) == (None, None)


def test_what_bounds_the_fastest_row():
    r = row('int8', 32, 64.0, 62_500_000)
    r['roofline'] = place(r, {'cpu': CPU}, 2e9)
    profile = {'layers': [{'name': 'features.3', 'type': 'Convolution', 'kernel': 'brgconv_avx512_amx_i8',
                           'share': 0.41}]}
    assert what_bounds(r, profile) == ('openvino int8 b32: 2.0× its compute bound (int8 attainable 2.00 TOP/s); '
                                       '12 % of the documented int8 rate (8.60 TOP/s); most time in features.3 '
                                       '(Convolution, brgconv_avx512_amx_i8: 41 %)')
    r['roofline'] = None
    assert what_bounds(r, None) == 'openvino int8 b32: no ceiling measured'


def test_a_failing_probe_is_a_skipped_figure_with_its_reason(monkeypatch):
    """One library failing (OpenVINO here) leaves the other's figures; a precision the CPU has no unit for is
    skipped with the reason; the memory probes still run."""
    import benchmarks.roofline.probes as probes

    def broken(precision, shape, threads):
        raise RuntimeError(f'no {precision} MatMul here\nsecond line')
    monkeypatch.setattr(probes, 'openvino_gemm', broken)
    monkeypatch.setattr(probes, 'QUICK_SHAPES', ((64, 64, 64),))
    monkeypatch.setattr(probes, 'MIN_DRAM_SET', 1 << 20)
    monkeypatch.setattr(probes, 'last_level_cache_bytes', lambda: 1 << 20)
    ceilings = probes.measure_ceilings(1, {'avx2': True}, working_sets=[1 << 19, 1 << 22], quick=True)
    cpu = ceilings['cpu']
    assert list(cpu['compute']) == ['fp32'] and list(cpu['compute']['fp32']['measured']) == ['torch 64x64x64']
    assert cpu['skipped']['fp32 OpenVINO 64x64x64'] == 'no fp32 MatMul here'
    assert 'VNNI' in cpu['skipped']['int8'] and 'bf16' in cpu['skipped']['bf16']
    assert cpu['memory']['dram']['working_set'] == 4 << 20 and cpu['memory']['dram']['bytes_per_s'] > 0
    assert list(cpu['memory']['llc']) == [str(1 << 19)]  # the 4 MiB working set does not fit a 1 MiB cache


def test_pytorch_int8_says_why_it_cannot_run(monkeypatch):
    """The torch-compile int8 row is skipped, with the reason, without torchao, on a CPU without VNNI or AMX, and on
    CUDA; eager int8 points to it."""
    import importlib.util

    import torch

    from benchmarks.backends.torch_runner import EAGER_INT8, TorchCompileRunner, TorchRunner
    import export.int8.torch_int8 as torch_int8
    assert TorchRunner.available('int8', 'cpu') == EAGER_INT8 and TorchRunner.devices('int8', gpu=True) == ('cpu',)
    assert 'CPU path' in TorchCompileRunner.available('int8', 'cuda')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'torchao' else real(name, *a))
    assert TorchCompileRunner.available('int8', 'cpu').startswith('torchao is not installed')
    monkeypatch.setattr(importlib.util, 'find_spec', real)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
    assert torch_int8.torch_int8_unavailable('cpu').startswith('no VNNI or AMX on this CPU')


def test_pytorch_rows_profile_their_operators():
    """The per-layer profile of a PyTorch row: the operators PyTorch's profiler saw, each with who runs it, largest
    first, summing to about the time of a call."""
    import numpy as np

    from benchmarks.backends.torch_runner import TorchRunner
    from conftest import FIXTURE_SIZE, fixture_alexnet_bn
    x = np.random.default_rng(0).standard_normal((2, 3, FIXTURE_SIZE, FIXTURE_SIZE)).astype(np.float32)
    with TorchRunner(fixture_alexnet_bn().eval(), 'fp32', 'cpu', threads=1) as runner:
        layers = runner.layer_times(x, runs=3)
    names = [layer['name'] for layer in layers]
    assert 'aten::convolution' in names or 'aten::mkldnn_convolution' in names, names
    assert all(layer['kernel'] in ('oneDNN', 'Inductor', 'ATen') for layer in layers)
    assert [layer['ms'] for layer in layers] == sorted((layer['ms'] for layer in layers), reverse=True)
    assert layers[-1]['ms'] > 0


def test_the_clock_is_timed_under_load():
    """On x86-64 the clock is timed (a chain of dependent adds on every core in use), not read from a file that in
    a VM holds the hypervisor's figure; it is a plausible clock, and the documented rates are reckoned with it."""
    import platform

    from benchmarks.roofline.probes import clock_ghz, nominal_ghz
    ghz, method = clock_ghz(2)
    if platform.machine() != 'x86_64':
        assert (ghz, method) == nominal_ghz()
        return
    assert 0.5 < ghz < 7 and method == '200,000,000 dependent 1-cycle adds timed on each of 2 cores at once'


@pytest.mark.gpu
@pytest.mark.skipif(not __import__('torch').cuda.is_available(), reason='needs a CUDA GPU')
def test_gpu_ceilings_where_rows_ran_on_one():
    """A GPU's ceilings: its data sheet (where the name is known) beside what torch.mm / torch._int_mm reach on it,
    and the read bandwidth of its memory."""
    import torch

    from benchmarks.roofline.probes import measure_ceilings
    gpu = measure_ceilings(1, {'avx2': True}, gpu=True, quick=True)['cuda']
    assert gpu['name'] == torch.cuda.get_device_name()
    assert gpu['compute']['fp16']['attainable'] > gpu['compute']['fp32']['attainable'] > 0
    assert gpu['memory']['dram']['bytes_per_s'] > 1e11
    sheet = datasheet(gpu['name'])
    if sheet:
        assert gpu['compute']['fp16']['documented'] == sheet['fp16']
        assert gpu['compute']['fp16']['attainable'] < 1.1 * sheet['fp16']


def depthwise_block(int8_weights: bool = False):
    """One depthwise block as an ONNX graph: Conv2d(8, 8, 3, padding=1, groups=8), BatchNorm2d(8), ReLU(),
    Conv2d(8, 16, 1), on a batch of 8 × 10 × 10 images; ``int8_weights``: each weight read through a
    DequantizeLinear, as in the int8 graph."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.ones(shape, np.float32), name) for name, shape in (
        ('dw', (8, 1, 3, 3)), ('pw', (16, 8, 1, 1)), ('scale', (8,)), ('bias', (8,)), ('mean', (8,)), ('var', (8,)))]
    nodes, dw, pw = [], 'dw', 'pw'
    if int8_weights:
        inits += [numpy_helper.from_array(np.ones(shape, np.int8), f'{name}_q') for name, shape in
                  (('dw', (8, 1, 3, 3)), ('pw', (16, 8, 1, 1)))]
        inits.append(numpy_helper.from_array(np.array(0.1, np.float32), 'w_scale'))
        nodes += [helper.make_node('DequantizeLinear', [f'{name}_q', 'w_scale'], [f'{name}_dq']) for name in ('dw', 'pw')]
        dw, pw = 'dw_dq', 'pw_dq'
    nodes += [helper.make_node('Conv', ['x', dw], ['a'], group=8, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
              helper.make_node('BatchNormalization', ['a', 'scale', 'bias', 'mean', 'var'], ['b']),
              helper.make_node('Relu', ['b'], ['c']),
              helper.make_node('Conv', ['c', pw], ['y'], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, 'block', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 8, 10, 10])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 16, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])


def test_activations_of_a_depthwise_block_counted_by_hand():
    """Each convolution's input read and output written, per image; the batch norm and the ReLU fused into the
    convolutions (no traffic of their own), the weights (and the int8 graph's dequantized weights) not counted."""
    from benchmarks.roofline.model_bytes import activation_elements
    image = 8 * 10 * 10                     # 1 × 8 × 10 × 10
    depthwise = image + image               # reads the image, writes 8 × 10 × 10
    pointwise = image + 16 * 10 * 10        # reads 8 channels, writes 16
    assert activation_elements(depthwise_block()) == depthwise + pointwise == 4000
    assert activation_elements(depthwise_block(int8_weights=True)) == 4000


def test_a_depthwise_row_is_memory_bound_once_its_activations_count():
    """Few FLOPs and many activation bytes (MobileNetV3-like): the weights alone would leave it compute-bound; with
    a batch's activations it is bound by DRAM. int8 moves an activation in 1 byte, fp32 in 4."""
    flops, activations = 0.1e9, 26e6  # per image; activations in fp32 bytes
    fp32_b32 = row('fp32', 32, 60.0, 6_000_000)
    weights_only = place(fp32_b32, {'cpu': CPU}, flops)
    assert weights_only['bound'] == 'compute' and weights_only['bound_ms'] == pytest.approx(16.0)  # 3.2 GOP at 0.2 T
    assert weights_only['bytes'] == 6_000_000
    moved = place(fp32_b32, {'cpu': CPU}, flops, activations)
    assert moved['bytes'] == 6_000_000 + 32 * 26_000_000  # 838 MB: more than the 100 MB cache
    assert moved['bound'] == 'memory' and moved['memory'] == 'dram'
    assert moved['bound_ms'] == pytest.approx(838e6 / 20e9 * 1e3)  # 41.9 ms at 20 GB/s
    assert moved['intensity'] == pytest.approx(3.2e9 / 838e6)
    int8_b1 = place(row('int8', 1, 1.0, 1_500_000), {'cpu': CPU}, flops, activations)
    assert int8_b1['bytes'] == 1_500_000 + 26_000_000 // 4


def test_per_layer_times_grouped_by_stage(tmp_path):
    """Layers named as ONNX Runtime and OpenVINO name them, mapped through the graph's module paths to the model's
    feature_info stages; a layer between two stage modules goes to the next, a node without a module (a Q/DQ) by
    its place in the graph; a name that matches no node is 'unmapped'."""
    import onnx
    from onnx import TensorProto, helper

    from benchmarks.roofline.stages import graph_stages, model_stages, stage_profile, stage_times

    def node(name, op, inputs, output, *scopes):
        made = helper.make_node(op, inputs, [output], name=name)
        if scopes:
            made.metadata_props.add(key='pkg.torch.onnx.name_scopes', value=str(['', *scopes, op.lower()]))
        return made
    nodes = [node('q_input', 'Relu', ['x'], 'x_q'),                                   # no module, first: stem
             node('node_Conv_0', 'Relu', ['x_q'], 'a', 'bn1'),                        # stage bn1
             node('node_Conv_1', 'Relu', ['a'], 'b', 'blocks', 'blocks.0', 'blocks.0.0.conv'),  # between: blocks.1
             node('node_Conv_2', 'Relu', ['b'], 'c', 'blocks', 'blocks.1', 'blocks.1.0.conv_pw'),
             node('q_c', 'Relu', ['c'], 'c_q'),                                        # no module: blocks.1 still
             node('node_Conv_3', 'Relu', ['c_q'], 'd', 'blocks', 'blocks.1', 'blocks.1.1'),
             node('node_Conv_4', 'Relu', ['d'], 'e', 'conv_head'),                     # after the last: head
             node('node_linear', 'Relu', ['e'], 'logits', 'classifier')]
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 4])])
    stages = model_stages(SimpleNamespace(feature_info=[{'module': 'bn1', 'reduction': 2, 'num_chs': 16},
                                                        {'module': 'blocks.1', 'reduction': 8, 'num_chs': 24}]))
    assert stages == [{'module': 'bn1', 'reduction': 2}, {'module': 'blocks.1', 'reduction': 8}]
    assert model_stages(SimpleNamespace()) == []
    names = graph_stages(graph, ['bn1', 'blocks.1'])
    assert [names[n.name] for n in nodes] == ['stem', 'bn1', 'blocks.1', 'blocks.1', 'blocks.1', 'blocks.1', 'head',
                                              'head']
    layers = [{'name': 'node_Conv_2_token_7', 'ms': 2.0},                        # ONNX Runtime, a fused node
              {'name': 'node_Conv_1/WithoutBiases', 'ms': 1.5},                  # OpenVINO
              {'name': 'node_Conv_0/WithoutBiases', 'ms': 1.0},
              {'name': 'input_abcd_acdb_node_Conv_1/WithoutBiases', 'ms': 0.5},  # OpenVINO's reorder before it
              {'name': 'logits', 'ms': 0.5},                                     # named by the node's output
              {'name': 'reorder_token_9', 'ms': 0.5},                            # no node of the graph
              {'name': 'node_Conv_10', 'ms': 0.25},                              # not node_Conv_1
              {'name': 'q_input', 'ms': 0.25}]
    assert [(s['stage'], s['reduction'], s['layers'], s['ms']) for s in stage_times(layers, names, stages)] == [
        ('stem', None, 1, 0.25), ('bn1', 2, 1, 1.0), ('blocks.1', 8, 3, 4.0), ('head', None, 1, 0.5),
        ('unmapped', None, 2, 0.75)]
    assert sum(s['share'] for s in stage_times(layers, names, stages)) == pytest.approx(1.0)
    path = tmp_path / 'model.onnx'
    onnx.save(helper.make_model(graph), str(path))
    assert stage_profile(path, layers, stages)['stages'][2]['ms'] == 4.0
    assert 'operators' in stage_profile(None, layers, stages)['stages_reason']  # a PyTorch row
    assert stage_profile(path, layers, []) == {}  # a model without feature_info
    for n in graph.node:
        del n.metadata_props[:]
    onnx.save(helper.make_model(graph), str(path))
    assert stage_profile(path, layers, stages) == {'stages': None,
                                                   'stages_reason': 'the nodes of model.onnx name no module of a stage'}
