"""int8 per activation kind: each of the activations timm's networks export to gets its Q/DQ where the next layer
reads (after the activation, on the activation's own range), and a small trained network of that kind keeps its
labelled accuracy and its SQNR in int8.

The networks are timm's own test models (``test_efficientnet`` with its activation swapped, and ``test_vit``:
0.1-0.3 M parameters) at 64 x 64, briefly taught the sample photographs, judged on the labelled photographs' 256
views. ReLU is AlexNet's, tested on the suite's AlexNet (tests/test_int8.py). ReLU6 is the case that collapsed: exported as ``Clip``, it was not quantized, so each
convolution's output was quantized over its pre-activation range (EfficientNet-Lite0: 1.2 dB, 47.8 % val top-1).
"""
import copy
from functools import partial

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import numpy_helper
from timm.models._efficientnet_blocks import SqueezeExcite

from alexnet_zoo.checkpoint import LoadedModel
from alexnet_zoo.samples import PHOTOGRAPHS
from conftest import trained_once
import export.int8.remedy as remedy
from export.contract import INPUT_NAME
from export.int8.calibration import PhotoCalibrationReader, calibration_crops
from export.int8.quantizer import GATES, Int8Quantizer, squeeze_excitation_nodes
from export.int8.uint8 import uint8_activations
from export.onnx import ParityGateError, export_onnx
from export.parity import ACCURACY_MIN_RATIO, MIN_DECISIVE_VIEWS
from export.views import ParityViews

pytestmark = pytest.mark.slow

SIZE, STEPS, BATCH = 64, 100, 32
WEIGHTED = ('Conv', 'Gemm', 'MatMul')
# kind: (timm model, its arguments, the ONNX op that carries the activation)
KINDS = {
    'relu6': ('test_efficientnet', dict(act_layer='relu6'), 'Clip'),
    'hard-swish': ('test_efficientnet', dict(act_layer='hard_swish', se_layer=partial(
        SqueezeExcite, gate_layer='hard_sigmoid', force_act_layer=torch.nn.ReLU)), 'HardSigmoid'),  # MobileNetV3's
    'silu-se': ('test_efficientnet', {}, 'Sigmoid'),  # SiLU is x * sigmoid(x); the squeeze-excitation gates too
    'gelu-attention': ('test_vit', dict(img_size=SIZE), None),  # LayerNorm, attention's products, GELU (Erf)
}
# What each kind's int8 must keep, beside the gate's verdict: its SQNR, measured on an AMD Zen 4 after STEPS steps
# with the default percentile ranges (ReLU6 33.8 dB, hard-swish 28.9, SiLU + SE 30.8, GELU + attention 36.9; each
# keeps its labelled accuracy), less a margin of about 5 dB for other CPUs' rounding. The ReLU6 and attention floors
# sit above what the kind gave before its fix (ReLU6 with Clip not quantized collapsed; attention with its residual
# adds quantized gave 21.9 dB); hard-swish and SiLU on the shifted symmetric grid gave 25.3 and 25.4, inside this
# margin, so their own range is checked exactly below instead.
SQNR_MIN_DB = {'relu6': 28.0, 'hard-swish': 23.0, 'silu-se': 25.0, 'gelu-attention': 32.0}


@pytest.fixture(scope='module', params=list(KINDS))
def kind_int8(request, photos_data, tmp_path_factory):
    """(kind, int8 graph, its parity row, the export's folder, the model) of a small network of that kind, trained
    and exported as a user does."""
    kind = request.param
    name, kwargs, _ = KINDS[kind]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=len(PHOTOGRAPHS), **kwargs, pretrained_cfg_overlay=dict(
        input_size=(3, SIZE, SIZE), test_input_size=None, fixed_input_size=False))
    model = trained_once(request, model, f'activation-{kind}', STEPS, BATCH)
    out = tmp_path_factory.mktemp(kind)
    loaded = LoadedModel(model, name, len(PHOTOGRAPHS), True, 'test', list(PHOTOGRAPHS))
    try:
        result = export_onnx(loaded, out, precisions=('fp32', 'int8'), int8_fallback='none',
                             parity_images=photos_data)
    except ParityGateError as e:
        result = e.result
    row = next(r for r in result.rows if r['precision'] == 'int8')
    graph = onnx.load(str(out / 'model.int8.onnx')) if row['passed'] else None
    return kind, graph, row, out, loaded


