"""NNCF's post-training int8 of the same fp32 graph, on the same calibration crops, beside ours: for comparison.

``export.onnx --explain`` quantizes the fp32 graph again with NNCF (``nncf.quantize``, ONNX backend) in each of
NNCF_SETTINGS and judges every graph, ours and NNCF's, with the same judge on the same parity views, timed the same
way (ONNX Runtime on the CPU, batch 1). NNCF's graphs are never written or shipped: their activations are
asymmetric or unsigned (uint8), which TensorRT's parser refuses, and they are made for OpenVINO. NNCF is imported
on first use only (it imports OpenVINO and takes seconds); a failure of NNCF's becomes its row's ``error``.
"""
import contextlib
import copy
import importlib.metadata
import logging
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import onnx

from alexnet_zoo.cli import first_line

from export.contract import INPUT_NAME
from export.int8.remedy import Int8Result, Judge
from export.parity import decisive_views, sqnr_text, verdict
from export.int8.quantizer import ATTENTION_OPS, quiet
from export.views import ort_ms_b1

# Nothing NNCF does may reach the network. NNCF and the OpenVINO it imports send anonymous usage telemetry (Google
# Analytics) by default. NNCF_CI is NNCF's own switch (the one its CI sets: nncf.telemetry becomes a stub that
# sends nothing); OpenVINO's import event and NNCF's telemetry object are built by openvino_telemetry with
# disable_in_ci=True, which CI=true turns off (see _import_nncf: set for the import only, since torch reads CI too).
os.environ.setdefault('NNCF_CI', '1')

# The settings compared, in NNCF's words: its defaults, and the preset and full bias correction that keep the
# accuracy of efficient networks (NNCF's own reference results for MobileNet-V3 use them). A graph with attention
# adds model_type TRANSFORMER (``nncf_settings``).
NNCF_SETTINGS: Dict[str, dict] = {
    'defaults': {'preset': 'PERFORMANCE', 'fast_bias_correction': True},
    'MIXED, full bias correction': {'preset': 'MIXED', 'fast_bias_correction': False},
}


def nncf_version() -> Optional[str]:
    """The installed NNCF's version (without importing it), or None."""
    try:
        return importlib.metadata.version('nncf')
    except importlib.metadata.PackageNotFoundError:
        return None


def nncf_settings(fp32: onnx.ModelProto, setting: dict, crops: int) -> dict:
    """``setting`` as NNCF is called for ``fp32``: with model_type TRANSFORMER when the graph has attention
    (Softmax and LayerNormalization), and the number of calibration crops (``subset_size``)."""
    found = {node.op_type for node in fp32.graph.node}
    transformer = {'model_type': 'TRANSFORMER'} if ATTENTION_OPS <= found else {}
    return {'tool': f'nncf {nncf_version()} quantize (ONNX backend)', **setting, **transformer, 'subset_size': crops}


def nncf_int8(fp32: onnx.ModelProto, crops: np.ndarray, settings: dict) -> onnx.ModelProto:
    """NNCF's post-training int8 of ``fp32`` (left unchanged) in ``settings`` (``nncf_settings``), calibrated on
    ``crops`` (NCHW float32), one crop per feed as NNCF's statistics expect."""
    nncf = _import_nncf()
    dataset = nncf.Dataset(np.ascontiguousarray(crops, dtype=np.float32), lambda crop: {INPUT_NAME: crop[None]})
    options = {'preset': nncf.QuantizationPreset[settings['preset']],
               'fast_bias_correction': settings['fast_bias_correction']}
    if 'model_type' in settings:
        options['model_type'] = nncf.ModelType[settings['model_type']]
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return nncf.quantize(copy.deepcopy(fp32), dataset, subset_size=len(crops), **options)


def _import_nncf():
    """``nncf``, quiet (no log lines or progress bars below errors) and, on its first import, with OpenVINO's
    telemetry off: CI=true only while it is imported, where openvino_telemetry decides (torch reads CI too)."""
    with _environ('CI', 'true'), quiet():
        import nncf
    nncf.set_log_level(logging.ERROR)
    return nncf


