"""NNCF's int8 beside ours (``export.onnx --explain``), and the settings record every int8 export keeps: NNCF's graph
judged on the same views as ours, its settings recorded, a failure of NNCF's one line in its row and no harm to the
export; ``int8_settings`` in a plain export's row and export.json."""
import json
import math

import onnx
import pytest

from export import nncf_int8
from export.calibration import calibration_crops
from export.int8 import Int8Result
from export.precision import INT8_OP_TYPES
from export.trt.preflight import zero_point_problems
from export.views import ParityViews

pytestmark = pytest.mark.slow  # the exported fixture, and NNCF's quantization of it

NNCF_CROPS = 16  # NNCF's cost here is mostly fixed (graph copies and shape inference of 26 M weights): a few crops


def _int8_row(result) -> dict:
    return next(r for r in result.rows if r['precision'] == 'int8')


def test_nncf_is_judged_beside_ours_on_the_same_views(exported_graphs, trained_model, as_loaded, monkeypatch):
    """compare_with_nncf on the fixture's fp32 graph: ours and NNCF's defaults, judged by the export's judge on the
    same parity views (ours gets the figures its export got), timed, settings recorded; NNCF's activations are
    unsigned (uint8) where ours are symmetric int8, so TensorRT would refuse its graph and not ours."""
    result, folder = exported_graphs
    row = _int8_row(result)
    views = ParityViews.of(as_loaded(trained_model))
    judge = views.judge_graph('int8', True)
    ours_graph = onnx.load(str(folder / 'model.int8.onnx'))
    ours = Int8Result(ours_graph, judge(ours_graph), quantizer=None)
    crops, _ = calibration_crops(trained_model, count=NNCF_CROPS)
    made, real = [], nncf_int8.nncf_int8

    def keep(*args):  # NNCF's graph, kept to look at its zero points
        made.append(real(*args))
        return made[-1]
    monkeypatch.setattr(nncf_int8, 'nncf_int8', keep)

    rows = nncf_int8.compare_with_nncf(onnx.load(str(folder / 'model.onnx')), crops, ours, judge, views.x,
                                       row['int8_settings'], {'defaults': nncf_int8.NNCF_SETTINGS['defaults']})

    version = nncf_int8.nncf_version()
    assert [r['what'] for r in rows] == ['ours', f'NNCF {version} defaults'] and 'error' not in rows[1], rows
    assert rows[0]['views'] == rows[1]['views'] == len(views.x) == row['views']
    assert rows[0]['sqnr_db'] == pytest.approx(row['sqnr_db']) and rows[0]['passed'] is row['passed'] is True
    assert rows[0]['settings'] == row['int8_settings']
    assert rows[1]['settings'] == {'tool': f'nncf {version} quantize (ONNX backend)', 'preset': 'PERFORMANCE',
                                   'fast_bias_correction': True, 'subset_size': NNCF_CROPS}
    for r in rows:
        assert math.isfinite(r['sqnr_db']) and 0 < r['decisive_views'] <= r['views'] and r['ms_b1'] > 0
        assert r['accuracy_top1'] is None and r['passed'] in (True, False)  # the sample photographs: no labels
    print({r['what']: (round(r['sqnr_db'], 1), r['decisive_top1_agreement'], r['decisive_views']) for r in rows})

    zero_point_types = {t.data_type for t in made[0].graph.initializer if 'zero_point' in t.name}
    assert onnx.TensorProto.UINT8 in zero_point_types and zero_point_problems(made[0])  # unsigned activations
    assert zero_point_problems(ours_graph) == []
    table = nncf_int8.format_comparison(rows).splitlines()
    assert table[0] == f'int8 beside NNCF (same {NNCF_CROPS} crops, same {len(views.x)} views, ONNX Runtime CPU)'
    assert table[1].split() == ['graph', 'SQNR', 'dB', 'top-1', 'agreement', 'labelled', 'top-1', 'ms', 'b1', 'gate']
    assert table[2].startswith('ours ') and table[3].startswith(f'NNCF {version} defaults ')


