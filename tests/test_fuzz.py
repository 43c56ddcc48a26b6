"""Every reader of outside data against arbitrary and hostile input (hypothesis): ONNX graphs, checkpoints, TensorRT
build records, reports given to --compare, images, and every numeric command-line argument.

The property is the commands' contract: a reader either reads the input or refuses it with one ``error: ...``
line and exit 1 (a usage mistake: exit 2), never a traceback, never a file written, never code run from a
payload. The suite runs a fixed subset (the ``ci`` profile: 25 deterministic examples per property); ``make fuzz``
runs 1,000 random ones each (``--hypothesis-profile=fuzz``) and prints the counts.
"""
import contextlib
import io
import json
import math
import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, note, strategies as st
from onnx import TensorProto, helper
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from alexnet_zoo.checkpoint import load_model, load_weights
from alexnet_zoo.cli import run_cli
from alexnet_zoo.data import _readable_image
from alexnet_zoo.samples import MAX_PIXELS, ImageTooLarge, folder_images, open_rgb
from export.contract import METADATA_KEYS, graph_precision, input_chw, read_metadata, read_onnx
from export.export_manifest import EXPORT_MANIFEST, check_export
from export.trt.preflight import check_onnx
from export.trt.record import check_record, read_record

pytestmark = pytest.mark.fuzz
CONTROL = re.compile('[\x00-\x1f\x7f-\x9f]')  # C0, DEL, C1: names from files reach the output escaped, never raw
HOSTILE = 'x\x1b[31m\x85\x7f\ty'  # a terminal escape, C1 NEL, DEL, a tab
ESCAPED = r'x\x1b[31m\x85\x7f\ty'


