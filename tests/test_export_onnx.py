"""export.onnx: real exports of the briefly trained alexnet_bn, run in ONNX Runtime and checked against PyTorch.

The three graphs are exported once per test run (library call, conftest's ``exported_graphs``) and once more
through the CLI with ``--softmax`` (``softmax_graphs``); every bad input runs the command's own ``main`` through
``run_cli`` in-process, and one runs in a real process.
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from onnx import numpy_helper

import alexnet_zoo
from alexnet_zoo.cli import run_cli
from conftest import FIXTURE_SIZE
from alexnet_zoo.data import random_crops, sample_batch
from alexnet_zoo.samples import PHOTOGRAPHS
from export.contract import CALIBRATION_FILE, DEFAULT_OPSET, FILENAMES, read_metadata
from export.contract import GRAPH_PRECISIONS as PRECISIONS
from export.export_manifest import EXPORT_MANIFEST
from export.onnx import ParityGateError, export_onnx
from export.parity import GATES, compare, judge
from export.onnx.torch_export import fold_batchnorm
from export.trt.preflight import zero_points

REPO = Path(__file__).resolve().parents[1]
SIZE = (3, FIXTURE_SIZE, FIXTURE_SIZE)  # the trained fixture's input


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@pytest.fixture(scope='module')
def exported(exported_graphs):
    """All three precisions of the trained model (exported once per test run, shared with the TensorRT preflight tests)."""
    return exported_graphs


@pytest.fixture(scope='module')
def photos(trained_model):
    """The parity photographs (centre crops) and PyTorch fp32 logits for them."""
    _, x = sample_batch(trained_model)
    with torch.no_grad():
        return x.numpy(), trained_model(x).numpy()


def test_result_rows_and_files(exported):
    result, out = exported
    assert set(result.paths) == set(PRECISIONS)
    assert {p: path.name for p, path in result.paths.items()} == FILENAMES
    assert [r['precision'] for r in result.rows] == list(PRECISIONS)
    for row in result.rows:
        path = out / row['file']
        assert path.is_file() and path.stat().st_size == row['size_bytes']
        assert row['opset'] == DEFAULT_OPSET and row['seconds'] > 0
        assert row['judged'] is True and row['passed'] is True, row
        assert {'max_abs_err', 'max_rel_err', 'sqnr_db', 'cosine_min', 'top1_agreement'} <= set(row)
    sizes = {r['precision']: r['size_bytes'] for r in result.rows}
    assert sizes['int8'] < sizes['fp16'] < sizes['fp32']
    int8, = [r for r in result.rows if r['precision'] == 'int8']
    # judged as ONNX Runtime and OpenVINO run it (export.int8.uint8): each ReLU's output on 255 steps, not the file's 127
    # (alexnet_bn's convolutions read BatchNorm outputs, which can be negative: 37.7 against 36.9 dB here)
    assert int8['sqnr_db'] > int8['symmetric_sqnr_db'] > 25, int8
    written = {*FILENAMES.values(), CALIBRATION_FILE, EXPORT_MANIFEST, '.lock'}  # no temporary files left
    assert not [p for p in out.iterdir() if p.name not in written]


@pytest.fixture(scope='module')
def views(trained_model):
    """256 random crops that are not export.onnx's parity views (another seed) and PyTorch fp32 logits for them:
    the gate must hold on views the export never judged."""
    x, _ = random_crops(trained_model, 256, seed=11)
    with torch.no_grad():
        return x.numpy(), trained_model(x).numpy()


@pytest.mark.parametrize('precision', PRECISIONS)
def test_graph_agrees_with_pytorch_within_its_gate(exported, views, precision):
    """An independent ONNX Runtime run of the written file on other views, judged by the precision's gate."""
    x, reference = views
    logits = _session(exported[0].paths[precision]).run(['logits'], {'input': x})[0]
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    figures = compare(reference, logits)
    assert judge(precision, figures, trained=True)['passed'], (precision, figures, GATES[precision])


@pytest.mark.parametrize('precision', PRECISIONS)
def test_dynamic_batch_1_and_5(exported, photos, precision):
    x, _ = photos
    session = _session(exported[0].paths[precision])
    full = session.run(['logits'], {'input': x[:5]})[0]
    one = session.run(['logits'], {'input': x[:1]})[0]
    assert full.shape == (5, len(PHOTOGRAPHS)) and one.shape == (1, len(PHOTOGRAPHS))
    np.testing.assert_allclose(one[0], full[0], rtol=0, atol=1e-3 * np.abs(full).max())


