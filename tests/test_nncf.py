"""NNCF's int8 beside ours (``export.onnx --explain``), and the settings record every int8 export keeps: a failure of
NNCF's is one line in its row and does no harm to the export; ``int8_settings`` in a plain export's row and
export.json; attention graphs quantized by NNCF as transformers."""
import json

import pytest

import export.int8.nncf_int8 as nncf_int8
from export.int8.quantizer import INT8_OP_TYPES

pytestmark = pytest.mark.slow  # the exported fixture, and an export with --explain


def _int8_row(result) -> dict:
    return next(r for r in result.rows if r['precision'] == 'int8')


# NNCF run for real, beside ours on the same views: tests/test_promises.py (test_explain_judges_nncf_beside_ours).


def test_a_failing_nncf_is_one_line_and_the_export_goes_on(tmp_path, monkeypatch, capsys):
    """An ``--explain`` export where NNCF raises on every setting: each NNCF row says why in one line, the int8
    graph is written and vouched for, and the printout, model.int8.layers.md/.json and export.json say what was
    compared and which settings made our graph. On timm's test_resnet at 32 x 32 with random weights (gates not
    judged): the same code path as the fixture's at a third of its cost."""
    import timm
    import torch
    from alexnet_zoo.checkpoint import LoadedModel
    from alexnet_zoo.samples import PHOTOGRAPHS
    from export.onnx import export_onnx
    from export.onnx.cli import _print_result

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
    assert settings_line.startswith('int8 settings: onnxruntime ')
    assert 'percentile (99.999th) over 128 crops' in settings_line
    row, = result.rows  # the file as written beside the form the CPU runtimes run, both from the row
    assert f'(symmetric, TensorRT\'s form): SQNR {row["symmetric_sqnr_db"]:.1f} dB' in lines[lines.index(settings_line) + 1]
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
        'biases': 'float', 'calibration': 'percentile (99.999th) over 128 crops', 'op_types': list(INT8_OP_TYPES),
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