def test_int8_keeps_the_labelled_accuracy_and_sqnr(kind_int8):
    kind, _, row, *_ = kind_int8
    figures = {k: row.get(k) for k in ('sqnr_db', 'accuracy_top1', 'reference_accuracy_top1', 'accuracy_views')}
    assert row['reference_accuracy_top1'] >= 0.85, (kind, figures)  # the network learnt the photographs
    assert row['accuracy_top1'] >= ACCURACY_MIN_RATIO * row['reference_accuracy_top1'], (kind, figures)
    assert row['accuracy_views'] >= MIN_DECISIVE_VIEWS, (kind, figures)
    assert row['sqnr_db'] >= SQNR_MIN_DB[kind] and row['passed'], (kind, figures)


def test_the_next_layer_reads_the_activation_quantized(kind_int8):
    """Every activation of the kind hands its output to a QuantizeLinear, and nothing else: the layers after it
    read int8 on the activation's own range."""
    kind, graph, *_ = kind_int8
    op = KINDS[kind][2]
    if op is None:
        pytest.skip('attention: its products checked below')
    assert graph is not None, f'{kind}: no int8 graph written'
    consumers = _consumers(graph)
    nodes = [n for n in graph.graph.node if n.op_type == op]
    assert nodes, f'{kind}: no {op} in the int8 graph'
    for node in nodes:
        readers = {c.op_type for c in consumers.get(node.output[0], [])}
        assert readers == {'QuantizeLinear'}, (kind, node.name, readers)
        # and what the activation reads is quantized too (the producer's output)
        assert _producer(graph, node.input[0]).op_type == 'DequantizeLinear', (kind, node.name)


def test_relu6_is_quantized_on_its_clipped_range(kind_int8):
    """Both tensors around a Clip(0, 6) are quantized on [0, 6] (6/127 per step): the convolution's output is not
    quantized over its pre-activation range, which left ReLU6 networks a handful of steps."""
    kind, graph, *_ = kind_int8
    if kind != 'relu6':
        pytest.skip('the Clip case')
    init = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    clips = [n for n in graph.graph.node if n.op_type == 'Clip']
    for clip in clips:
        high = float(init[clip.input[2]])
        dq = _producer(graph, clip.input[0])
        q_in = _producer(graph, dq.input[0])
        q_out = _consumers(graph)[clip.output[0]][0]
        for q in (q_in, q_out):
            assert float(init[q.input[1]]) <= high / 127 * (1 + 1e-5), (clip.name, float(init[q.input[1]]))


def test_onnxruntime_runs_relu6_on_the_uint8_range_without_the_clip(kind_int8):
    """ONNX Runtime's runner folds each Q -> DQ -> Clip(0, 6) -> Q into the last Quantize on uint8, zero point 0,
    [0, 6] in 255 steps: its range is the clip, so no Clip stays between a convolution and its Quantize (with one
    there, ONNX Runtime ran the convolution in float). The logits stay those of the file within int8's noise."""
    from export.ort_session import ort_session
    kind, graph, *_ = kind_int8
    if kind != 'relu6':
        pytest.skip('the Clip case')
    clips = sum(n.op_type == 'Clip' for n in graph.graph.node)
    rewritten = uint8_activations(copy.deepcopy(graph))
    assert clips and not [n for n in rewritten.graph.node if n.op_type == 'Clip']
    init = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    convs = {out for n in rewritten.graph.node if n.op_type == 'Conv' for out in n.output}
    folded = [n for n in rewritten.graph.node  # a convolution's output on uint8 from 0: its Clip folded in
              if n.op_type == 'QuantizeLinear' and n.input[0] in convs and n.input[1].endswith('_uint8_scale')]
    scales = [float(init[n.input[1]]) for n in folded]
    assert len(scales) == clips and all(0 < s <= 6 / 255 * (1 + 1e-6) for s in scales), scales
    zero_points = [init[n.input[2]] for n in folded]
    assert all(z.dtype == np.uint8 and int(z) == 0 for z in zero_points)
    x = np.random.default_rng(0).uniform(-2, 2, (16, 3, SIZE, SIZE)).astype(np.float32)
    disk = ort_session(graph.SerializeToString(), 2).run(['logits'], {'input': x})[0]
    fast = ort_session(rewritten.SerializeToString(), 2).run(['logits'], {'input': x})[0]
    assert 10 * np.log10((disk ** 2).sum() / ((disk - fast) ** 2).sum()) > 20