def test_a_failing_nncf_is_one_line_and_the_export_goes_on(tmp_path, monkeypatch, capsys):
    """An ``--explain`` export where NNCF raises on every setting: each NNCF row says why in one line, the int8
    graph is written and vouched for, and the printout, model.int8.layers.md/.json and export.json say what was
    compared and which settings made our graph. On timm's test_resnet at 32 x 32 with random weights (gates not
    judged): the same code path as the fixture's at a third of its cost."""
    import timm
    import torch
    from alexnet_zoo.checkpoint import LoadedModel
    from alexnet_zoo.samples import PHOTOGRAPHS
    from export.onnx import _print_result, export_onnx

    def fails(*args):
        raise RuntimeError('cannot quantize this graph\n  a traceback-like second line')
    monkeypatch.setattr(nncf_int8, 'nncf_int8', fails)
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=len(PHOTOGRAPHS)).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 32, 32), 'crop_pct': 1.0}
    loaded = LoadedModel(model, 'test_resnet', len(PHOTOGRAPHS), False, 'random init', list(PHOTOGRAPHS))
    out_dir = tmp_path / 'graphs'
    result = export_onnx(loaded, out_dir, ['int8'], explain=True)
    assert result.paths['int8'] == out_dir / 'model.int8.onnx' and result.paths['int8'].is_file()

    _print_result(loaded, result)  # what python -m export.onnx prints
    lines = capsys.readouterr().out.splitlines()
    settings_line = next(line for line in lines if line.startswith('int8 settings: '))
    assert settings_line.startswith('int8 settings: onnxruntime ') and 'minmax over 128 crops' in settings_line
    start = lines.index('int8 beside NNCF (same 128 crops, same 256 views, ONNX Runtime CPU)')
    assert lines[start + 2].startswith('ours ') and lines[start + 2].endswith('not judged')
    failed = lines[start + 3:start + 3 + len(nncf_int8.NNCF_SETTINGS)]
    for line, name in zip(failed, nncf_int8.NNCF_SETTINGS, strict=True):
        assert line.startswith(f'NNCF {nncf_int8.nncf_version()} {name} ')
        assert line.endswith('error: RuntimeError: cannot quantize this graph')

    assert '```\nint8 beside NNCF (same 128 crops' in (out_dir / 'model.int8.layers.md').read_text()
    compared = json.loads((out_dir / 'model.int8.layers.json').read_text())['compared']
    assert [r.get('error') for r in compared] == [None] + ['RuntimeError: cannot quantize this graph'] * 2
    manifest = json.loads((out_dir / 'export.json').read_text())
    assert manifest['files']['model.int8.onnx']['int8_settings'] == compared[0]['settings']


def test_every_int8_export_records_its_settings(exported_graphs):
    """A plain export (no --explain): the int8 row and export.json say which settings made the graph; no NNCF."""
    result, folder = exported_graphs
    row = _int8_row(result)
    settings = row['int8_settings']
    assert settings['tool'].startswith('onnxruntime ') and settings['tool'].endswith(' quantize_static')
    assert {k: v for k, v in settings.items() if k != 'tool'} == {
        'format': 'QDQ', 'activations': 'int8, symmetric, per tensor', 'weights': 'int8, symmetric, per channel',
        'biases': 'float', 'calibration': 'minmax over 128 crops', 'op_types': list(INT8_OP_TYPES),
        'float_layers': [], 'equalized': []}
    manifest = json.loads((folder / 'export.json').read_text())
    assert manifest['files']['model.int8.onnx']['int8_settings'] == settings
    assert 'int8_settings' not in manifest['files']['model.onnx'] and 'compared' not in row


def test_attention_is_quantized_as_a_transformer(monkeypatch):
    """A graph with Softmax and LayerNormalization gets NNCF's model_type TRANSFORMER; a CNN does not. OpenVINO's
    telemetry switch (CI) is set only while NNCF is imported, and only where the user did not set it."""
    from onnx import helper
    nodes = [helper.make_node('LayerNormalization', ['x', 's'], ['n']), helper.make_node('Softmax', ['n'], ['y'])]
    attention = helper.make_model(helper.make_graph(nodes, 'g', [], []))
    cnn = helper.make_model(helper.make_graph(nodes[1:], 'g', [], []))
    assert nncf_int8.nncf_settings(attention, {'preset': 'MIXED'}, 8)['model_type'] == 'TRANSFORMER'
    assert 'model_type' not in nncf_int8.nncf_settings(cnn, {'preset': 'MIXED'}, 8)

    monkeypatch.delenv('CI', raising=False)
    with nncf_int8._environ('CI', 'true'):
        assert nncf_int8.os.environ['CI'] == 'true'
    assert 'CI' not in nncf_int8.os.environ and nncf_int8.os.environ['NNCF_CI']
    monkeypatch.setenv('CI', 'false')
    with nncf_int8._environ('CI', 'true'):
        assert nncf_int8.os.environ['CI'] == 'false'
