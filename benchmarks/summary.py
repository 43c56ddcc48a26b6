"""The report's verdicts: each row's speed-up over the baseline, the fastest row that passes its gates, and the
exit code a run ends with."""
from typing import Optional

from .registry import BASELINE


def add_speedups(report: dict) -> None:
    """Each row's speed-up over PyTorch eager fp32 (CPU) at the same batch size, and per batch size the fastest
    row that passes its gates (every row when the gates are not judged)."""
    rows = report['results']
    base = {r['batch_size']: r['latency_ms']['p50'] for r in rows
            if (r['backend'], r['precision'], r['device']) == BASELINE}
    for r in rows:
        b = base.get(r['batch_size'])
        r['speedup_vs_torch_fp32'] = b / r['latency_ms']['p50'] if b else None
    fastest = []
    for batch_size in sorted({r['batch_size'] for r in rows}):
        candidates = [r for r in rows if r['batch_size'] == batch_size and row_passed(r) is not False]
        if candidates:
            best = min(candidates, key=lambda r: r['latency_ms']['p50'])
            fastest.append({'batch_size': batch_size, 'backend': best['backend'], 'precision': best['precision'],
                            'device': best['device'], 'p50_ms': best['latency_ms']['p50'],
                            'baseline_p50_ms': base.get(batch_size),
                            'speedup_vs_torch_fp32': best['speedup_vs_torch_fp32']})
    judged = [row_passed(r) for r in rows if row_passed(r) is not None]
    report['summary'] = {
        'baseline': ' '.join(BASELINE),
        'fastest_passing': fastest,
        'gates_judged': bool(judged),
        'rows_failed': sum(1 for p in judged if p is False),
        'passed': all(judged) if judged else None,
    }


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
