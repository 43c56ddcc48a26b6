"""int8 that passes when it should, fails when it should, and says why: near-ties, an outlier channel, fp16
overflow, reproducible graphs and reusable calibration, each on a checkpoint built here from the trained fixture."""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_zoo.checkpoint import save_checkpoint_dir
from alexnet_zoo.data import sample_batch
from alexnet_zoo.samples import PHOTOGRAPHS
from export.contract import CALIBRATION_FILE, FILENAMES, read_metadata
from export.onnx import ParityGateError, export_onnx

REPO = Path(__file__).resolve().parents[1]
OUTLIER_CHANNEL, K = 7, 400.0  # 400: the uint8 form ONNX Runtime runs halves a ReLU output's step, and 100 passed plain

pytestmark = pytest.mark.slow  # every test here exports an int8 graph


def _run(*args, capsys):
    """``python -m export.onnx`` in-process, through its own ``run_cli``: (exit code, stdout, stderr)."""
    from alexnet_zoo.cli import run_cli
    from export.onnx import main
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def _cli(*args, cwd=REPO, env=None):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', **(env or {})}
    env.pop('ALEXNET_ZOO_DEBUG', None)
    return subprocess.run([sys.executable, '-m', 'export.onnx', *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def outlier_model(trained_model):
    """The trained model with conv 3's channel 7 scaled by K and the next BatchNorm's statistics with it: the same
    function in fp32, and an activation channel K times the others that int8's per-tensor scale must cover."""
    model = copy.deepcopy(trained_model)
    with torch.no_grad():
        conv, bn = model.features[8], model.features[10]
        conv.weight[OUTLIER_CHANNEL] *= K
        conv.bias[OUTLIER_CHANNEL] *= K
        bn.running_mean[OUTLIER_CHANNEL] *= K
        bn.running_var[OUTLIER_CHANNEL] *= K * K
    return model.eval()


@pytest.fixture(scope='module')
def outlier_checkpoint(outlier_model, tmp_path_factory):
    return save_checkpoint_dir(outlier_model, tmp_path_factory.mktemp('outlier') / 'ckpt', list(PHOTOGRAPHS))


def test_the_outlier_model_computes_the_same_function(trained_model, outlier_model):
    _, x = sample_batch(trained_model)
    with torch.no_grad():
        torch.testing.assert_close(outlier_model(x), trained_model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.full  # make test: near-ties counted and set aside on known logits (tests/test_benchmarks.py)
def test_a_near_tie_passes_and_is_counted(as_loaded, trained_model, tmp_path):
    """A photograph whose fp32 top-1/top-2 margin is 0.02 (any rounding may flip it) does not fail int8."""
    model = copy.deepcopy(trained_model)
    _, x = sample_batch(model)
    with torch.no_grad():
        logits = model(x[:1])[0]
        first, second = torch.topk(logits, 2).indices.tolist()
        model.head.fc.bias[second] += logits[first] - logits[second] - 0.02
        margin = torch.topk(model(x[:1])[0], 2).values
    assert 0 < float(margin[0] - margin[1]) < 0.03
    result = export_onnx(as_loaded(model), tmp_path, precisions=('int8',))
    row, = result.rows
    assert row['passed'] is True and row['views'] >= 256
    assert row['near_ties'] >= 1 and row['decisive_top1_agreement'] >= 0.99
    assert row['float_layers'] == [] and row['equalized'] == []  # nothing to repair


@pytest.mark.full  # make test: the same repair on a resnet block (tests/test_zoo.py), with the diagnosis files
def test_outlier_channel_is_named_and_equalized(as_loaded, outlier_model, tmp_path):
    result = export_onnx(as_loaded(outlier_model), tmp_path, precisions=('int8',))
    row, = result.rows
    worst = result.diagnosis[0]
    assert worst['module'] == 'features.8' and worst['op'] == 'Conv' and worst['quant_sqnr_db'] < 25
    assert row['attempts'][0]['passed'] is False and row['attempts'][0]['sqnr_db'] < 25  # plain int8 is broken
    assert row['passed'] is True and row['sqnr_db'] >= 25 and row['float_layers'] == []
    assert any(e['layer'] == 'features.8' and e['max_scale'] > K / 2 for e in row['equalized'])
    meta = read_metadata(tmp_path / FILENAMES['int8'])
    assert meta['float_layers'] == [] and any(e['layer'] == 'features.8' for e in meta['equalized'])
    layers = json.loads((tmp_path / 'model.int8.layers.json').read_text())
    assert layers['layers'][0]['module'] == 'features.8'
    assert (tmp_path / 'model.int8.layers.md').read_text().count('features.8') >= 1
    assert (tmp_path / 'model.int8.layers.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.full  # make test: the float step of the remedy below, and a wrong layer name
def test_a_named_layer_is_kept_in_float(as_loaded, outlier_model, tmp_path):
    result = export_onnx(as_loaded(outlier_model), tmp_path, precisions=('int8',), int8_fallback='features.8')
    row, = result.rows
    assert row['passed'] is True and row['float_layers'] == ['features.8'] and row['equalized'] == []
    assert read_metadata(tmp_path / FILENAMES['int8'])['float_layers'] == ['features.8']
    assert row['ms_b1'] > 0 and row['plain_ms_b1'] > 0  # the float layer's cost, beside the all-int8 graph's


def test_a_named_layer_that_is_not_there_lists_those_that_are(exported_graphs):
    from export.int8.diagnose import resolve_layers  # what export_onnx checks a named layer against, before quantizing
    import onnx
    fp32 = onnx.load(str(exported_graphs[0].paths['fp32']), load_external_data=False)
    assert resolve_layers(fp32, ['features.8'])['features.8']
    with pytest.raises(ValueError, match=r"no quantized layer 'features\.99' \(module paths: .*features\.8"):
        resolve_layers(fp32, ['features.99'])
    # an ONNX node name names that node alone, beside a module path in the same list
    conv, = resolve_layers(fp32, ['features.8'])['features.8']
    other = next(n.name for n in fp32.graph.node if n.op_type == 'Gemm')
    assert resolve_layers(fp32, [conv, other]) == {conv: [conv], other: [other]}
    assert resolve_layers(fp32, ['features.8', other]) == {'features.8': [conv], other: [other]}


def test_relus_hand_quantized_tensors_to_the_next_layer(exported_graphs):
    """ReLU (AlexNet's activation): every Relu of the int8 graph reads a dequantized tensor and hands its output to
    a QuantizeLinear alone (tests/test_int8_activations.py checks ReLU6, hard-swish, SiLU, SE and attention)."""
    import onnx
    graph = onnx.load(str(exported_graphs[0].paths['int8']), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    relus = [n for n in graph.node if n.op_type == 'Relu']
    assert relus
    for relu in relus:
        assert producer[relu.input[0]].op_type == 'DequantizeLinear', relu.name
        assert {n.op_type for n in graph.node if relu.output[0] in n.input} == {'QuantizeLinear'}, relu.name


def test_the_float_budget_is_a_tenth_of_the_weighted_layers_at_least_four():
    """--int8-fallback auto keeps at most max(4, ceil(weighted / 10)) layers in float (Conv, Gemm, MatMul)."""
    import onnx
    from export.int8.remedy import float_budget

    def graph(**counts):
        nodes = [onnx.helper.make_node(op, ['x'], ['y'], name=f'{op}{i}') for op, n in counts.items() for i in range(n)]
        return onnx.helper.make_model(onnx.helper.make_graph(nodes, 'g', [], []))
    assert float_budget(graph(Conv=5, Gemm=3, Relu=20)) == 4  # AlexNet: 8 weighted layers
    assert float_budget(graph(Conv=40, Gemm=1)) == 5 and float_budget(graph(Conv=52, Gemm=2, Add=30)) == 6
    assert float_budget(graph(MatMul=100, Conv=1)) == 11 and float_budget(graph(Relu=50)) == 4


def test_where_equalization_cannot_help_the_worst_layer_stays_float(as_loaded, outlier_model, tmp_path, monkeypatch):
    """The remedy's second step: with equalization finding nothing to rescale, ``auto`` keeps the most damaging
    tensor's layers in float, guided by the diagnosis, and passes."""
    import export.int8.remedy
    monkeypatch.setattr(export.int8.remedy, 'equalize', lambda model, crops: (model, []))
    result = export_onnx(as_loaded(outlier_model), tmp_path, precisions=('int8',))
    row, = result.rows
    assert row['passed'] is True and row['equalized'] == []
    # plain, the two other range estimates (an outlier channel is no outlier value: both keep its range), then the
    # outlier's layers in float (the convolution, features.8, and the BatchNorm reading it), in at most two steps
    whats = [a['what'] for a in row['attempts']]
    assert whats[:3] == ['int8', 'minmax ranges', 'mean ranges'] and whats[-1].startswith('float: '), whats
    assert len(whats) <= 5 and 'features.8' in row['float_layers'], whats
    assert read_metadata(tmp_path / FILENAMES['int8'])['float_layers'] == row['float_layers']


def test_ranges_stretched_by_one_crop_are_repaired_by_another_range_estimate(as_loaded, trained_model, tmp_path,
                                                                             monkeypatch):
    """One calibration crop 50 times brighter than the rest stretches every range 50-fold: the default percentile
    keeps the crop (it is 1 % of the values, not 0.001 %), and int8 fails. The remedy's range estimates are tried
    after equalization (which finds no channel to blame): minmax keeps the crop too, NNCF's mean of each crop's min
    and max does not, and passes; the graph, its settings and its calibration record say the ranges were the
    mean's."""
    from export.int8.calibration import calibration_crops
    from export.int8.remedy import int8_settings, make_int8
    from export.int8.quantizer import read_calibration_record
    from export.onnx.torch_export import torch_to_onnx
    from export.views import ParityViews
    import export.int8.remedy as remedy
    monkeypatch.setattr(remedy, 'diagnose', lambda *args: [])  # the diagnosis: tested above
    loaded = as_loaded(trained_model)
    crops, _ = calibration_crops(trained_model)
    crops[0] *= 50
    export = lambda module: torch_to_onnx(module, (3, 67, 67))  # noqa: E731
    views = ParityViews.of(loaded)
    result = make_int8(trained_model, export(trained_model), export, crops, views.judge_graph('int8', True), views.x,
                       tmp_path)
    assert [a['what'] for a in result.attempts][0] == 'int8' and result.attempts[0]['passed'] is False
    assert [a['what'] for a in result.attempts][-2:] == ['minmax ranges', 'mean ranges'], result.attempts
    assert result.attempts[-2]['passed'] is False and result.attempts[-1]['passed'] is True
    assert result.figures['passed'] is True and result.float_layers == [] and result.quantizer.method == 'mean'
    assert int8_settings(result, len(crops))['calibration'] == "mean of each crop's min and max over 128 crops"
    (tmp_path / 'ranges.json').write_bytes(result.quantizer.calibration_file({'source': 'test', 'crops': 128}))
    assert read_calibration_record(tmp_path / 'ranges.json')['method'] == 'mean'

    crops[0] *= 20  # now 1,000 times: every estimate fails, and the failure reports the most faithful graph
    monkeypatch.setattr(remedy, 'float_budget', lambda graph: 0)  # the float-layer step: tested above
    monkeypatch.setattr(remedy, 'equalize', lambda model, crops: (model, []))  # found nothing above either
    failed = make_int8(trained_model, export(trained_model), export, crops, views.judge_graph('int8', True), views.x,
                       tmp_path / 'failed')
    sqnr = {a['what']: a['sqnr_db'] for a in failed.attempts}
    assert failed.figures['passed'] is False and failed.quantizer.method == 'mean' and failed.float_layers == [], sqnr
    assert failed.figures['sqnr_db'] == sqnr['mean ranges'] == max(sqnr.values()) > sqnr['int8'] + 3, sqnr


def test_without_a_remedy_the_outlier_fails_with_the_diagnosis(outlier_checkpoint, tmp_path, capsys):
    code, stdout, stderr = _run('--checkpoint', outlier_checkpoint, '--output-dir', tmp_path / 'out', '--precisions',
                                'int8', '--int8-fallback', 'none', capsys=capsys)
    assert code == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'int8' in errors[0] and 'views decisive' in errors[0] and 'SQNR' in errors[0]
    assert 'Traceback' not in stderr
    assert 'per-layer diagnosis' in stdout and '| conv2d_2 | node_conv2d_2 | Conv | features.8 |' in stdout
    assert not (tmp_path / 'out' / FILENAMES['int8']).exists()
    assert (tmp_path / 'out' / 'model.int8.layers.md').is_file()


def test_fp16_overflow_fails_its_gate(as_loaded, trained_model, tmp_path):
    """Logits beyond fp16's range (65504): ONNX Runtime's CPU kernels compute such an fp16 graph through fp32, and
    its converter clamps weights, so they come out finite here but wrong (Inf on an fp16 GPU): the gate fails."""
    model = copy.deepcopy(trained_model)
    with torch.no_grad():
        model.head.fc.weight *= 1e5  # the trained logits reach about 5: now 5e5
        model.head.fc.bias *= 1e5
    with pytest.raises(ParityGateError, match=r"fp16: fp32's logits reach [\d.e+]+, beyond 65504") as info:
        export_onnx(as_loaded(model), tmp_path, precisions=('fp16',))
    row, = info.value.result.rows
    assert row['passed'] is False and not row['identical']
    assert not (tmp_path / FILENAMES['fp16']).exists()


def test_non_finite_weights_are_one_clear_line(trained_checkpoint, tmp_path, capsys):
    """A NaN weight: PyTorch's own logits are not finite, so nothing can be judged or calibrated (ONNX Runtime's
    calibrator would end in an assertion): one error line, exit 1, no file."""
    from safetensors.torch import load_file, save_file
    broken = tmp_path / 'broken'
    shutil.copytree(trained_checkpoint, broken)
    weights = load_file(str(broken / 'model.safetensors'))
    weights['features.0.weight'][0, 0, 0, 0] = float('nan')
    save_file(weights, str(broken / 'model.safetensors'))
    code, _, stderr = _run('--checkpoint', broken, '--output-dir', tmp_path / 'out', capsys=capsys)
    assert code == 1 and 'Traceback' not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'logits are not finite' in errors[0], stderr
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


def test_exported_files_name_no_path(exported_graphs):
    """No absolute path of this machine's layout (the code, the interpreter, torch, the folder written) in any file
    export.onnx wrote; the same checkpoint exported from a copy of the code at another path, compared byte for byte,
    runs in make fuzz (the next test)."""
    _, folder = exported_graphs
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')]
    assert {FILENAMES['fp32'], FILENAMES['int8'], CALIBRATION_FILE} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for root in (REPO, Path(sys.prefix), Path(torch.__file__).parent, folder):
            assert str(root).encode() not in data, (path.name, root)


@pytest.mark.full
@pytest.mark.slow
def test_reexport_elsewhere_is_byte_identical_and_names_no_path(exported_graphs, trained_checkpoint, tmp_path):
    """The same checkpoint exported from a copy of the code at another path: the same bytes, and no absolute path
    of either machine layout in any file written."""
    result, first = exported_graphs
    copy_root = tmp_path / 'elsewhere'
    for name in ('alexnet_zoo', 'export', 'benchmarks'):
        shutil.copytree(REPO / name, copy_root / name, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(REPO / '_alexnet_zoo_hook.py', copy_root)
    proc = _cli('--checkpoint', trained_checkpoint, '--output-dir', tmp_path / 'out', '--precisions', 'fp32,int8',
                cwd=copy_root, env={'PYTHONPATH': str(copy_root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in (FILENAMES['fp32'], FILENAMES['int8'], CALIBRATION_FILE):
        again = (tmp_path / 'out' / name).read_bytes()
        assert again == (first / name).read_bytes(), name
        for root in (REPO, copy_root, Path(sys.prefix), Path(torch.__file__).parent):
            assert str(root).encode() not in again, (name, root)


def test_calibration_cache_is_reused(as_loaded, exported_graphs, trained_model, outlier_model, tmp_path):
    """Ranges read back from model.int8.calibration.json give the same graph without calibrating; a cache of
    other weights is refused."""
    _, first = exported_graphs
    cache = first / CALIBRATION_FILE
    saved = json.loads(cache.read_text())
    assert saved['alexnet_zoo']['method'] == 'percentile' and 'sample photographs' in saved['alexnet_zoo']['source']
    assert saved['data'] and saved['calibration_method']  # ORT's own cache format, readable by quantize_static
    result = export_onnx(as_loaded(trained_model), tmp_path / 'again', precisions=('int8',), calibration_cache=cache)
    assert (tmp_path / 'again' / FILENAMES['int8']).read_bytes() == (first / FILENAMES['int8']).read_bytes()
    assert 'model.int8.calibration.json' in result.calibration
    with pytest.raises(ValueError, match='computed for another graph'):
        export_onnx(as_loaded(outlier_model), tmp_path / 'other', precisions=('int8',), calibration_cache=cache)
    assert not (tmp_path / 'other' / FILENAMES['int8']).exists()


def test_parity_images_with_labels_judge_accuracy(as_loaded, trained_model, tmp_path):
    """--parity-images laid out as <class>/<image> with the model's label names: accuracy is judged too."""
    from alexnet_zoo.samples import photographs
    folder = tmp_path / 'labelled'
    for name, image in photographs(['coffee', 'rocket', 'chelsea']):
        (folder / name).mkdir(parents=True)
        image.save(folder / name / f'{name}.png')
    result = export_onnx(as_loaded(trained_model), tmp_path / 'out', precisions=('fp32',), parity_images=folder)
    row, = result.rows
    assert row['views'] >= 256 and 'labelled' in result.parity_images and '3 image(s)' in result.parity_images
    assert row['accuracy_top1'] == row['reference_accuracy_top1'] and np.isfinite(row['accuracy_top1'])
    assert row['reference_accuracy_top1'] >= 0.9 and row['passed'] is True  # the trained model knows them
    # the labels come from the folders: the same photographs under each other's names score (almost) nothing
    from export.views import ParityViews
    swapped = tmp_path / 'swapped'
    for name, other in (('coffee', 'rocket'), ('rocket', 'chelsea'), ('chelsea', 'coffee')):
        (swapped / other).mkdir(parents=True)
        (folder / name / f'{name}.png').rename(swapped / other / f'{name}.png')
    views = ParityViews.of(as_loaded(trained_model), swapped)
    figures = views.figures(views.reference)
    assert figures['reference_accuracy_top1'] <= 0.1 and figures['accuracy_views'] > 0, figures
