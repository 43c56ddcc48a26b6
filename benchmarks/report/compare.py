"""``--compare``: an earlier report's rows beside this run's, a change named only where the noise allows it."""
import dataclasses

from export.parity import sqnr_text

from benchmarks.report.schema import Report
from benchmarks.measure.uncertainty import change


def compare_reports(old: Report, new: Report, name: str) -> dict:
    """Rows of both reports side by side, matched by backend, precision, device and batch size.

    ``speedup`` = old / new latency (above 1: faster now). ``latency_change`` is 'faster' or 'slower' only where
    the two latency intervals do not overlap, else 'within noise'; ``speedup_change`` the same for the speed-ups
    over the baseline (ratios within each run, which a machine's slower minute does not move). The result is
    report.json's ``comparison``, as plain JSON values.
    """
    old_rows = {r.key: r for r in old.results}
    new_rows = {r.key: r for r in new.results}
    rows = []
    for key in list(new_rows) + [k for k in old_rows if k not in new_rows]:
        o, n = old_rows.get(key), new_rows.get(key)
        old_ms, old_ci = o.latency() if o else (None, None)
        new_ms, new_ci = n.latency() if n else (None, None)
        both = bool(o and n)
        rows.append({
            'backend': key[0], 'precision': key[1], 'device': key[2], 'batch_size': key[3],
            'old_ms': old_ms, 'new_ms': new_ms, 'old_ci95_ms': _listed(old_ci), 'new_ci95_ms': _listed(new_ci),
            'speedup': old_ms / new_ms if both and new_ms else None,
            'latency_change': change(old_ci, new_ci) if both else 'only in one report',
            'old_speedup_vs_torch_fp32': o.speedup_vs_torch_fp32 if o else None,
            'new_speedup_vs_torch_fp32': n.speedup_vs_torch_fp32 if n else None,
            'speedup_change': (change(o.speedup_ci95, n.speedup_ci95, 'lower', 'higher')
                               if o and n else 'only in one report'),
            'throughput_ratio': (n.throughput_ips / o.throughput_ips
                                 if o and n and o.throughput_ips and n.throughput_ips is not None else None),
            'old_sqnr_db': o.parity.sqnr_db if o and o.parity else None,
            'new_sqnr_db': n.parity.sqnr_db if n and n.parity else None,
            'old_sqnr': _sqnr(o),
            'new_sqnr': _sqnr(n),
        })
    cpu = old.environment.cpu.model if old.environment else None
    return {'file': name, 'old_created_at': old.created_at, 'old_cpu': cpu, 'rows': rows}


def _sqnr(row) -> str:
    return sqnr_text(dataclasses.asdict(row.parity)) if row and row.parity else '–'


def _listed(interval):
    """An interval as report.json holds it: [low, high]."""
    return None if interval is None else list(interval)
