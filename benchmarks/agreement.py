"""Do repeated runs agree? The fastest passing row's speed-up across reports of the same benchmark.

    python -m benchmarks.agreement RUN1/report.json RUN2/report.json RUN3/report.json [--batch-size 1]

The target (docs/benchmarks.md): run the default benchmark three times in a row on one machine; the fastest
passing row's speed-up at batch 1 agrees across the runs within ±15 % of their median, and each run's 95 %
interval contains the other runs' medians. Prints one line per run and the verdict; exit 0 when both hold, 1 when
not. Reports from before the timing rounds (schema 1, 2) have no intervals: only the ±15 % part is judged.
"""
from typing import List, Optional, Sequence

import numpy as np

from alexnet_zoo.cli import MAX_BATCH, ArgumentParser, UsageError, positive, run_cli

from benchmarks.report.files import read_report
from benchmarks.report.schema import Report

TOLERANCE = 0.15


def fastest(report: Report, batch_size: int) -> dict:
    """The fastest passing row at ``batch_size``, with its speed-up and interval (None before schema 3)."""
    if report.summary is None:
        raise ValueError('a report has no summary of its fastest rows')
    for f in report.summary.fastest_passing:
        if f.batch_size == batch_size:
            return {'row': f'{f.backend} {f.precision}', 'speedup': f.speedup_vs_torch_fp32, 'ci95': f.speedup_ci95,
                    'ms': f.ms}
    raise ValueError(f'no passing row at batch {batch_size} in a report')


def agreement(reports: Sequence[Report], batch_size: int = 1, tolerance: float = TOLERANCE) -> dict:
    """Each run's fastest row and speed-up, the spread around their median, and whether the target holds."""
    runs = [fastest(r, batch_size) for r in reports]
    if any(run['speedup'] is None for run in runs):
        raise ValueError('a report has no PyTorch eager fp32 row to give a speed-up against')
    speedups = [run['speedup'] for run in runs]
    median = float(np.median(speedups))
    within = all(abs(s / median - 1) <= tolerance for s in speedups)
    contained: Optional[bool] = None
    if all(run['ci95'] for run in runs):
        contained = all(low <= other <= high for i, run in enumerate(runs) for low, high in [run['ci95']]
                        for j, other in enumerate(speedups) if i != j)
    return {'batch_size': batch_size, 'runs': runs, 'median': median,
            'deviation': [s / median - 1 for s in speedups], 'within_tolerance': within,
            'intervals_contain_others': contained, 'same_row': len({run['row'] for run in runs}) == 1,
            'passed': within and contained is not False}


def render(result: dict, names: Sequence[str]) -> List[str]:
    lines = []
    for name, run, dev in zip(names, result['runs'], result['deviation']):
        ci = f' ({run["ci95"][0]:.2f}–{run["ci95"][1]:.2f})' if run['ci95'] else ' (no interval)'
        lines.append(f'{name}: {run["row"]}, {run["ms"]:.2f} ms, speed-up {run["speedup"]:.2f}×{ci}, '
                     f'{dev:+.1%} from the median')
    contained = {True: 'each run\'s interval contains the other runs\' medians',
                 False: 'NOT every run\'s interval contains the other runs\' medians',
                 None: 'intervals not judged (a report has none)'}[result['intervals_contain_others']]
    lines.append(f'batch {result["batch_size"]}: median speed-up {result["median"]:.2f}×; '
                 f'{"within" if result["within_tolerance"] else "NOT within"} ±{TOLERANCE:.0%} of it; {contained}'
                 + ('' if result['same_row'] else '; the fastest row differs between runs'))
    lines.append('target met' if result['passed'] else 'target NOT met')
    return lines


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m benchmarks.agreement', description=__doc__.splitlines()[0])
    parser.add_argument('reports', nargs='+', help='report.json files of repeated runs')
    parser.add_argument('--batch-size', type=positive(int, MAX_BATCH), default=1)
    return parser


def main(argv: Sequence[str] = None) -> int:
    args = build_parser().parse_args(argv)
    if len(args.reports) < 2:
        raise UsageError('give at least two reports')
    result = agreement([read_report(path, 'report') for path in args.reports], args.batch_size)
    print('\n'.join(render(result, args.reports)))
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    run_cli(main)
