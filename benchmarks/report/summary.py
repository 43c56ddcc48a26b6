"""The report's verdicts: each row's speed-up over the baseline with its interval, which rows can be ranked, the
fastest row that passes its gates, how noisy the machine was, and the exit code a run ends with."""
from typing import List, Optional

from benchmarks.roofline.ceilings import place, what_bounds
from benchmarks.backends.registry import BASELINE
from benchmarks.measure.uncertainty import (NOISY_ROUND, median_ci, noise_warnings, paired_ratios, robust_cv, round_noise, separable,
                          widen)


def is_baseline(row: dict) -> bool:
    return (row['backend'], row['precision'], row.get('device', 'cpu')) == BASELINE


def passing_by_latency(rows: List[dict], batch_size: int) -> List[dict]:
    """The rows at ``batch_size`` that pass their gates (or are not judged), fastest first."""
    return sorted((r for r in rows if r['batch_size'] == batch_size and row_passed(r) is not False),
                  key=lambda r: r['median_ms'])


def label(row: dict) -> str:
    return f'{row["backend"]} {row["precision"]}' + ('' if row.get('device', 'cpu') == 'cpu' else f' ({row["device"]})')


def add_speedups(report: dict) -> None:
    """Each row's speed-up over PyTorch eager fp32 (CPU) at the same batch size: the median over rounds of the
    ratio to the baseline timed in the same round, with its interval; per batch size the neighbours (by median
    latency) that cannot be ranked, and the fastest row that passes its gates (every row when the gates are
    not judged)."""
    rows = report['results']
    run_to_run = ((report.get('settings') or {}).get('timing') or {}).get('run_to_run', 0.0)
    base = {r['batch_size']: r for r in rows if is_baseline(r)}
    for r in rows:
        b = base.get(r['batch_size'])
        speedup = (_ratio(b, r, 0.0 if r is b else run_to_run)) if b else None  # the baseline's own is 1 exactly
        r['speedup_vs_torch_fp32'] = speedup['median'] if speedup else None
        r['speedup_ci95'] = speedup['ci95'] if speedup else None
        r['speedup_ci95_rounds'] = speedup['ci95_rounds'] if speedup else None
        r['speedup_cv'] = speedup['cv'] if speedup else None
        r['not_separable_from'] = []
    ties, fastest = [], []
    for batch_size in sorted({r['batch_size'] for r in rows}):
        ranked = sorted((r for r in rows if r['batch_size'] == batch_size), key=lambda r: r['median_ms'])
        for faster, slower in zip(ranked, ranked[1:]):
            ratio = _ratio(slower, faster, run_to_run)['ci95']
            if not separable(ratio):
                faster['not_separable_from'].append(label(slower))
                slower['not_separable_from'].append(label(faster))
                ties.append({'batch_size': batch_size, 'rows': [label(faster), label(slower)], 'ratio_ci95': ratio})
        passing = passing_by_latency(rows, batch_size)
        if passing:
            best, b = passing[0], base.get(batch_size)
            runner_up = passing[1] if len(passing) > 1 else None
            runner_up_ratio = _ratio(runner_up, best, run_to_run)['ci95'] if runner_up else None
            fastest.append({
                'batch_size': batch_size, 'backend': best['backend'], 'precision': best['precision'],
                'device': best['device'], 'median_ms': best['median_ms'], 'median_ci95_ms': best['median_ci95_ms'],
                'baseline_median_ms': b['median_ms'] if b else None,
                'speedup_vs_torch_fp32': best['speedup_vs_torch_fp32'], 'speedup_ci95': best['speedup_ci95'],
                'runner_up': label(runner_up) if runner_up else None,
                'runner_up_ratio_ci95': runner_up_ratio,
                'ranked': separable(runner_up_ratio) if runner_up else True})
    judged = [row_passed(r) for r in rows if row_passed(r) is not None]
    report['summary'] = {
        'baseline': ' '.join(BASELINE),
        'fastest_passing': fastest,
        'ties': ties,
        'gates_judged': bool(judged),
        'rows_failed': sum(1 for p in judged if p is False),
        'passed': all(judged) if judged else None,
    }


def _ratio(slower: dict, faster: dict, run_to_run: float) -> dict:
    """The per-round latency ratio slower / faster, paired by round, with its interval: above 1 throughout when
    ``faster`` is really faster."""
    return widen(median_ci(paired_ratios(slower['round_medians_ms'], faster['round_medians_ms'])), run_to_run)


def add_noise(report: dict) -> None:
    """How noisy the machine was while timing: steal time, the baseline's spread across rounds, rounds in which
    every row ran slower; and the warnings that say when not to trust the figures."""
    rows, timing = report['results'], report.get('timing') or {}
    noise = round_noise([r['round_medians_ms'] for r in rows]) if rows else []
    baseline_cv = {r['batch_size']: robust_cv(r['round_medians_ms']) for r in rows if is_baseline(r)}
    warnings = noise_warnings(timing.get('steal'), baseline_cv, noise)
    report['noise'] = {'steal': timing.get('steal'), 'baseline_cv': {str(b): cv for b, cv in baseline_cv.items()},
                       'round_noise': noise, 'noisy_rounds': [i for i, v in enumerate(noise) if v > NOISY_ROUND],
                       'warnings': warnings, 'trusted': not warnings}


def row_passed(row: dict) -> Optional[bool]:
    """True/False when the gates were judged (both references; a graph that failed its gate at export fails), None
    when not (random weights)."""
    verdicts = [row['parity']['passed'], row['parity_fp64']['passed']]
    if any(v is None for v in verdicts):
        return None
    return all(verdicts) and not row.get('export_failure')


def exit_code(report: dict) -> int:
    """0 when every judged gate passed (or none was judged), 1 when one failed."""
    return 1 if report['summary']['rows_failed'] else 0


def add_roofline(report: dict) -> None:
    """Each row against its device's ceilings (``ceilings.place``), and for each fastest passing row what bounds it
    now: the ceiling, how far it is from it, and the layer that takes most of its time."""
    ceilings, flops = report.get('ceilings') or {}, report['model'].get('flops_per_image')
    activations = report['model'].get('activation_bytes') or 0  # weights only in reports from before it was counted
    for r in report['results']:
        r['roofline'] = place(r, ceilings, flops, activations) if flops and 'error' not in ceilings else None
    profiles = {p.get('batch_size'): p for p in report.get('layer_profiles') or [] if 'error' not in p}
    for fastest in report['summary']['fastest_passing']:
        row = next(r for r in report['results'] if r['batch_size'] == fastest['batch_size'] and
                   label(r) == label(fastest))
        fastest['bound'] = what_bounds(row, profiles.get(fastest['batch_size']))
