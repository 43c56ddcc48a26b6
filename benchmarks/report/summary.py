"""The report's verdicts: each row's speed-up over the baseline with its interval, which rows can be ranked, the
fastest row that passes its gates, how noisy the machine was, each row against the machine's ceilings, and the exit
code a run ends with. Each step takes a ``Report`` and returns a new one (``schema.updated``); none writes into
its argument."""
import dataclasses
from typing import Dict, List, Optional

from benchmarks.roofline.ceilings import place, what_bounds
from benchmarks.backends.registry import BASELINE
from benchmarks.measure.uncertainty import (NOISY_ROUND, median_ci, noise_warnings, paired_ratios, robust_cv,
                                            round_noise, separable, widen)
from benchmarks.report.schema import Fastest, Noise, Report, Row, Summary, gates_passed, plain, row_label, typed, updated


def is_baseline(row: Row) -> bool:
    return (row.backend, row.precision, row.device) == BASELINE


def passing_by_latency(rows: List[Row], batch_size: int) -> List[Row]:
    """The rows at ``batch_size`` that pass their gates (or are not judged), fastest first."""
    return sorted((r for r in rows if r.batch_size == batch_size and r.passed() is not False),
                  key=lambda r: r.median_ms)


def label(row: dict) -> str:
    """A row of report.json's plain values (``schema.plain``), named as ``Row.label`` names it."""
    return row_label(row['backend'], row['precision'], row.get('device', 'cpu'))


def row_passed(row: dict) -> Optional[bool]:
    """``Row.passed`` of a row of report.json's plain values: True/False when the gates were judged, None when
    not (random weights)."""
    return gates_passed(row['parity']['passed'], row['parity_fp64']['passed'], row.get('export_failure'))


def add_speedups(report: Report) -> Report:
    """Each row's speed-up over PyTorch eager fp32 (CPU) at the same batch size: the median over rounds of the
    ratio to the baseline timed in the same round, with its interval; per batch size the neighbours (by median
    latency) that cannot be ranked, and the fastest row that passes its gates (every row when the gates are
    not judged)."""
    run_to_run = ((report.settings or {}).get('timing') or {}).get('run_to_run', 0.0)
    base = {r.batch_size: r for r in report.results if is_baseline(r)}
    rows = [_with_speedup(r, base.get(r.batch_size), run_to_run) for r in report.results]
    batch_sizes = sorted({r.batch_size for r in rows})
    apart: Dict[int, List[str]] = {i: [] for i in range(len(rows))}
    ties = [tie for batch_size in batch_sizes for tie in _ties(rows, batch_size, run_to_run, apart)]
    rows = [updated(r, not_separable_from=apart[i]) for i, r in enumerate(rows)]
    base = {r.batch_size: r for r in rows if is_baseline(r)}
    fastest = [f for f in (_fastest(rows, b, base.get(b), run_to_run) for b in batch_sizes) if f]
    judged = [p for p in (r.passed() for r in rows) if p is not None]
    summary = typed(Summary, {
        'baseline': ' '.join(BASELINE),
        'fastest_passing': fastest,
        'ties': ties,
        'gates_judged': bool(judged),
        'rows_failed': sum(1 for p in judged if p is False),
        'passed': all(judged) if judged else None,
    }, 'summary')
    return dataclasses.replace(report, results=rows, summary=summary)


def _with_speedup(row: Row, base: Optional[Row], run_to_run: float) -> Row:
    """``row`` with its speed-up over ``base`` (the baseline's own is 1 exactly: no run-to-run term)."""
    speedup = _ratio(base, row, 0.0 if row is base else run_to_run) if base else None
    return updated(row, speedup_vs_torch_fp32=speedup['median'] if speedup else None,
                   speedup_ci95=speedup['ci95'] if speedup else None,
                   speedup_ci95_rounds=speedup['ci95_rounds'] if speedup else None,
                   speedup_cv=speedup['cv'] if speedup else None)


