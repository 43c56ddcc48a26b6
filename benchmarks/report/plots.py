"""The report's PNG plots (matplotlib, rendered in memory): latency per backend and speed-up, each with its 95 %
interval, latency against batch size, parity."""
import io
import math
from typing import Dict, List, Tuple

from export.parity import sqnr_text

from benchmarks.report.summary import label, row_passed


PLOTS = ('latency.png', 'speedup.png', 'latency_vs_batch.png', 'parity.png', 'roofline.png')
DPI = 90  # the PNGs' resolution; the roofline is drawn at it too, so that its labels are placed where they land


def first_per_label(rows: List[dict]) -> Dict[str, dict]:
    """Each backend, precision and device's first row (its parity figures are the same at every batch size)."""
    seen: Dict[str, dict] = {}
    for r in rows:
        seen.setdefault(label(r), r)
    return seen


def pyplot():
    """matplotlib's pyplot on the Agg backend: the plots are files, never windows (and no display is needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def png(fig, description: str) -> bytes:
    """``fig`` as PNG bytes (saved with the rest of its set, atomically, by the caller), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=DPI, metadata={'Description': description})
    pyplot().close(fig)
    return buffer.getvalue()


def render_plots(report: dict) -> Dict[str, bytes]:
    plt = pyplot()
    description = f'alexnet-zoo benchmark report, run {report.get("run_id")}'
    return {name: png(draw(plt, report), description) for name, draw in
            zip(PLOTS, (_plot_latency, _plot_speedup, _plot_latency_vs_batch, _plot_parity, _plot_roofline))}


def _title(report: dict) -> str:
    return f'{report["model"]["name"]} on {report["environment"]["cpu"]["model"]}'


def _bars(plt, report: dict, value: str, interval: str, xlabel: str, note: str):
    """One panel per batch size: a bar per row at its ``value``, whiskers over its 95 % ``interval``."""
    rows = [r for r in report['results'] if r.get(value) is not None]
    sizes = sorted({r['batch_size'] for r in rows}) or [1]
    height = max(2.5, 0.35 * max((sum(r['batch_size'] == b for r in rows) for b in sizes), default=1) + 1.5)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), height), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        chosen = [r for r in rows if r['batch_size'] == size]
        values = [r[value] for r in chosen]
        low = [max(0.0, r[value] - r[interval][0]) for r in chosen]
        high = [max(0.0, r[interval][1] - r[value]) for r in chosen]
        colors = ['tab:green' if row_passed(r) else 'tab:red' if row_passed(r) is False else 'tab:blue'
                  for r in chosen]
        ax.barh(range(len(chosen)), values, xerr=[low, high], color=colors, capsize=3)
        ax.set_yticks(range(len(chosen)), [label(r) for r in chosen])
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f' {v:.1f}', va='bottom', fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(f'batch {size}')
    fig.suptitle(f'{_title(report)}\n{note}green: passes its parity gates, red: fails them, blue: not judged',
                 fontsize=9)
    fig.tight_layout()
    return fig


def _plot_latency(plt, report: dict):
    """Median latency per backend and precision, one panel per batch size; whiskers: its 95 % interval."""
    return _bars(plt, report, 'median_ms', 'median_ci95_ms', 'latency, ms: median over rounds (whiskers: 95 % '
                 'interval)', '')


def _plot_speedup(plt, report: dict):
    """Speed-up over PyTorch eager fp32 per backend and precision; whiskers: its 95 % interval."""
    return _bars(plt, report, 'speedup_vs_torch_fp32', 'speedup_ci95', 'speed-up over PyTorch eager fp32 '
                 '(whiskers: 95 % interval)', 'ratios paired within each round; ')