# ------------------------------------------------------------------------------------------------ the contract
def outcome(read) -> tuple:
    """What a command makes of ``read()``: its exit code and stderr, through the commands' own ``run_cli``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: (read(), 0)[1], [])
    return exit_.value.code, err.getvalue()


def read_or_refuse(read, *names: str) -> bool:
    """True when ``read()`` read the input; else it was refused in one clear line naming ``names``, exit 1."""
    os.environ.pop('ALEXNET_ZOO_DEBUG', None)
    code, err = outcome(read)
    if code == 0:
        return True
    note(err)
    lines = err.splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
    assert err == lines[0] + '\n' and not CONTROL.search(lines[0]), repr(err)
    for name in names:
        assert name in lines[0], f'{name!r} not named in: {lines[0]}'
    return False


def files_in(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob('*')}


def mutated(data: bytes, draw) -> bytes:
    """Truncated, bit-flipped or spliced bytes of a valid file."""
    kind = draw(st.sampled_from(['truncate', 'flip', 'splice', 'same']))
    if not data:
        return draw(st.binary(max_size=16))
    if kind == 'truncate':
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == 'flip':
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == 'splice':
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(max_size=64)) + data[at:]
    return data


def json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


# ------------------------------------------------------------------------------------------------ ONNX graphs
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL,
              TensorProto.STRING, TensorProto.DOUBLE, TensorProto.UNDEFINED]
DIM = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.sampled_from(['batch', 'h', '', 'batch']), st.none())


@st.composite
def onnx_graphs(draw) -> bytes:
    """A graph as a hostile or careless exporter might write one: any input name, rank, dims and type, any op,
    any opset, any metadata (with JSON where the schema has JSON, or not)."""
    name = draw(st.sampled_from(['input', 'x', '']) | st.text(max_size=6))
    shape = draw(st.none() | st.lists(DIM, max_size=6))
    elem = draw(st.sampled_from(ELEM_TYPES))
    out = draw(st.sampled_from(['logits', 'probabilities', 'y', name]))
    op = draw(st.sampled_from(['Identity', 'Relu', 'Flatten', 'Softmax', 'Conv', 'QuantizeLinear', 'NoSuchOp']))
    graph = helper.make_graph([helper.make_node(op, [name], [out], name=draw(st.text(max_size=6)))], 'g',
                              [helper.make_tensor_value_info(name, elem, shape)],
                              [helper.make_tensor_value_info(out, draw(st.sampled_from(ELEM_TYPES)), shape)])
    if draw(st.booleans()):  # an initializer with absurd dims that claims far more data than it has
        dims = draw(st.lists(st.integers(0, 2 ** 40), min_size=1, max_size=4))
        graph.initializer.append(TensorProto(name='w', data_type=TensorProto.FLOAT, dims=dims, raw_data=b'\0' * 16))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(draw(st.sampled_from(['', 'com.x'])),
                                                                         draw(st.integers(0, 40)))])
    model.ir_version = draw(st.integers(0, 20))
    meta = draw(st.dictionaries(st.sampled_from([*METADATA_KEYS, 'junk']),
                                json_values().map(json.dumps) | st.text(max_size=16), max_size=6))
    helper.set_model_props(model, meta)
    data = model.SerializeToString()
    return mutated(data, draw) if draw(st.booleans()) else data


def _hostile_graph() -> bytes:
    """A graph whose input and node are named HOSTILE (and whose static batch dimension every reader refuses)."""
    graph = helper.make_graph([helper.make_node('Relu', [HOSTILE], ['logits'], name=HOSTILE)], 'g',
                              [helper.make_tensor_value_info(HOSTILE, TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]).SerializeToString()


HOSTILE_GRAPH = _hostile_graph()


@given(data=st.one_of(st.binary(max_size=512), onnx_graphs()))
@example(data=HOSTILE_GRAPH)
@example(data=b'')
@example(data=b'\x08\x07' + b'\xff' * 40)
def test_onnx_readers(data, tmp_path_factory):
    """What the benchmark, export.trt (build and --check-only) and a deployer read from a graph."""
    folder = tmp_path_factory.mktemp('onnx')
    path = folder / 'model.onnx'
    path.write_bytes(data)
    before = files_in(folder)
    read_or_refuse(lambda: read_metadata(path), path.name)
    if read_or_refuse(lambda: read_onnx(path), path.name):
        model = read_onnx(path)
        named = [ESCAPED] if data == HOSTILE_GRAPH else []  # the name is shown, escaped
        read_or_refuse(lambda: input_chw(model), 'input', *named)  # a graph that parses: its input is refused
        assert isinstance(graph_precision(model), str)  # never refused: metadata first, else the graph's ops
    if read_or_refuse(lambda: check_onnx(path), path.name):
        problems = check_onnx(path)
        assert all(isinstance(p, str) and not CONTROL.search(p) for p in problems), problems
        assert data != HOSTILE_GRAPH or any(ESCAPED in p for p in problems), problems
    read_or_refuse(lambda: check_export([path], required=False), EXPORT_MANIFEST)
    assert files_in(folder) == before


VALID_EXPORT = json.dumps({'kind': 'export', 'files': {'model.onnx': {
    'sha256': __import__('hashlib').sha256(b'graph').hexdigest(), 'weights_sha256': 'w'}}})


@given(manifest=st.one_of(json_values().map(json.dumps), st.binary(max_size=64).map(lambda b: b.decode('latin-1'))))
@example(manifest=VALID_EXPORT)
def test_export_manifest_reader(manifest, tmp_path_factory):
    """Any export.json: read only when it lists the graph's very bytes, else one line naming the folder."""
    folder = tmp_path_factory.mktemp('manifest')
    graph = folder / 'model.onnx'
    graph.write_bytes(b'graph')
    (folder / 'export.json').write_text(manifest)
    assert read_or_refuse(lambda: check_export([graph]), folder.name) == (manifest == VALID_EXPORT)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope='module')
def small_model():
    """The model every checkpoint is loaded into (created once: creating it is what costs)."""
    return load_model('alexnet_bn', num_classes=2).model


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def state_dicts(draw, keys) -> dict:
    """Real and foreign keys, any dtype, small shapes (none the model's, so nothing large is ever written)."""
    names = draw(st.lists(st.sampled_from(keys) | st.text(min_size=1, max_size=12), max_size=6, unique=True))
    return {n: torch.zeros(draw(st.lists(st.integers(0, 3), max_size=3)), dtype=draw(st.sampled_from(DTYPES)))
            for n in names}


