"""The report's plots are legible: in roofline.png, rows drawn at the same point share one label and no two labels
lie on top of each other (docs/benchmarks.md, "Against the machine's ceilings"); latency_vs_batch.png labels only
the minor ticks its log axis has room for."""
import re
from itertools import combinations

import pytest
from matplotlib.text import Text

from benchmarks.report.plots import DPI, pyplot, _plot_latency_vs_batch, _plot_roofline
from benchmarks.roofline.ceilings import place

FLOPS = 1.43e9  # AlexNet's operations per image
CPU = {'compute': {'fp32': {'attainable': 200e9, 'documented': 266e9},
                   'int8': {'attainable': 2e12, 'documented': 8.6e12}},
       'memory': {'llc_bytes': 100_000_000, 'dram': {'bytes_per_s': 20e9},
                  'llc': {'62500000': {'bytes_per_s': 50e9, 'working_set': 62_500_000}}}}
WEIGHTS = {'fp32': 244_000_000, 'int8': 61_000_000}
# (backend, precision, batch size, median ms): the int8 graph's three batch-1 rows at one point, the fp32 rows
# close together at each batch size, and an int8 row per batch size beside them.
TIMED = [(backend, 'int8', 1, 2.0) for backend in ('torch', 'onnxruntime', 'openvino')] + [
    (backend, 'fp32', batch, ms * batch) for batch in (1, 8, 32, 64)
    for backend, ms in (('torch', 21.0), ('torch-compile', 20.0), ('onnxruntime', 19.5), ('openvino', 18.0))] + [
    ('openvino', 'int8', batch, 1.6 * batch) for batch in (8, 32, 64)]


def report():
    rows = []
    for backend, precision, batch, ms in TIMED:
        row = {'backend': backend, 'precision': precision, 'device': 'cpu', 'batch_size': batch, 'median_ms': ms,
               'weight_bytes': WEIGHTS[precision]}
        row['roofline'] = place(row, {'cpu': CPU}, FLOPS)
        rows.append(row)
    return {'results': rows, 'model': {'name': 'alexnet'}, 'environment': {'cpu': {'model': 'Xeon 8480+'}},
            'ceilings': {'cpu': CPU}}


def overlapping(fig, texts):
    """The pairs of ``texts`` whose boxes, as drawn, intersect (a label's text alone: not its leader line)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]


@pytest.fixture(scope='module')
def roofline():
    plt = pyplot()
    fig = _plot_roofline(plt, report())
    yield fig
    plt.close(fig)


def named(text):
    """The (backend, 'precision bN') pairs a label names: 'a, b int8 b1', or several such parts joined by '; '."""
    parts = [re.fullmatch(r'((?:\S+, )*\S+) (.+)', part).groups() for part in text.strip().split('; ')]
    return [(backend, rest) for backends, rest in parts for backend in backends.split(', ')]


def test_rows_at_one_point_share_one_label(roofline):
    labels = [t.get_text().strip() for t in roofline.axes[0].texts]
    assert 'torch, onnxruntime, openvino int8 b1' in labels
    pairs = [pair for text in labels for pair in named(text)]
    assert sorted(pairs) == sorted((backend, f'{precision} b{batch}') for backend, precision, batch, _ in TIMED)


def test_no_two_roofline_labels_overlap(roofline):
    assert not overlapping(roofline, roofline.axes[0].texts)
    assert roofline.dpi == DPI  # placed at the resolution roofline.png is written at (text does not scale evenly)


@pytest.mark.parametrize('fastest, slowest', [(18.0, 21.0), (7.0, 21.0), (1.5, 25.0), (0.05, 2000.0)])
def test_no_two_tick_labels_of_latency_against_batch_size_overlap(fastest, slowest):
    """Per-image latencies from ``fastest`` to ``slowest`` ms: the tick labels drawn (those inside the axes) are
    apart (every minor tick labelled put 9 on top of 10 once the axis spans more than a decade)."""
    plt = pyplot()
    timed = (('fp32', 1, slowest), ('int8', 1, fastest), ('int8', 8, fastest))
    rows = [{'backend': 'openvino', 'precision': precision, 'device': 'cpu', 'batch_size': batch,
             'median_ms': ms * batch} for precision, batch, ms in timed]
    fig = _plot_latency_vs_batch(plt, {'results': rows, 'model': {'name': 'alexnet'},
                                       'environment': {'cpu': {'model': 'Xeon 8480+'}}})
    fig.canvas.draw()
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    drawn = [t for t in ax.get_yticklabels(which='both')
             if t.get_text() and inside.y0 <= t.get_window_extent(renderer).y0 <= inside.y1]
    assert len(drawn) >= 2
    assert not overlapping(fig, drawn)
    plt.close(fig)