def _plot_latency_vs_batch(plt, report: dict):
    """Median latency per image against batch size, one line per backend and precision."""
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: Dict[str, List] = {}
    for r in sorted(report['results'], key=lambda r: r['batch_size']):
        lines.setdefault(label(r), []).append((r['batch_size'], r['median_ms'] / r['batch_size']))
    for name, points in lines.items():
        ax.plot(*zip(*points), marker='o', label=name)
    ax.set_xscale('log', base=2)
    sizes = sorted({r['batch_size'] for r in report['results']})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f'{value:g}'))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _minor_label(ax, value)))
    ax.set_xlabel('batch size')
    ax.set_ylabel('median latency per image, ms')
    ax.grid(True, which='both', alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    ax.set_title(_title(report), fontsize=10)
    fig.tight_layout()
    return fig


def _minor_label(ax, value: float) -> str:
    """A minor tick's label on the log latency axis, only where labels have room: every one within half a decade,
    2 and 5 times a power of ten within three decades, none beyond (9 and 10 would lie on top of each other)."""
    low, high = ax.get_ylim()
    decades = abs(math.log10(high / low))
    mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return f'{value:g}' if decades <= 0.5 or (decades <= 3 and mantissa in (2, 5)) else ''


def _plot_parity(plt, report: dict):
    """SQNR against PyTorch fp32 and against fp64 per backend and precision; identical logits drawn full length
    as 'exact', non-finite ones as an empty bar marked 'non-finite'."""
    seen = first_per_label(report['results'])
    names = list(seen)
    values = [(r['parity'], r['parity_fp64']) for r in seen.values()]
    finite_values = [p['sqnr_db'] for pair in values for p in pair
                     if p.get('sqnr_db') is not None and not p.get('nonfinite')]
    cap = (max(finite_values) if finite_values else 100.0) + 10

    def length(figures):
        return 0.0 if figures.get('nonfinite') else cap if figures.get('sqnr_db') is None else figures['sqnr_db']

    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.45 * len(names) + 1.5)))
    y = range(len(names))
    for offset, index, name, color in ((-0.2, 0, 'vs PyTorch fp32', 'tab:blue'), (0.2, 1, 'vs fp64', 'tab:orange')):
        ax.barh([i + offset for i in y], [length(v[index]) for v in values], height=0.4, label=name, color=color)
    for i, (p32, _) in enumerate(values):
        decisive = p32.get('decisive_top1_agreement', p32.get('top1_agreement'))
        text = sqnr_text(p32) if p32.get('nonfinite') or p32.get('identical') or p32.get('sqnr_db') is None \
            else f'top-1 {decisive:.1%}' if decisive is not None else ''
        ax.text(length(p32), i - 0.2, f' {text}', va='center', fontsize=8)
    for gate, style in ((25, ':'), (40, '--')):
        ax.axvline(gate, color='grey', linestyle=style, linewidth=1)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel('SQNR of the logits, dB (gates: int8 25 dB dotted, fp16/bf16 40 dB dashed)')
    ax.legend(fontsize=8, loc='lower right')
    ax.set_title(f'parity on {report["images"].get("views", report["images"]["count"])} views', fontsize=10)
    fig.tight_layout()
    return fig


def _plot_roofline(plt, report: dict):
    """Log-log: arithmetic intensity (operations per byte moved: weights and activations) against the rate
    achieved, one point per CPU row; the three ceilings drawn: DRAM and last-level-cache bandwidth as slopes, each
    precision's attainable rate as a solid level and its documented rate as a dotted one. Rows drawn at one point
    share a label; no label is drawn over another (``_place_labels``)."""
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=DPI)
    cpu = (report.get('ceilings') or {}).get('cpu')
    rows = [r for r in report['results'] if r.get('roofline') and r['device'] == 'cpu']
    if cpu and rows:
        _draw_ceilings(ax, cpu, rows)
        markers = {size: 'os^Dv<>ph*'[i % 9] for i, size in enumerate(sorted({r['batch_size'] for r in rows}))}
        for r in rows:
            ax.scatter(r['roofline']['intensity'], r['roofline']['ops_per_s'], marker=markers[r['batch_size']],
                       zorder=3)
        levels = [rate for f in cpu['compute'].values() for rate in (f['attainable'], f['documented']) if rate]
        ax.set_ylim(min(r['roofline']['ops_per_s'] for r in rows) / 2,
                    2 * max(levels + [r['roofline']['ops_per_s'] for r in rows]))
        ax.legend(fontsize=6, loc='upper left')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('arithmetic intensity: operations per byte moved (weights once, activations per image)')
    ax.set_ylabel('operations per second achieved')
    ax.grid(True, which='both', alpha=0.3)
    ax.set_title(f'roofline: {_title(report)}', fontsize=9)
    fig.tight_layout()
    if cpu and rows:  # once the axes have their final size: labels are placed where they are drawn
        fig.canvas.draw()
        _place_labels(ax, _coinciding(ax, rows))
    return fig