class Payload:
    """A pickle that runs a command when unpickled (the classic attack on .pth files)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@given(data=st.data(), suffix=st.sampled_from(['.safetensors', '.pth']))
def test_checkpoint_files(data, suffix, small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp('ckpt')
    path = folder / f'weights{suffix}'
    marker = folder / 'payload-ran'
    state = data.draw(state_dicts(list(small_model.state_dict())))
    kind = data.draw(st.sampled_from(['valid format', 'mutated', 'random bytes', 'payload']))
    if kind == 'random bytes':
        raw = data.draw(st.binary(max_size=256))
    elif kind == 'payload':
        wrap = data.draw(st.sampled_from([lambda p: p, lambda p: {'state_dict': p}, lambda p: {'w': torch.ones(1), 'x': p}]))
        raw = pickle.dumps(wrap(Payload(marker)), protocol=data.draw(st.integers(2, 5)))
    else:
        if suffix == '.safetensors':
            raw = safetensors_bytes({k: v.contiguous() for k, v in state.items()}) if state else b''
        else:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            raw = buffer.getvalue()
        if kind == 'mutated':
            raw = mutated(raw, data.draw)
    path.write_bytes(raw)
    before = files_in(folder)
    assert not read_or_refuse(lambda: load_weights(small_model, path), path.name)  # no draw is the whole model
    assert not marker.exists(), 'the pickle payload ran'
    assert files_in(folder) == before


@given(config=st.one_of(json_values(), st.fixed_dictionaries(
           {'architecture': st.sampled_from(['alexnet_bn', 'alexnet', 'resnet50', 'nope', 7]),
            'num_classes': st.one_of(st.integers(-3, 10 ** 12), st.floats(), st.text(max_size=4), st.none())},
           optional={'label_names': json_values(), 'pretrained_cfg': json_values()})),
       weights=st.sampled_from(['none', 'garbage', 'wrong keys']))
@example(config={'architecture': 'alexnet_bn', 'num_classes': 10 ** 9}, weights='wrong keys')
def test_checkpoint_folders(config, weights, tmp_path_factory):
    """A timm Hugging Face layout folder with a broken config.json or weights; absurd class counts are refused
    before a model (and its memory) is made."""
    folder = tmp_path_factory.mktemp('hf')
    (folder / 'config.json').write_text(json.dumps(config))
    if weights == 'garbage':
        (folder / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}' + b'\0' * 8)
    elif weights == 'wrong keys':
        (folder / 'model.safetensors').write_bytes(safetensors_bytes({'features.0.weight': torch.zeros(2, 2)}))
    before = files_in(folder)
    assert not read_or_refuse(lambda: load_model(checkpoint=folder), folder.name)
    assert files_in(folder) == before


# ------------------------------------------------------------------------------------------------ TensorRT records
VALID_RECORD = {'engine': {'file': 'model.int8.plan', 'sha256': None, 'bytes': 6}, 'tensorrt_version': '10.13.0',
                'precision': 'int8', 'input': {'name': 'input', 'min': [1, 3, 224, 224], 'opt': [8, 3, 224, 224],
                                               'max': [64, 3, 224, 224]},
                'gpu': {'name': 'NVIDIA H100', 'compute_capability': '9.0'}}


def _drop_or_replace(value, draw):
    """The record with one nested key deleted or its value replaced by anything JSON can hold (NaN too)."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        choice = draw(st.sampled_from(['drop', 'replace', 'recurse']))
        value = dict(value)
        if choice == 'drop':
            del value[key]
        elif choice == 'replace':
            value[key] = draw(json_values())
        else:
            value[key] = _drop_or_replace(value[key], draw)
    return value


