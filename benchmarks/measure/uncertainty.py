"""How sure a figure is: confidence intervals over timing rounds, paired ratios, and how noisy the machine was.

A row's latency is the median over rounds of its per-round median; its speed-up the median over rounds of the
per-round ratio to the baseline timed in the same round (a busy minute slows both alike and cancels out). The
95 % interval of a median is the distribution-free one from order statistics (the binomial interval: no
assumption about the shape of the timings, exact coverage, no random resampling): with n rounds it is
[x_(k), x_(n-k+1)] for the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is still at least 95 %. Below
6 rounds no such k exists and the interval is [min, max], with its lower coverage stated.

Rounds cannot see what persists for a whole run. On a shared 2-core guest, other tenants' use of the shared L3
cache and memory bandwidth changes over minutes and moves a row that streams 62 MB of int8 weights far more than
one that streams 244 MB of fp32: repeated runs of the same benchmark differ by more than any one run's rounds
show. That term is added as a stated, measured relative standard deviation between runs (``RUN_TO_RUN``,
docs/benchmarks.md; ``--run-to-run``), combined with each side of the rounds' interval as metrology combines a
statistical and a systematic uncertainty (GUM), on a log scale: each side's log-distance from the median becomes
sqrt(its rounds' log-distance^2 + (1.96 * ln(1 + run_to_run))^2).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CONFIDENCE = 0.95
Z95 = 1.959964
RUN_TO_RUN = 0.06  # relative SD of a row's speed-up between runs on the 2-core guests (measured 5.2 %, 7 runs)
CI_METHOD = ('distribution-free 95 % interval of the median over rounds (order statistics, binomial coverage), '
             'widened by the stated run-to-run relative SD (GUM combination); speed-ups and rankings from ratios '
             'paired within a round')
NOISY_ROUND = 1.2  # a round whose typical row ran 20 % slower than that row's median round
TOO_NOISY = {'steal': 0.05, 'baseline_cv': 0.10, 'noisy_rounds': 0.25}


def median_ci_rank(n: int, confidence: float = CONFIDENCE) -> Tuple[int, float]:
    """(k, coverage): the interval of the median is the k-th smallest to the k-th largest of n values."""
    if n < 1:
        raise ValueError('no values')
    best = (1, 1 - 2 * 0.5 ** n)  # [min, max]
    for k in range(2, n // 2 + 1):
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
        if coverage < confidence:
            break
        best = (k, coverage)
    return best


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, object]:
    """Median, its interval [low, high], the interval's coverage and the coefficient of variation of ``values``."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    k, coverage = median_ci_rank(len(x), confidence)
    mean = float(x.mean())
    return {'median': float(np.median(x)), 'ci95': [float(x[k - 1]), float(x[len(x) - k])],
            'coverage': round(coverage, 4), 'cv': float(x.std(ddof=1) / mean) if len(x) > 1 and mean else 0.0}


def widen(figures: Dict[str, object], run_to_run: float) -> Dict[str, object]:
    """``median_ci`` figures with the run-to-run term combined into each side of the interval, on a log scale (the
    term is relative, latencies and ratios are positive: the interval stays above zero); the rounds' own interval
    stays as ``ci95_rounds``."""
    median, (low, high) = figures['median'], figures['ci95']
    extra = Z95 * math.log1p(run_to_run)
    if median <= 0 or low <= 0:
        return {**figures, 'ci95_rounds': [low, high]}
    return {**figures, 'ci95': [median * math.exp(-math.hypot(math.log(median / low), extra)),
                                median * math.exp(math.hypot(math.log(high / median), extra))],
            'ci95_rounds': [low, high]}


def robust_cv(values: Sequence[float]) -> float:
    """Spread that a few bursts do not dominate: 1.4826 x the median absolute deviation / the median (the CV
    of normal timings, but a round that another process doubled counts once, not squared)."""
    x = np.asarray(values, dtype=np.float64)
    median = float(np.median(x))
    return float(1.4826 * np.median(np.abs(x - median)) / median) if median else 0.0


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> List[float]:
    """Round-by-round ratios of two rows timed in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f'rows timed in different rounds ({len(numerator)} and {len(denominator)})')
    return [float(a) / float(b) for a, b in zip(numerator, denominator)]


def separable(ci: Sequence[float], neutral: float = 1.0) -> bool:
    """An interval of a ratio that excludes ``neutral``: the two rows can be ranked."""
    return not ci[0] <= neutral <= ci[1]


def change(old_ci: Optional[Sequence[float]], new_ci: Optional[Sequence[float]],
           lower: str = 'faster', higher: str = 'slower') -> str:
    """``lower``/``higher`` only where the two intervals do not overlap; otherwise 'within noise'."""
    if not old_ci or not new_ci:
        return 'no interval'
    if new_ci[1] < old_ci[0]:
        return lower
    if new_ci[0] > old_ci[1]:
        return higher
    return 'within noise'


def round_noise(round_medians: Sequence[Sequence[float]]) -> List[float]:
    """Per round, how much slower than usual the machine ran: the median over rows of (this round's median /
    that row's median over rounds). 1.0 is a typical round; every row counts, not just the baseline."""
    m = np.asarray(round_medians, dtype=np.float64)  # rows x rounds
    return [float(v) for v in np.median(m / np.median(m, axis=1, keepdims=True), axis=0)]


def cpu_times() -> Optional[List[int]]:
    """The machine's CPU time counters from /proc/stat (user nice system idle iowait irq softirq steal), or None
    where Linux does not expose them."""
    try:
        with open('/proc/stat') as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != 'cpu' or len(fields) < 9:
        return None
    return [int(v) for v in fields[1:9]]


def steal_fraction(before: Optional[List[int]], after: Optional[List[int]]) -> Optional[float]:
    """Share of CPU time the hypervisor gave to other guests between two ``cpu_times`` readings."""
    if before is None or after is None:
        return None
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta)
    return delta[7] / total if total > 0 else 0.0


def noise_warnings(steal: Optional[float], baseline_cv: Dict[int, float], noise: Sequence[float]) -> List[str]:
    """Why the run's figures should not be trusted, if they should not (thresholds in ``TOO_NOISY``);
    ``baseline_cv``: the baseline's ``robust_cv`` over rounds per batch size."""
    warnings = []
    if steal is not None and steal > TOO_NOISY['steal']:
        warnings.append(f'the hypervisor took {steal:.1%} of the CPU time for other guests (steal) while timing')
    for batch_size, cv in sorted(baseline_cv.items()):
        if cv > TOO_NOISY['baseline_cv']:
            warnings.append(f'the baseline at batch {batch_size} varied by {cv:.0%} (robust CV) across rounds')
    noisy = sum(v > NOISY_ROUND for v in noise)
    if noise and noisy / len(noise) > TOO_NOISY['noisy_rounds']:
        warnings.append(f'{noisy} of {len(noise)} rounds ran more than {NOISY_ROUND - 1:.0%} slower than usual')
    return warnings