@pytest.mark.parametrize('precision', PRECISIONS)
def test_graph_contract(exported, precision):
    path = exported[0].paths[precision]
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path))
    assert [o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')] == [DEFAULT_OPSET]
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ('input', 'logits')
    for value in (inp, out):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert value.type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == list(SIZE)  # the model's data config
    ops = {n.op_type for n in graph.graph.node}
    weight_types = {t.data_type for t in graph.graph.initializer if t.name.endswith('weight') or 'quantized' in t.name}
    if precision == 'fp16':
        assert onnx.TensorProto.FLOAT16 in weight_types and onnx.TensorProto.FLOAT not in weight_types
        assert 'Cast' in ops
    if precision == 'int8':
        assert {'QuantizeLinear', 'DequantizeLinear'} <= ops


def test_int8_is_symmetric_per_channel_and_tensorrt_parsable(exported):
    graph = onnx.load(str(exported[0].paths['int8']))
    points = zero_points(graph)
    assert len(points) > 20
    assert all(zp.dtype == np.int8 and not zp.any() for zp in points.values())
    initializers = {t.name: t for t in graph.graph.initializer}
    weight_dqs = {n.input[0]: n for n in graph.graph.node
                  if n.op_type == 'DequantizeLinear' and n.input[0] in initializers}
    assert weight_dqs
    for name, node in weight_dqs.items():  # weights only: int8, per output channel; no int32 biases
        weight = initializers[name]
        assert weight.data_type == onnx.TensorProto.INT8, name
        assert numpy_helper.to_array(initializers[node.input[1]]).shape == (weight.dims[0],), name
    convs_and_gemms = [n for n in graph.graph.node if n.op_type in ('Conv', 'Gemm')]
    assert len(convs_and_gemms) == 9 and all(n.input[1] in {d.output[0] for d in weight_dqs.values()}
                                             for n in convs_and_gemms)
    from export.trt.preflight import check_onnx  # the TensorRT exporter's CPU preflight: ops, types, zero points
    assert check_onnx(exported[0].paths['int8']) == []


def test_batchnorm_before_linear_is_folded(exported, trained_model):
    graph = onnx.load(str(exported[0].paths['fp32']), load_external_data=False)
    # five conv blocks + three hidden FC layers carry BatchNorm; the four that feed a Linear fold into it
    assert sum(n.op_type == 'BatchNormalization' for n in graph.graph.node) == 4
    folded = fold_batchnorm(trained_model)
    assert folded is not trained_model
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        expected, got = trained_model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained_model.modules()) == 5  # the original is kept


@pytest.mark.parametrize('precision', PRECISIONS)
def test_metadata_round_trips(exported, trained_model, precision):
    meta = read_metadata(exported[0].paths[precision])
    assert meta['model_name'] == 'alexnet_bn' and meta['precision'] == precision
    assert meta['num_classes'] == trained_model.num_classes == len(PHOTOGRAPHS)
    assert meta['input_size'] == list(SIZE) == list(trained_model.pretrained_cfg['input_size'])
    assert meta['mean'] == pytest.approx([0.485, 0.456, 0.406]) and meta['std'] == pytest.approx([0.229, 0.224, 0.225])
    assert meta['crop_pct'] == pytest.approx(0.875) and meta['interpolation'] == 'bilinear'
    assert meta['label_names'] == list(PHOTOGRAPHS)
    assert meta['version'] == alexnet_zoo.__version__ and meta['opset'] == DEFAULT_OPSET
    assert meta['trained'] is True and meta['softmax'] is False
    if precision == 'int8':
        assert meta['calibration']['method'] == 'percentile' and meta['calibration']['crops'] >= 100


@pytest.mark.slow
def test_failed_gate_writes_nothing_and_removes_a_stale_file(as_loaded, trained_model, tmp_path, monkeypatch):
    stale = tmp_path / 'model.onnx'
    stale.write_bytes(b'from an earlier run')
    monkeypatch.setitem(GATES['fp32'], 'rel_err_max', -1.0)  # a gate nothing can pass
    with pytest.raises(ParityGateError, match='fp32') as info:
        export_onnx(as_loaded(trained_model), tmp_path, precisions=('fp32',))
    assert list(tmp_path.iterdir()) == []
    assert info.value.result.paths == {} and info.value.result.rows[0]['passed'] is False