@given(data=st.data())
def test_engine_records(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('plan')
    plan = folder / 'model.int8.plan'
    plan.write_bytes(b'engine')
    valid = json.loads(json.dumps(VALID_RECORD))
    valid['engine']['sha256'] = __import__('hashlib').sha256(b'engine').hexdigest()
    record = data.draw(st.one_of(st.builds(lambda: valid), st.just(None).map(lambda _: _drop_or_replace(valid, data.draw)),
                                 json_values()))
    text = json.dumps(record) if data.draw(st.booleans()) else mutated(json.dumps(record).encode(), data.draw).decode('latin-1')
    (folder / 'model.int8.plan.json').write_text(text)
    before = files_in(folder)
    if read_or_refuse(lambda: read_record(plan), plan.name):
        read_or_refuse(lambda: check_record(read_record(plan), '10.13.0', 'NVIDIA H100', '9.0'), '10.13.0', 'H100')
    assert files_in(folder) == before


# ------------------------------------------------------------------------------------------------ reports
def _valid_report() -> dict:
    row = {'backend': 'openvino', 'precision': 'int8', 'device': 'cpu', 'batch_size': 1,
           'latency_ms': {k: 2.0 for k in ('mean', 'std', 'min', 'p50', 'p90', 'p95', 'p99', 'max')},
           'median_ms': 2.0, 'median_ci95_ms': [1.9, 2.1], 'speedup_vs_torch_fp32': 8.0, 'speedup_ci95': [7.5, 8.5],
           'throughput_ips': 500.0, 'parity': {'sqnr_db': 30.0, 'passed': True}}
    return {'schema_version': 3, 'created_at': '2026-11-28T00:00:00+00:00', 'environment': {'cpu': {'model': 'x'}},
            'results': [row, {**row, 'backend': 'torch', 'precision': 'fp32', 'median_ms': 16.0}]}


@given(data=st.data())
@example(data=None)
@example(data='hostile names')
def test_reports_given_to_compare(data, tmp_path_factory):
    from benchmarks.report.compare import compare_reports
    from benchmarks.report.markdown import comparison_lines
    from benchmarks.report.files import read_report
    from benchmarks.report.schema import read_back
    folder = tmp_path_factory.mktemp('report')
    path = folder / 'old.json'
    if data is None:  # NaN where a figure is read
        report = _valid_report()
        report['results'][0]['median_ms'] = float('nan')
        text = json.dumps(report)
    elif data == 'hostile names':  # what report.md says of the earlier report: its file's name, CPU, date
        path = folder / f'old{HOSTILE}.json'
        report = _valid_report()
        report['environment']['cpu']['model'] = report['created_at'] = HOSTILE
        text = json.dumps(report)
    else:
        report = data.draw(st.one_of(st.just(None).map(lambda _: _drop_or_replace(_valid_report(), data.draw)),
                                     st.just(None).map(lambda _: {**_valid_report(), 'results': [
                                         _drop_or_replace(r, data.draw) for r in _valid_report()['results']]}),
                                     json_values()))
        text = json.dumps(report)
        if data.draw(st.booleans()):
            text = mutated(text.encode(), data.draw).decode('latin-1')
    path.write_text(text)
    before = files_in(folder)
    if read_or_refuse(lambda: read_report(path), path.name):
        comparison = compare_reports(read_report(path), read_back(_valid_report()), str(path))
        lines = comparison_lines(comparison)
        assert all(isinstance(line, str) and not CONTROL.search(line) for line in lines), lines
        assert data != 'hostile names' or lines[1].count(ESCAPED) == 3, lines[1]
    assert files_in(folder) == before


# ------------------------------------------------------------------------------------------------ images
MODES = ['1', 'L', 'P', 'RGB', 'RGBA', 'CMYK', 'I;16', 'I', 'F', 'LA', 'YCbCr']
FORMATS = {'PNG': '.png', 'JPEG': '.jpg', 'BMP': '.bmp', 'TIFF': '.tif', 'WEBP': '.webp', 'GIF': '.gif'}


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a few hundred bytes whose header says ``width`` x ``height`` (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    rows = zlib.compress(b'\0' * 64)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', rows) + chunk(b'IEND', b''))


@st.composite
def image_files(draw) -> tuple:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    buffer = io.BytesIO()
    try:
        Image.new(mode, size, color=draw(st.integers(0, 255))).save(buffer, fmt)
    except (OSError, ValueError, KeyError, TypeError):  # this format cannot hold this mode: the PNG of an RGB one
        buffer = io.BytesIO()
        Image.new('RGB', size).save(buffer, 'PNG')
        fmt = 'PNG'
    return mutated(buffer.getvalue(), draw), FORMATS[fmt]


@given(image=st.one_of(image_files(), st.tuples(st.binary(max_size=64), st.sampled_from(list(FORMATS.values())))))
@example(image=(b'', '.jpg'))
@example(image=(bomb_png(100_000, 100_000), '.png'))
def test_images(image, tmp_path_factory):
    """A folder of one image, read as calibration/parity images (folder_images) and as training data: readable
    means it decodes to RGB; a bomb is refused by its header, before decoding."""
    data, suffix = image
    folder = tmp_path_factory.mktemp('images')
    path = folder / f'image{suffix}'
    path.write_bytes(data)
    before = files_in(folder)
    if read_or_refuse(lambda: folder_images(folder), folder.name):
        [(_, im)] = folder_images(folder)
        assert im.mode == 'RGB' and im.width >= 1 and im.height >= 1
    if read_or_refuse(lambda: _readable_image(str(path)), path.name) and _readable_image(str(path)):
        if read_or_refuse(lambda: open_rgb(path), path.name):  # decoding may still find broken data: one line
            assert open_rgb(path).mode == 'RGB'
    assert files_in(folder) == before


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    for width, height in ((MAX_PIXELS // 1000 + 1, 1001), (100_000, 100_000)):  # past ours, past twice PIL's
        path = tmp_path / f'bomb-{width}.png'
        path.write_bytes(bomb_png(width, height))
        assert path.stat().st_size < 200
        with pytest.raises(ImageTooLarge, match='refused'):
            open_rgb(path)
        code, err = outcome(lambda: folder_images(tmp_path))
        assert code == 1 and 'refused' in err and err.count('\n') == 1


# ------------------------------------------------------------------------------------------------ numeric arguments
def _parsers():
    from alexnet_zoo import samples, train
    from benchmarks import __main__ as bench, agreement, crosscheck
    import benchmarks.serve.benchmark as serve
    from export import onnx as export_onnx
    import export.triton.repository as triton
    from export.trt import __main__ as trt
    required = {'train': ['--data', 'd', '--output', 'o'], 'export.onnx': ['--output-dir', 'o'],
                'benchmarks': ['--output-dir', 'o'], 'export.trt': ['--onnx', 'g'], 'samples': [],
                'agreement': ['r.json'], 'crosscheck': ['--onnx', 'g'], 'export.triton.repository': ['--onnx-dir', 'o',
                '--repository', 'r'], 'benchmarks.serve.benchmark': ['--output-dir', 'o']}
    modules = {'train': train, 'export.onnx': export_onnx, 'benchmarks': bench, 'export.trt': trt,
               'samples': samples, 'agreement': agreement, 'crosscheck': crosscheck, 'export.triton.repository': triton,
               'benchmarks.serve.benchmark': serve}
    return {name: (module.build_parser(), required[name]) for name, module in modules.items()}


NUMERIC = sorted((name, action.option_strings[-1], action.nargs or 1)
                 for name, (parser, _) in _parsers().items() for action in parser._actions
                 if hasattr(action.type, 'bounds'))


def test_every_numeric_argument_is_bounded():
    """No command takes a bare int or float: each numeric option has a range, checked before any work."""
    bare = [(name, action.option_strings) for name, (parser, _) in _parsers().items() for action in parser._actions
            if action.type in (int, float)]
    assert not bare and len(NUMERIC) >= 35, (bare, len(NUMERIC))


@pytest.mark.parametrize('command, option, nargs', NUMERIC, ids=[f'{c} {o}' for c, o, _ in NUMERIC])
@given(text=st.one_of(st.integers(-10 ** 30, 10 ** 30).map(str), st.floats().map(repr), st.text(max_size=8),
                      st.sampled_from(['', '0', '-1', '1e999', 'nan', '-inf', '4096', '4097', '0x10'])))
@example(text='--')  # make fuzz found --seed=-- and --http-port=-- taken (argparse made every --opt=-- an empty value)
def test_numeric_arguments(command, option, nargs, text):
    """A number in range is read as that number; anything else is refused with one line naming the option (exit 2),
    exactly when the option's own kind and bounds say so."""
    parser, required = _parsers()[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    expected = in_range(action.type, text)
    if nargs != 1 and text.startswith('-') and not re.fullmatch(r'-\d+|-\d*\.\d+', text):
        expected = None  # argparse takes it for an option: the option is missing its values, also a refusal
    err = io.StringIO()
    argv = [*required, f'{option}={text}'] if nargs == 1 else [*required, option, *[text] * nargs]
    with contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            lines = err.getvalue().splitlines()
            assert e.code == 2 and len(lines) == 1 and lines[0].startswith('error: ') and option in lines[0], lines
            assert expected is None, f'{option} refused {text!r}, which is {expected} and in range: {lines}'
            return
    assert expected is not None, f'{option} took {text!r}'
    value = getattr(args, action.dest)
    assert value == (expected if nargs == 1 else [expected] * nargs), (option, text, value)


def in_range(parse, text: str):
    """What a bounded option should make of ``text``: the number, or None where it must refuse it."""
    low, high, above = parse.bounds
    try:
        value = {'int': int, 'float': float}[parse.__name__](text)
    except (ValueError, OverflowError):
        return None
    ok = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high) and \
        (above is None or value > above)
    return value if ok else None


@given(text=st.one_of(st.text(max_size=12), st.lists(st.integers(-10 ** 20, 10 ** 20)).map(lambda v: ','.join(map(str, v)))))
@example(text='')
@example(text=',,,')
def test_list_arguments(text):
    """--batch-sizes, --backends, --precisions: an empty or junk list is a usage error; a read one is in range."""
    from alexnet_zoo.cli import MAX_BATCH, UsageError
    from benchmarks.backends.registry import BACKENDS, PRECISIONS, parse_batch_sizes, parse_list
    from export.onnx import parse_precisions
    for parse, check in ((parse_batch_sizes, lambda v: v and all(1 <= b <= MAX_BATCH for b in v)),
                         (lambda t: parse_list(t, BACKENDS, 'backend'), lambda v: v and set(v) <= set(BACKENDS)),
                         (lambda t: parse_list(t, PRECISIONS, 'precision'), lambda v: v and set(v) <= set(PRECISIONS)),
                         (parse_precisions, bool)):
        try:
            value = parse(text)
        except UsageError as e:
            assert str(e) and '\n' not in str(e)
            continue
        assert check(value), (text, value)


@pytest.mark.slow  # a real process (imports torch): the quick loop has the in-process tests
def test_payload_is_never_run_through_the_command_line(tmp_path):
    """The pickle attack end to end: the command refuses the file in one line and the payload never runs."""
    import subprocess
    import sys
    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'evil.pth'
    path.write_bytes(pickle.dumps({'features.0.weight': Payload(marker)}))
    run = subprocess.run([sys.executable, '-m', 'export.onnx', '--checkpoint', str(path), '--num-classes', '2',
                          '--output-dir', str(tmp_path / 'out')], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stderr.count('\n') == 1 and 'evil.pth' in run.stderr, run.stderr
    assert not marker.exists() and not (tmp_path / 'out').exists()
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ['evil.pth'])


def test_model_args_cannot_override_the_checked_class_count(tmp_path):
    """timm applies config.json's model_args over num_classes: the model is checked as timm will build it."""
    import timm
    from alexnet_zoo.checkpoint import CheckpointError, save_checkpoint_dir
    save_checkpoint_dir(timm.create_model('alexnet_bn', num_classes=2), tmp_path / 'ck')
    config = json.loads((tmp_path / 'ck' / 'config.json').read_text())
    for model_args, message in (({'num_classes': 300_000}, 'builds has 300000 classes'),
                                ({'num_classes': 5}, 'has 2 classes, the model has 5'),
                                ({'no_such_argument': 1}, 'unexpected keyword argument')):
        (tmp_path / 'ck' / 'config.json').write_text(json.dumps({**config, 'model_args': model_args}))
        with pytest.raises(CheckpointError, match=message):
            load_model(checkpoint=tmp_path / 'ck')