def test_attention_runs_its_weighted_layers_and_products_in_int8_and_the_rest_in_float(kind_int8):
    kind, graph, *_ = kind_int8
    if kind != 'gelu-attention':
        pytest.skip('the attention case')
    producer = {o: n for n in graph.graph.node for o in n.output}
    matmuls = [n for n in graph.graph.node if n.op_type == 'MatMul']
    value_products = [n for n in matmuls if any(producer[i].op_type == 'Softmax' for i in n.input)]
    assert value_products, 'attention x V reads the Softmax itself: its probabilities are not rounded to int8'
    assert all(producer[i].op_type == 'DequantizeLinear' for n in matmuls if n not in value_products for i in n.input)
    float_ops = {'LayerNormalization', 'Softmax', 'Erf'}  # left in float on purpose (export/int8/quantizer.py says why)
    assert float_ops <= {n.op_type for n in graph.graph.node}
    # only what the weighted layers read is quantized (NNCF's TRANSFORMER choice): no step on the residual stream,
    # none on a weighted layer's output (before its bias, or Q times K's before the Softmax)
    quantized = {producer[n.input[0]].op_type for n in graph.graph.node
                 if n.op_type == 'QuantizeLinear' and n.input[0] in producer}
    assert quantized and not quantized & {'Add', 'Div', 'MatMul', 'Gemm', 'Conv'}, quantized
    initializers = {i.name: i.data_type for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == 'LayerNormalization':  # its scale and bias are float weights, not dequantized int8
            assert all(initializers.get(name) == onnx.TensorProto.FLOAT for name in node.input[1:]), node.name


def test_the_cpu_runtimes_read_hard_swish_and_silu_on_their_own_range(kind_int8):
    """Where ONNX Runtime and OpenVINO read a hard-swish's or a SiLU's output, its uint8 grid starts at that
    activation's least value (-0.375, -0.278) with the zero point where 0 falls: half the step of the symmetric
    grid shifted by 128. One such grid at least per activation module (squeeze-excitation's scaled outputs get
    one too: a gate in [0, 1] keeps the least value)."""
    kind, graph, _, _, loaded = kind_int8
    if kind not in ('hard-swish', 'silu-se'):
        pytest.skip('the gated activations')
    act, lowest = {'hard-swish': (torch.nn.Hardswish, -0.375), 'silu-se': (torch.nn.SiLU, -0.2784645)}[kind]
    cpu = uint8_activations(copy.deepcopy(graph))
    init = {i.name: numpy_helper.to_array(i) for i in cpu.graph.initializer}
    gated = [q for q in cpu.graph.node
             if q.op_type == 'QuantizeLinear' and init[q.input[2]].dtype == np.uint8 and 0 < init[q.input[2]] < 128]
    assert len(gated) >= sum(isinstance(m, act) for m in loaded.model.modules()) > 0, (kind, len(gated))
    readers = _consumers(cpu)
    for q in gated:
        step, zero = float(init[q.input[1]]), int(init[q.input[2]])
        assert 0 <= zero * step + lowest < step + 1e-9, (kind, step, zero)  # the least value on the grid
        for dq in readers[q.output[0]]:  # read back on the grid it was written on
            assert dq.op_type == 'DequantizeLinear' and list(dq.input[1:]) == list(q.input[1:]), (kind, dq.name)


def test_nncf_placement_reads_the_gates_float_and_keeps_squeeze_excitation_in_float(kind_int8, photos_data,
                                                                                      tmp_path):
    """The remedy's two placements for networks with gates. The squeeze-excitation in float: its convolutions,
    gate and multiply read float, on ONNX Runtime's placement. NNCF's placement, the squeeze-excitation in float
    too: hard-swish, SiLU and the gates read their convolution's output in float (it is quantized nowhere) and every
    other convolution reads int8. It keeps the labelled accuracy, and an export reading its calibration file back
    gets the same graph."""
    kind, _, _, out, loaded = kind_int8
    if kind not in ('hard-swish', 'silu-se'):
        pytest.skip('the networks with gates')
    plain = Int8Quantizer(onnx.load(str(out / 'model.onnx')), tmp_path / 'plain')
    placed = plain.placed_like_nncf(tmp_path / 'p').with_float_squeeze_excitation()
    crops, _ = calibration_crops(loaded.model)
    reader = PhotoCalibrationReader(crops, input_name=INPUT_NAME)
    se = squeeze_excitation_nodes(placed.prepared)
    pooled = {n.input[0] for n in placed.prepared.graph.node if n.op_type in ('GlobalAveragePool', 'ReduceMean')}
    nodes = [n for n in placed.prepared.graph.node if n.name in se]
    scaling = [n.name for n in nodes if n.op_type == 'Mul' and pooled & set(n.input)]  # feature map x gate
    blocks = sum(isinstance(m, SqueezeExcite) for m in loaded.model.modules())
    assert (sum(n.op_type == 'Conv' for n in nodes), len(scaling)) == (2 * blocks, blocks) and blocks, se
    se_float = plain.with_float_squeeze_excitation().quantize(reader)
    readers = _consumers(se_float)
    for node in (n for n in se_float.graph.node if n.name in se and n.name not in scaling):  # nothing rounded
        assert not {c.op_type for c in readers.get(node.output[0], [])} & {'QuantizeLinear'}, (kind, node.name)
    graph = placed.quantize(reader)
    producers, consumers = {out: node for node in graph.graph.node for out in node.output}, _consumers(graph)
    for node in graph.graph.node:
        source = producers.get(node.input[0])
        if node.op_type in GATES:
            assert source.op_type != 'DequantizeLinear', (kind, node.name, 'a gate reads a rounded input')
            readers = {c.op_type for c in consumers[source.output[0]]}  # the gate and SiLU's Mul read it float
            assert 'QuantizeLinear' not in readers, (kind, source.name, readers)
        elif node.op_type == 'Conv':
            assert (source.op_type == 'DequantizeLinear') == (node.name not in se), (kind, node.name)
    figures = ParityViews.of(loaded, photos_data).judge_graph('int8', True)(graph)
    assert figures['passed'] and figures['sqnr_db'] >= SQNR_MIN_DB[kind], (kind, figures['sqnr_db'])
    cache = tmp_path / 'calibration.json'
    cache.write_bytes(placed.calibration_file({'crops': len(crops), 'source': 'photographs'}))
    again = Int8Quantizer(onnx.load(str(out / 'model.onnx')), tmp_path / 'again').use_cache(cache)
    assert (again.placement, again.float_squeeze_excitation) == ('nncf', True) and again.quantize() == graph


def test_the_remedy_tries_the_squeeze_excitation_in_float_first(kind_int8, photos_data, tmp_path):
    """The remedy's third step, entered with the plain graph: the squeeze-excitation in float on ONNX Runtime's
    placement passes on this network, so NNCF's placement is not tried, and the settings say what is float."""
    kind, _, _, out, loaded = kind_int8
    if kind != 'hard-swish':
        pytest.skip("MobileNetV3's kind")
    crops, _ = calibration_crops(loaded.model)
    reader = PhotoCalibrationReader(crops, input_name=INPUT_NAME)
    judge = ParityViews.of(loaded, photos_data).judge_graph('int8', True)
    fp32 = onnx.load(str(out / 'model.onnx'))
    plain = Int8Quantizer(fp32, tmp_path)
    graph = plain.quantize(reader)
    result = remedy._gated(remedy.Int8Result(graph, judge(graph), plain), reader, judge, tmp_path, lambda line: None)
    assert [a['what'] for a in result.attempts] == ['squeeze-excitation in float, percentile ranges']
    assert result.figures['passed'] and result.quantizer.float_squeeze_excitation, result.attempts
    assert result.float_layers and all(layer.endswith('.se') or '.se.' in layer for layer in result.float_layers)
    settings = remedy.int8_settings(result, len(crops))
    assert 'squeeze-excitation nodes' in settings['float_always'] and 'placement' not in settings, settings
    cache = tmp_path / 'calibration.json'  # an export reading these ranges back keeps the same layers in float
    cache.write_bytes(result.quantizer.calibration_file({'crops': len(crops), 'source': 'photographs'}))
    again = remedy.make_int8(loaded.model, fp32, None, crops, judge, None, tmp_path / 'again', cache=cache)
    assert again.float_layers == result.float_layers and again.figures['sqnr_db'] == result.figures['sqnr_db']


def test_a_normalization_mean_is_no_squeeze_excitation():
    """Only a pooling whose branch ends in a Mul with a gate is a squeeze-excitation: a decomposed LayerNorm's
    ReduceMean, read back by a Sub, is not."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node('ReduceMean', ['x'], ['mean'], name='norm.mean', axes=[1]),
             helper.make_node('Sub', ['x', 'mean'], ['centred'], name='norm.sub'),
             helper.make_node('GlobalAveragePool', ['centred'], ['pooled'], name='se.pool'),
             helper.make_node('Conv', ['pooled', 'w'], ['logits'], name='se.conv'),
             helper.make_node('Sigmoid', ['logits'], ['gate'], name='se.gate'),
             helper.make_node('Mul', ['centred', 'gate'], ['y'], name='se.mul')]
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, 'g', [value('x', [1, 4, 8, 8])], [value('y', [1, 4, 8, 8])],
                              [helper.make_tensor('w', TensorProto.FLOAT, [4, 4, 1, 1], [0.1] * 16)])
    assert squeeze_excitation_nodes(helper.make_model(graph)) == ['se.conv', 'se.gate', 'se.mul']


def _consumers(graph: onnx.ModelProto) -> dict:
    out: dict = {}
    for node in graph.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producer(graph: onnx.ModelProto, tensor: str):
    return next(n for n in graph.graph.node if tensor in n.output)


@pytest.mark.full  # EfficientNet-Lite0 at 224 x 224 (make fuzz); make test checks the Clip's ranges above
def test_efficientnet_lite0_with_imagenet_weights_does_not_collapse(tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights (1000 classes; the package make setup installs), exported as a
    user does, on the photographs' 256 views (AMD Zen 4): with Clip quantized, 12.2 dB and top-1 agreement 80.9 %;
    without, 3.7 dB and 45.3 %. (Its gate still fails here: 1000 ImageNet classes on 18 photographs leave 251 of
    256 views near-ties; fine-tuned on the photographs, as users do, the margins are the model's own.)"""
    from alexnet_zoo.checkpoint import load_model
    loaded = load_model('tf_efficientnet_lite0', pretrained=True)
    try:
        result = export_onnx(loaded, tmp_path, precisions=('int8',), int8_fallback='none')
    except ParityGateError as e:
        result = e.result
    row, = result.rows
    figures = {k: row.get(k) for k in ('sqnr_db', 'top1_agreement', 'decisive_top1_agreement', 'near_ties')}
    assert row['sqnr_db'] > 9.0 and row['top1_agreement'] > 0.8, figures