def test_library_rejects_bad_arguments_before_writing(as_loaded, trained_model, tmp_path):
    for kwargs, message in [({'precisions': ('fp8',)}, 'unknown precision'),
                            ({'opset': 12}, 'opset must be between'),
                            ({'calibration_method': 'entropy'}, 'unknown calibration method')]:
        with pytest.raises(ValueError, match=message):
            export_onnx(as_loaded(trained_model), tmp_path / 'out', **kwargs)
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_calibration_crops_from_a_folder(trained_model, tmp_path):
    from alexnet_zoo.samples import write_image_folder
    from export.int8.calibration import PhotoCalibrationReader, calibration_crops
    folder = write_image_folder(tmp_path / 'photos', names=['coffee', 'rocket'], train_per_class=2, val_per_class=0)
    crops, source = calibration_crops(trained_model, folder / 'train', count=10)
    assert crops.shape == (10, *SIZE) and crops.dtype == np.float32 and '4 image(s)' in source
    reader = PhotoCalibrationReader(crops, batch_size=4)
    assert [len(feed['input']) for feed in iter(reader.get_next, None)] == [4, 4, 2]
    reader.rewind()
    assert reader.get_next()['input'].shape == (4, *SIZE)


def test_read_metadata_of_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / 'model.onnx').write_bytes(b'\x00 not a protobuf \xff' * 10)
    with pytest.raises(ValueError, match='not an ONNX model'):
        read_metadata(tmp_path / 'model.onnx')
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / 'missing.onnx')


# ------------------------------------------------------------------------------------------- the command line


def test_cli_softmax_adds_probabilities(softmax_graphs, photos):
    code, stdout, stderr, out = softmax_graphs
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == [  # only those asked for,
        'export.json', 'model.fp16.onnx', 'model.int8.calibration.json', 'model.int8.onnx']  # int8's ranges, the set
    assert 'int8' in stdout and 'fp16' in stdout and 'pass' in stdout and 'Traceback' not in stderr
    x, reference = photos
    for name in ('model.fp16.onnx', 'model.int8.onnx'):
        session = _session(out / name)
        assert [o.name for o in session.get_outputs()] == ['logits', 'probabilities']
        logits, probabilities = session.run(None, {'input': x})
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
        assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()
        precision = read_metadata(out / name)['precision']
        figures = compare(reference, logits)  # the gate itself, on the photographs' centre crops
        assert judge(precision, figures, trained=True)['passed'], (precision, figures)
        assert read_metadata(out / name)['softmax'] is True
    int8 = onnx.load(str(out / 'model.int8.onnx'), load_external_data=False)
    softmax, = [n for n in int8.graph.node if n.op_type == 'Softmax']
    assert softmax.output[0] == 'probabilities'  # probabilities come out of a float Softmax, not out of int8


@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory):
    """Files for the bad inputs: an untrained 19-class alexnet_bn as a state dict and as a checkpoint folder (each
    input is refused before any weights matter), an empty folder, one without images, a plain file."""
    import timm
    from safetensors.torch import save_file
    from alexnet_zoo.checkpoint import save_checkpoint_dir
    root = tmp_path_factory.mktemp('bad')
    model = timm.create_model('alexnet_bn', num_classes=len(PHOTOGRAPHS))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / 'weights.safetensors'))
    save_checkpoint_dir(model, root / 'checkpoint', list(PHOTOGRAPHS))
    (root / 'empty').mkdir()
    (root / 'not-images').mkdir()
    (root / 'not-images' / 'notes.txt').write_text('not an image')
    (root / 'not-images' / 'fake.png').write_bytes(b'not a png either')
    (root / 'a-file').write_text('a file, not a folder')
    return root