def _ties(rows: List[Row], batch_size: int, run_to_run: float, apart: Dict[int, List[str]]) -> List[dict]:
    """The neighbours by median latency at ``batch_size`` that cannot be ranked; each one's label goes into the
    other's list in ``apart`` (by row index)."""
    ranked = sorted((i for i, r in enumerate(rows) if r.batch_size == batch_size), key=lambda i: rows[i].median_ms)
    ties = []
    for faster, slower in zip(ranked, ranked[1:]):
        ratio = _ratio(rows[slower], rows[faster], run_to_run)['ci95']
        if not separable(ratio):
            apart[faster].append(rows[slower].label)
            apart[slower].append(rows[faster].label)
            ties.append({'batch_size': batch_size, 'rows': [rows[faster].label, rows[slower].label],
                         'ratio_ci95': ratio})
    return ties


def _fastest(rows: List[Row], batch_size: int, base: Optional[Row], run_to_run: float) -> Optional[dict]:
    """The fastest row at ``batch_size`` that passes its gates, and whether it is told apart from the runner-up."""
    passing = passing_by_latency(rows, batch_size)
    if not passing:
        return None
    best = passing[0]
    runner_up = passing[1] if len(passing) > 1 else None
    runner_up_ratio = _ratio(runner_up, best, run_to_run)['ci95'] if runner_up else None
    return {'batch_size': batch_size, 'backend': best.backend, 'precision': best.precision, 'device': best.device,
            'median_ms': best.median_ms, 'median_ci95_ms': best.median_ci95_ms,
            'baseline_median_ms': base.median_ms if base else None,
            'speedup_vs_torch_fp32': best.speedup_vs_torch_fp32, 'speedup_ci95': best.speedup_ci95,
            'runner_up': runner_up.label if runner_up else None,
            'runner_up_ratio_ci95': runner_up_ratio,
            'ranked': separable(runner_up_ratio) if runner_up else True}


def _ratio(slower: Row, faster: Row, run_to_run: float) -> dict:
    """The per-round latency ratio slower / faster, paired by round, with its interval: above 1 throughout when
    ``faster`` is really faster."""
    return widen(median_ci(paired_ratios(slower.round_medians_ms, faster.round_medians_ms)), run_to_run)


def add_noise(report: Report) -> Report:
    """How noisy the machine was while timing: steal time, the baseline's spread across rounds, rounds in which
    every row ran slower; and the warnings that say when not to trust the figures."""
    rows, timing = report.results, report.timing or {}
    noise = round_noise([r.round_medians_ms for r in rows]) if rows else []
    baseline_cv = {r.batch_size: robust_cv(r.round_medians_ms) for r in rows if is_baseline(r)}
    warnings = noise_warnings(timing.get('steal'), baseline_cv, noise)
    return dataclasses.replace(report, noise=typed(Noise, {
        'steal': timing.get('steal'), 'baseline_cv': {str(b): cv for b, cv in baseline_cv.items()},
        'round_noise': noise, 'noisy_rounds': [i for i, v in enumerate(noise) if v > NOISY_ROUND],
        'warnings': warnings, 'trusted': not warnings}, 'noise'))


def exit_code(report: Report) -> int:
    """0 when every judged gate passed (or none was judged), 1 when one failed."""
    return 1 if report.summary.rows_failed else 0


def add_roofline(report: Report) -> Report:
    """Each row against its device's ceilings (``ceilings.place``), and for each fastest passing row what bounds it
    now: the ceiling, how far it is from it, and the layer that takes most of its time. The ceilings' arithmetic
    reads rows as report.json holds them (``schema.plain``)."""
    ceilings, model = report.ceilings or {}, report.model or {}
    flops = model.get('flops_per_image')
    activations = model.get('activation_bytes') or 0  # weights only in reports from before it was counted
    rows = [updated(r, roofline=place(plain(r), ceilings, flops, activations)
                    if flops and 'error' not in ceilings else None) for r in report.results]
    profiles = {p.get('batch_size'): p for p in report.layer_profiles or [] if 'error' not in p}
    fastest = [updated(f, bound=what_bounds(plain(_row_of(rows, f)), profiles.get(f.batch_size)))
               for f in report.summary.fastest_passing]
    return dataclasses.replace(report, results=rows,
                               summary=dataclasses.replace(report.summary, fastest_passing=fastest))


def _row_of(rows: List[Row], fastest: Fastest) -> Row:
    return next(r for r in rows if r.batch_size == fastest.batch_size and r.label == fastest.label)
