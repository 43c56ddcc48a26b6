"""Parity figures between a reference's logits and a candidate's, and the precision gates they are judged by.

Used at export time (``export.onnx``) and by the benchmark harness, so that both speak of the same numbers.
Needs numpy only. docs/export.md explains the gates and the near-tie rule.
"""
import math
from typing import Dict, Optional

import numpy as np

# Gates per precision, judged only when the weights are trained (random weights give near-tied logits).
# top1_min applies to the decisive views (near-ties are counted and reported, not held against agreement).
# The reduced precisions are judged by what a user measures, one rule for every network: where the views are
# labelled, top-1 accuracy (ACCURACY_MIN_RATIO of fp32's, MLPerf's rule); where they are not, top-1 agreement
# with fp32. Both on the decisive views, of which there must be at least MIN_DECISIVE_VIEWS (the resolution the
# 99 % rules need: one flip in 100 views is 1 %; half of a set smaller than 200), so that a graph whose error
# reaches most of fp32's margins cannot pass on the few views left. No SQNR floor: the int8 that keeps the
# task accuracy of an efficient network (ReLU6, hard-swish, SiLU, attention) sits near 10-25 dB of logit SQNR,
# where AlexNet's reaches 37 dB; a floor set on one family rejects the other's good graphs (docs/export.md).
GATES: Dict[str, Dict[str, float]] = {
    'fp32': {'rel_err_max': 1e-4, 'top1_min': 1.0},
    'fp16': {'top1_min': 0.995, 'range_max': 65504.0},  # fp16's largest finite value: beyond it, fp16 devices give Inf
    'bf16': {'top1_min': 0.995},
    'int8': {'top1_min': 0.99},
}
ACCURACY_MIN_RATIO = 0.99  # where labels exist: top-1 accuracy >= 99 % of the reference's (MLPerf's rule)
MIN_DECISIVE_VIEWS = 100  # for a reduced precision's verdict to rest on
NEAR_TIE_QUANTILE = 95  # a view is a near-tie when its margin is below twice this percentile of the views' max |d|