BAD = {  # name: (arguments, exit code, the message's words, what the one line must name)
    'unknown model': (['--model', 'alexnet_xl'], 1, "unknown model: 'alexnet_xl'", None),
    'unknown precision': (['--precisions', 'fp32,fp8'], 2, "unknown precision 'fp8'", None),
    'missing checkpoint': (['--checkpoint', '{root}/missing.safetensors'], 1, 'checkpoint not found: ',
                           'missing.safetensors'),
    'classifier mismatch (state dict)': (['--checkpoint', '{root}/weights.safetensors', '--num-classes', 17], 1,
                                         'classes, the model has 17 (set --num-classes', 'weights.safetensors'),
    'classifier mismatch (directory)': (['--checkpoint', '{root}/checkpoint', '--num-classes', 17], 1,
                                        'classes, --num-classes asks for 17', 'checkpoint'),
    'empty calibration folder': (['--checkpoint', '{root}/checkpoint', '--calibration-images', '{root}/empty'], 1,
                                 'no readable images in ', 'empty'),
    'calibration folder without images': (['--checkpoint', '{root}/checkpoint', '--calibration-images',
                                           '{root}/not-images'], 1, 'no readable images in ', 'not-images'),
    'output directory not writable': (['--checkpoint', '{root}/checkpoint'], 1, 'output directory not writable: ',
                                      'a-file'),
    'opset out of range': (['--opset', 12], 2, '--opset: must be at least 13, got 12', None),
    'int8 fallback mixed': (['--int8-fallback', 'auto,features.8'], 2,
                            '--int8-fallback takes auto, none, or a list of layers, not a mix', None),
    'missing calibration cache': (['--checkpoint', '{root}/checkpoint', '--calibration-cache', '{root}/none.json'],
                                  1, 'calibration cache not found: ', 'none.json'),
    'calibration cache not a cache': (['--checkpoint', '{root}/checkpoint', '--precisions', 'int8',
                                       '--calibration-cache', '{root}/a-file'], 1,
                                      'is not a calibration file of export.onnx', 'a-file'),
    'missing parity images': (['--checkpoint', '{root}/checkpoint', '--parity-images', '{root}/missing'], 1,
                              'image folder not found: ', 'missing'),
}


@pytest.mark.parametrize('case', BAD)
def test_cli_bad_input_is_one_error_line(bad_inputs, case, capsys, monkeypatch):
    """Each bad input is refused where it should be: its own message, naming the file, and exit code, through the
    command's own ``run_cli`` (the real process: tests/test_fuzz.py's pickle attack through the command); nothing
    written. A file that is no calibration record is refused before any calibration crop is made."""
    import export.onnx.graphs as graphs
    from export.onnx import main
    crops_made = []
    real_crops = graphs.calibration_crops
    monkeypatch.setattr(graphs, 'calibration_crops', lambda *args: crops_made.append(1) or real_crops(*args))
    args, code, message, named = BAD[case]
    out = bad_inputs / 'a-file' / 'out' if 'writable' in case else bad_inputs / f'out-{case}'
    before = sorted(p.name for p in bad_inputs.iterdir())
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a).format(root=bad_inputs) for a in args] + ['--output-dir', str(out)])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], (case, lines)
    assert named is None or named in lines[0], (case, named, lines)
    assert exit_.value.code == code, (case, exit_.value.code, lines)
    assert not out.exists() and sorted(p.name for p in bad_inputs.iterdir()) == before, case
    assert not (case == 'calibration cache not a cache' and crops_made), 'the crops came before the cheap checks'