@contextlib.contextmanager
def _environ(name: str, value: str):
    """``name`` set to ``value`` inside the block unless the user set it; as it was afterwards."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def compare_with_nncf(fp32: onnx.ModelProto, crops: np.ndarray, ours: Int8Result, judge_graph: Judge,
                      x: np.ndarray, ours_settings: dict, ours_ms_b1: float,
                      settings: Dict[str, dict] = NNCF_SETTINGS) -> List[dict]:
    """Rows for our int8 graph (its figures and ``ours_ms_b1``, as its export measured them) and NNCF's in each of
    ``settings``, judged by ``judge_graph`` on the same views and timed by ``ort_ms_b1`` on ``x``: what, settings,
    sqnr_db, decisive_top1_agreement, decisive_views, views, accuracy_top1 (None without labels), passed, ms_b1; a
    setting NNCF fails on gets ``error`` (one line)."""
    rows = [_row('ours', ours_settings, ours.figures, ours_ms_b1)]
    for name, setting in settings.items():
        what = f'NNCF {nncf_version() or "(not installed)"} {name}'
        called = nncf_settings(fp32, setting, len(crops))
        try:
            graph = nncf_int8(fp32, crops, called)
            rows.append(_row(what, called, judge_graph(graph), ort_ms_b1(graph.SerializeToString(), x)))
        except Exception as e:  # noqa: BLE001 (a comparison must not break the export it explains)
            rows.append({'what': what, 'settings': called, 'error': f'{type(e).__name__}: {first_line(e, 200)}'})
    return rows


def _row(what: str, settings: dict, figures: dict, ms_b1: float) -> dict:
    return {'what': what, 'settings': settings, 'sqnr_db': figures['sqnr_db'],
            'nonfinite': figures.get('nonfinite', 0), 'identical': figures.get('identical', False),
            'decisive_top1_agreement': figures['decisive_top1_agreement'], 'decisive_views': decisive_views(figures),
            'views': figures['views'], 'accuracy_top1': figures.get('accuracy_top1'),
            'reference_accuracy_top1': figures.get('reference_accuracy_top1'), 'passed': figures['passed'],
            'ms_b1': ms_b1}


def comparison_title(rows: List[dict]) -> str:
    crops = next((r['settings']['subset_size'] for r in rows if 'subset_size' in r['settings']), '?')
    views = next((r['views'] for r in rows if 'views' in r), '?')
    return f'int8 beside NNCF (same {crops} crops, same {views} views, ONNX Runtime CPU)'


def format_comparison(rows: List[dict]) -> str:
    """The title and the rows as an aligned table: graph, SQNR dB, top-1 agreement (decisive views), labelled
    top-1 (against fp32's on the same views), ms b1, gate; a failed setting's row gives its error instead."""
    header = ('graph', 'SQNR dB', 'top-1 agreement', 'labelled top-1', 'ms b1', 'gate')
    cells = [_cells(r) for r in rows if 'error' not in r]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    widths[0] = max([widths[0], *(len(r['what']) for r in rows)])
    lines = [comparison_title(rows), '  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for r in rows:
        row = _cells(r) if 'error' not in r else (r['what'], f'error: {r["error"]}')
        lines.append('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return '\n'.join(lines)


def _cells(r: dict) -> tuple:
    agreement = r['decisive_top1_agreement']
    agreement = '–' if agreement is None else f'{100 * agreement:.1f} % of {r["decisive_views"]}'
    labelled = '–' if r['accuracy_top1'] is None else (
        f'{100 * r["accuracy_top1"]:.1f} % (fp32 {100 * r["reference_accuracy_top1"]:.1f} %)')
    return r['what'], sqnr_text(r), agreement, labelled, f'{r["ms_b1"]:.2f}', verdict(r['passed'])