def compare(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    """Figures for candidate logits against reference logits, both (views, classes).

    max_rel_err is max |d| over max |reference logit| (per view, then the worst view): elementwise relative
    error explodes on logits near zero and says nothing. SQNR = 10 log10(sum ref^2 / sum d^2) over all views
    (inf when identical, NaN when the candidate is not finite). top5_agreement: share of views whose reference
    top-1 class is in the candidate's top 5. near_ties: views whose reference top-1/top-2 margin is below
    ``near_tie_margin`` (twice the 95th percentile of the views' max |d|), which the candidate's ordinary error
    could flip; decisive_top1_agreement is the top-1 agreement over the other views.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f'logit shapes differ or are not (N, classes): {ref.shape} vs {cand.shape}')
    nonfinite = int(np.size(cand) - np.count_nonzero(np.isfinite(cand)))
    diff = cand - ref
    noise = float(np.sum(diff ** 2))
    signal = float(np.sum(ref ** 2))
    if nonfinite:
        sqnr = math.nan
    else:
        sqnr = math.inf if noise == 0 else 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
    row_max = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float64).tiny)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    with np.errstate(invalid='ignore'):
        cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    view_err = np.abs(diff).max(axis=1)
    ref_top1, agree = ref.argmax(axis=1), cand.argmax(axis=1) == ref.argmax(axis=1)
    near_tie, near_tie_margin = near_ties(ref, cand)
    return {
        'views': int(len(ref)),
        'max_abs_err': float(view_err.max()),
        'reference_max_abs': float(np.abs(ref).max()),
        'max_rel_err': float((view_err / row_max).max()),
        'sqnr_db': float(sqnr),
        'identical': bool(noise == 0 and not nonfinite),
        'nonfinite': nonfinite,
        'cosine_min': float(np.min(cosine)),
        'top1_agreement': float(np.mean(agree)),
        'top5_agreement': top_k_rate(cand, ref_top1, 5),
        'near_tie_margin': near_tie_margin,
        'near_ties': int(near_tie.sum()),
        'near_tie_flips': int((near_tie & ~agree).sum()),
        'decisive_top1_agreement': float(np.mean(agree[~near_tie])) if (~near_tie).any() else None,
    }


def near_ties(reference: np.ndarray, candidate: np.ndarray):
    """Which views are near-ties for this candidate, and the margin below which a view is one: twice the 95th
    percentile over the views of max |candidate - reference| (all views when the candidate is not finite)."""
    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if not np.isfinite(cand).all():
        return np.ones(len(ref), dtype=bool), math.inf
    threshold = 2 * float(np.percentile(np.abs(cand - ref).max(axis=1), NEAR_TIE_QUANTILE))
    return margins(ref) < threshold, threshold


def accuracy_figures(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Top-1 accuracy of the candidate and of the reference on the labelled views that are decisive for this
    candidate: a near-tie can flip either way with no fault of the candidate's, here as for agreement."""
    tie, _ = near_ties(reference, candidate)
    decisive = ~tie
    if not decisive.any():
        return {'accuracy_top1': 0.0, 'reference_accuracy_top1': 1.0, 'accuracy_views': 0}
    return {'accuracy_top1': top_k_rate(np.asarray(candidate)[decisive], labels[decisive], 1),
            'reference_accuracy_top1': top_k_rate(np.asarray(reference)[decisive], labels[decisive], 1),
            'accuracy_views': int(decisive.sum())}


def margins(logits: np.ndarray) -> np.ndarray:
    """Each view's top-1 minus top-2 logit."""
    top2 = -np.sort(-np.asarray(logits, dtype=np.float64), axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def top_k_rate(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target class is among the ``k`` largest logits (all of them when there are fewer)."""
    top = np.argsort(-np.asarray(logits), axis=1)[:, :min(k, logits.shape[1])]
    return float(np.mean([t in row for t, row in zip(targets, top)]))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    return {'top1': top_k_rate(logits, labels, 1), 'top5': top_k_rate(logits, labels, 5)}


def judge(precision: str, figures: Dict[str, float], trained: bool) -> Dict[str, Optional[bool]]:
    """``{'judged': bool, 'passed': bool | None}``; passed is None when not judged (random weights).

    Non-finite logits always fail. With ``accuracy_top1`` and ``reference_accuracy_top1`` in the figures (labels
    exist: ``accuracy_figures``), the candidate's accuracy must also reach ACCURACY_MIN_RATIO of the reference's.
    """
    if not trained:
        return {'judged': False, 'passed': None}
    return {'judged': True, 'passed': not gate_misses(precision, figures)}


def gate_misses(precision: str, figures: Dict[str, float]) -> list:
    """Which figures missed ``precision``'s gate, each as a short phrase; empty when the gate passes."""
    gate, misses = GATES[precision], []
    ref = figures.get('reference', 'torch fp32').split()[-1]  # a benchmark row has an fp64 reference too
    if figures.get('nonfinite'):
        misses.append(f'{figures["nonfinite"]} non-finite logits (NaN or Inf)')
        return misses
    decisive = figures.get('decisive_top1_agreement')
    reference_accuracy = figures.get('reference_accuracy_top1')  # None where the views have no labels
    reduced = precision != 'fp32'  # judged by the task (the rule above); fp32 must match exactly
    # the verdict's resolution: the views it rests on, the labelled decisive ones where accuracy decides (a benchmark
    # judges accuracy on its --data views, beside agreement on the photographs' views)
    by_labels = reference_accuracy is not None and figures.get('accuracy_views') is not None
    counted = (figures['accuracy_views'] if by_labels else decisive_views(figures)) if reduced else None
    if decisive is None:
        sqnr = figures.get('sqnr_db')
        misses.append(f'0 of {figures["views"]} views decisive: the error'
                      + (f' (SQNR {sqnr:.1f} dB)' if sqnr is not None else '')
                      + f' reaches every one of {ref}\'s margins')
    elif reduced and counted < min_decisive(figures['views']):
        misses.append(f'{counted} of {figures["views"]} {"labelled " if by_labels else ""}'
                      f'views decisive (< '
                      f'{min_decisive(figures["views"])}): the error (SQNR {figures["sqnr_db"]:.1f} dB) reaches most '
                      f'of {ref}\'s margins')
    elif decisive < gate['top1_min'] and not (reduced and reference_accuracy is not None):
        misses.append(f'top-1 {100 * decisive:.1f} % < {100 * gate["top1_min"]:.1f} % '
                      f'({figures.get("near_ties", 0)} near-ties set aside)')
    if 'rel_err_max' in gate and figures['max_rel_err'] > gate['rel_err_max']:
        misses.append(f'max |d| / max |logit| {figures["max_rel_err"]:.2g} > {gate["rel_err_max"]:.0e}')
    if 'range_max' in gate and figures.get('reference_max_abs', 0.0) > gate['range_max']:
        misses.append(f'fp32\'s logits reach {figures["reference_max_abs"]:.3g}, beyond {gate["range_max"]:.0f} '
                      f'(an fp16 device computes Inf; a CPU computes through fp32, SQNR {figures["sqnr_db"]:.1f} dB)')
    if reference_accuracy is not None and figures['accuracy_top1'] < ACCURACY_MIN_RATIO * reference_accuracy:
        misses.append(f'accuracy {100 * figures["accuracy_top1"]:.1f} % < {100 * ACCURACY_MIN_RATIO:.0f} % of '
                      f'{ref}\'s {100 * reference_accuracy:.1f} % (on {figures.get("accuracy_views", "the")} decisive '
                      f'views)')
    return misses


def decisive_views(figures: Dict[str, float]) -> int:
    return int(figures['views'] - figures.get('near_ties', 0))


def min_decisive(views: int) -> int:
    """MIN_DECISIVE_VIEWS, or half of a smaller set (a runner checked on the 18 photographs' centre crops): a
    verdict never rests on less than half of the views it was given."""
    return min(MIN_DECISIVE_VIEWS, math.ceil(views / 2))


def gate_failure(precision: str, figures: Dict[str, float]) -> str:
    """Which figures missed ``precision``'s gate, e.g. 'top-1 98.0 % < 99.0 % (2 near-ties set aside), SQNR ...'."""
    return ', '.join(gate_misses(precision, figures)) or 'gate failed'


def verdict(passed: Optional[bool]) -> str:
    """How a judgement reads in tables: 'pass', 'FAIL', or 'not judged' (random weights)."""
    return 'not judged' if passed is None else 'pass' if passed else 'FAIL'


def sqnr_text(figures: Dict[str, float]) -> str:
    """SQNR as tables print it: 'non-finite', 'exact' (identical logits), or dB."""
    if figures.get('nonfinite'):
        return 'non-finite'
    if figures.get('identical'):
        return 'exact'
    value = figures.get('sqnr_db')
    return '–' if value is None else f'{value:.1f}'


def margin_std(logits: np.ndarray) -> float:
    """Median top-1/top-2 logit margin in standard deviations of the logits: how decisive the model is."""
    logits = np.asarray(logits, dtype=np.float64)
    return float(np.median(margins(logits) / np.maximum(logits.std(axis=1), 1e-12)))