# --- paths the default export does not take ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('opset', [13])  # the oldest opset the TorchScript exporter path serves
def test_torchscript_exporter_for_older_opsets(as_loaded, trained_model, views, tmp_path, opset):
    """Opsets below 18 (what TensorRT 8.6 deployments ask for) go through the TorchScript exporter: the graph
    declares that opset, passes its fp32 gate and agrees with PyTorch on views the export never judged."""
    result = export_onnx(as_loaded(trained_model), tmp_path, precisions=('fp32',), opset=opset)
    graph = onnx.load(str(result.paths['fp32']))
    assert [o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')] == [opset]
    assert read_metadata(result.paths['fp32'])['opset'] == opset and result.rows[0]['passed']
    x, reference = views
    logits = _session(result.paths['fp32']).run(['logits'], {'input': x})[0]
    assert judge('fp32', compare(reference, logits), trained=True)['passed']


@pytest.mark.slow
def test_percentile_calibration_clips_what_minmax_keeps(as_loaded, trained_model, exported, tmp_path):
    """The default percentile ranges are no wider than --calibration-method minmax's on the same crops and narrower
    for some tensor, recorded as such, and both graphs pass their int8 gate."""
    result = export_onnx(as_loaded(trained_model), tmp_path, precisions=('int8',), calibration_method='minmax',
                         int8_fallback='none')
    assert result.rows[0]['passed']

    def ranges(folder):
        data = json.loads((folder / CALIBRATION_FILE).read_text())
        def value(v):  # ORT writes a numpy array ({'CLS': 'numpy.array', 'data': [...]}) or a bare float
            return float(np.ravel(v['data'] if isinstance(v, dict) else v)[0])
        return data['alexnet_zoo']['method'], {name: (value(t['lowest']), value(t['highest']))
                                               for name, t in data['data'].items()}
    minmax_method, minmax = ranges(tmp_path)
    method, percentile = ranges(exported[1])
    assert (method, minmax_method) == ('percentile', 'minmax') and percentile.keys() == minmax.keys()
    widths = {name: (percentile[name][1] - percentile[name][0], minmax[name][1] - minmax[name][0]) for name in minmax}
    assert all(p <= m + 1e-6 for p, m in widths.values())
    assert any(p < 0.999 * m for p, m in widths.values())


@pytest.mark.slow
@pytest.mark.full  # make fuzz; make zoo trains, exports and benchmarks all three at 227 x 227
@pytest.mark.parametrize('name, size', [('alexnet_bn', None), ('alexnet', FIXTURE_SIZE), ('alexnet_lrn', FIXTURE_SIZE)])
def test_export_the_other_alexnets(name, size, tmp_path):
    """alexnet_bn at its own 227 x 227 (the trained fixture is smaller), alexnet in torchvision's layout (adaptive
    pooling) and alexnet_lrn, the paper's, with LocalResponseNorm and grouped convolutions (both at the fixture's
    size) export to fp32 graphs that compute what PyTorch computes (random weights: checked directly, the gates
    are not judged)."""
    from alexnet_zoo.checkpoint import LoadedModel, load_model
    if size is None:  # the full size: the export alone, checked directly (no parity views at 227 x 227)
        from export.onnx.torch_export import torch_to_onnx
        model = load_model(name, num_classes=10).model
        graph = torch_to_onnx(model, model.pretrained_cfg['input_size'])
        x = sample_batch(model)[1][:2]
        with torch.no_grad():
            expected = model(x).numpy()
        session = ort.InferenceSession(graph.SerializeToString(), providers=['CPUExecutionProvider'])
        logits = session.run(['logits'], {'input': x.numpy()})[0]
        assert x.shape[1:] == (3, 227, 227) and np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
        return
    else:
        model = timm.create_model(name, num_classes=10, img_size=size,
                                  pretrained_cfg_overlay=dict(input_size=(3, size, size))).eval()
        loaded = LoadedModel(model, name, 10, False, 'random init')
    result = export_onnx(loaded, tmp_path, precisions=('fp32',))
    assert result.rows[0]['judged'] is False and read_metadata(result.paths['fp32'])['model_name'] == name
    x = sample_batch(loaded.model)[1][:4]
    with torch.no_grad():
        expected = loaded.model(x).numpy()
    logits = _session(result.paths['fp32']).run(['logits'], {'input': x.numpy()})[0]
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


class _FiveDimAttention(torch.nn.Module):
    """Attention over 5-D tensors, as nest_tiny's: PyTorch runs it, the ONNX converter takes only 4-D."""

    def __init__(self):
        super().__init__()
        self.pretrained_cfg = {'architecture': 'five_d'}
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        q = x.reshape(x.shape[0], 1, 3, 4, 4)
        return self.fc(torch.nn.functional.scaled_dot_product_attention(q, q, q).mean((1, 2, 3)))


class _DataDependent(torch.nn.Module):
    """A branch on the input's values, which torch.export cannot trace."""

    def forward(self, x):
        return x.flatten(1)[:, :2] if x.sum() > 0 else x.flatten(1)[:, 2:4]


@pytest.mark.parametrize('model, opset, why', [
    (_FiveDimAttention(), 13, "five_d to ONNX: Exporting the operator 'aten::scaled_dot_product_attention' to ONNX "
                              "opset version 13 is not supported"),  # the TorchScript exporter
    (_DataDependent(), DEFAULT_OPSET, '_DataDependent to ONNX: Could not guard on data-dependent expression'),
], ids=['torchscript', 'torch.export'])
def test_a_model_the_exporter_cannot_take_is_one_line_saying_why(model, opset, why):
    """Not the exporter's own first line ("Failed to export ... step 1/3 ... Next steps:"), which says where, not
    why: its innermost cause, naming the model."""
    from export.onnx.torch_export import torch_to_onnx
    with pytest.raises(RuntimeError) as error:
        torch_to_onnx(model.eval(), (3, 4, 4), opset)
    message = str(error.value)
    assert message.startswith(f'cannot export {why}') and '\n' not in message and 'step' not in message, message