def _draw_ceilings(ax, cpu: dict, rows: List[dict]) -> None:
    """The memory ceilings as slopes over the rows' intensities, each precision's compute ceilings as levels."""
    import numpy as np
    intensities = [r['roofline']['intensity'] for r in rows]
    x = np.geomspace(min(intensities) / 3, max(intensities) * 3)
    slopes = [('DRAM', cpu['memory']['dram']['bytes_per_s'])] if cpu['memory'].get('dram') else []
    sets = {f['working_set']: f['bytes_per_s'] for f in cpu['memory']['llc'].values()}
    slopes += [(f'LLC at {size / 1e6:.0f} MB', bandwidth) for size, bandwidth in sets.items()]
    for (name, bandwidth), style in zip(slopes, ('-', '--', ':', '-.', '-')):
        ax.plot(x, bandwidth * x, color='grey', linestyle=style, linewidth=1,
                label=f'{name} read {bandwidth / 1e9:.0f} GB/s')
    for (precision, f), color in zip(cpu['compute'].items(), ('tab:blue', 'tab:orange', 'tab:green')):
        for rate, style, kind in ((f['attainable'], '-', 'attainable'), (f['documented'], ':', 'documented')):
            if rate:
                ax.axhline(rate, color=color, linestyle=style, linewidth=1,
                           label=f'{precision} {kind} {rate / 1e12:.2f} TOP/s')


def _coinciding(ax, rows: List[dict], within_pt: float = 3.0) -> List[Tuple[Tuple[float, float], str]]:
    """The rows' points as drawn, those within ``within_pt`` points of one already seen joined to it: each point
    with its one label, e.g. 'onnxruntime, openvino int8 b1' (backends that share precision and batch size named
    once, other rows at the point after a '; ')."""
    points: List[Tuple[Tuple[float, float], Dict[str, List[str]]]] = []
    for r in rows:
        xy = (r['roofline']['intensity'], r['roofline']['ops_per_s'])
        at = ax.transData.transform(xy)
        names = next((names for seen, names in points
                      if math.dist(ax.transData.transform(seen), at) * 72 / ax.figure.dpi < within_pt), None)
        if names is None:
            names = {}
            points.append((xy, names))
        names.setdefault(f'{r["precision"]} b{r["batch_size"]}', []).append(r['backend'])  # CPU rows only
    return [(xy, '; '.join(f'{", ".join(backends)} {rest}' for rest, backends in names.items()))
            for xy, names in points]


def _place_labels(ax, points: List[Tuple[Tuple[float, float], str]], step_pt: float = 4.0) -> None:
    """Each label beside its point: right of it, else left, at the first height (level, then ``step_pt`` points
    up, down, further up...) where its text's box, measured with the figure's renderer and a point wider all
    round, meets no label placed before it, no point and not the legend, and stays inside the axes; failing that,
    the first place that meets no other label. A label moved off its point's level gets a leader line to it."""
    from matplotlib.transforms import Bbox
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    pad = ax.figure.dpi / 72  # a point, in pixels
    marker = 6 * pad  # scatter's default marker: 6 points across
    dots = [ax.transData.transform(xy) - marker / 2 for xy, _ in points]
    avoid = [Bbox.from_bounds(x, y, marker, marker) for x, y in dots]
    avoid += [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    heights = [0.0] + [sign * step_pt * k for k in range(1, 16) for sign in (1, -1)]
    tries = [(side * 5.0, dy, 'left' if side > 0 else 'right') for dy in heights for side in (1, -1)]  # off its dot
    labels: List = []
    for xy, text in points:
        note = ax.annotate(text, xy, xytext=(0, 0), textcoords='offset points', va='center', fontsize=7)
        measured = []
        for dx, dy, align in tries:
            note.xyann = (dx, dy)
            note.set_ha(align)
            box = note.get_window_extent(renderer).padded(pad)
            measured.append(((dx, dy, align), box))
            if inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1 \
                    and not any(box.overlaps(other) for other in labels + avoid):
                break
        else:  # nowhere free inside the axes: the first place that meets no other label, else beside the point
            measured.append(next((m for m in measured if not any(m[1].overlaps(other) for other in labels)),
                                 measured[0]))
        (dx, dy, align), box = measured[-1]
        note.remove()
        ax.annotate(text, xy, xytext=(dx, dy), textcoords='offset points', ha=align, va='center', fontsize=7,
                    arrowprops=dict(arrowstyle='-', color='grey', linewidth=0.5) if dy else None)
        labels.append(box)
