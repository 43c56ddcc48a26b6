"""Parity figures between a reference's logits and a candidate's, and the precision gates they are judged by.

Used at export time (``export.onnx``) and by the benchmark harness, so that both speak of the same numbers.
Needs numpy only.
"""
from typing import Dict, Optional

import numpy as np

# Gates per precision; judged only when the weights are trained (random weights give near-tied logits).
# fp32: max |d| <= 1e-4 x max |logit| and every top-1 equal; reduced precisions: top-1 agreement and SQNR.
GATES: Dict[str, Dict[str, float]] = {
    'fp32': {'rel_err_max': 1e-4, 'top1_min': 1.0},
    'fp16': {'top1_min': 0.99, 'sqnr_min_db': 30.0},
    'bf16': {'top1_min': 0.99, 'sqnr_min_db': 30.0},
    'int8': {'top1_min': 0.95, 'sqnr_min_db': 20.0},
}


def compare(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    """Figures for candidate logits against reference logits, both (N, classes).

    max_rel_err is max |d| over max |reference logit| (per image, then the worst image): elementwise relative
    error explodes on logits near zero and says nothing. top5_agreement: share of images whose reference top-1
    class is in the candidate's top 5. SQNR = 10 log10(sum ref^2 / sum d^2) over the whole batch.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f'logit shapes differ or are not (N, classes): {ref.shape} vs {cand.shape}')
    diff = cand - ref
    noise = float(np.sum(diff ** 2))
    signal = float(np.sum(ref ** 2))
    sqnr = float('inf') if noise == 0 else float(10.0 * np.log10(signal / noise)) if signal > 0 else float('-inf')
    row_max = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float64).tiny)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    ref_top1 = ref.argmax(axis=1)
    return {
        'max_abs_err': float(np.abs(diff).max()),
        'max_rel_err': float((np.abs(diff).max(axis=1) / row_max).max()),
        'sqnr_db': sqnr,
        'cosine_min': float(cosine.min()),
        'top1_agreement': float(np.mean(cand.argmax(axis=1) == ref_top1)),
        'top5_agreement': top_k_rate(cand, ref_top1, 5),
    }


def top_k_rate(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target class is among the ``k`` largest logits (all of them when there are fewer)."""
    top = np.argsort(-np.asarray(logits), axis=1)[:, :min(k, logits.shape[1])]
    return float(np.mean([t in row for t, row in zip(targets, top)]))


def judge(precision: str, figures: Dict[str, float], trained: bool) -> Dict[str, Optional[bool]]:
    """``{'judged': bool, 'passed': bool | None}``; passed is None when not judged (random weights)."""
    if not trained:
        return {'judged': False, 'passed': None}
    gate = GATES[precision]
    ok = figures['top1_agreement'] >= gate['top1_min']
    if 'rel_err_max' in gate:
        ok = ok and figures['max_rel_err'] <= gate['rel_err_max']
    if 'sqnr_min_db' in gate:
        ok = ok and figures['sqnr_db'] >= gate['sqnr_min_db']
    return {'judged': True, 'passed': bool(ok)}


def margin_std(logits: np.ndarray) -> float:
    """Median top-1/top-2 logit margin in standard deviations of the logits: how decisive the model is."""
    logits = np.asarray(logits, dtype=np.float64)
    top2 = -np.sort(-logits, axis=1)[:, :2]
    return float(np.median((top2[:, 0] - top2[:, 1]) / np.maximum(logits.std(axis=1), 1e-12)))


def gate_failure(precision: str, figures: Dict[str, float]) -> str:
    """Which figures missed ``precision``'s gate, e.g. 'top-1 90.0 % < 95.0 %, SQNR 12.1 dB < 20 dB'."""
    gate, misses = GATES[precision], []
    if figures['top1_agreement'] < gate['top1_min']:
        misses.append(f'top-1 {100 * figures["top1_agreement"]:.1f} % < {100 * gate["top1_min"]:.1f} %')
    if 'rel_err_max' in gate and figures['max_rel_err'] > gate['rel_err_max']:
        misses.append(f'max |d| / max |logit| {figures["max_rel_err"]:.2g} > {gate["rel_err_max"]:.0e}')
    if 'sqnr_min_db' in gate and figures['sqnr_db'] < gate['sqnr_min_db']:
        misses.append(f'SQNR {figures["sqnr_db"]:.1f} dB < {gate["sqnr_min_db"]:.0f} dB')
    return ', '.join(misses) or 'gate failed'


def verdict(passed: Optional[bool]) -> str:
    """How a judgement reads in tables: 'pass', 'FAIL', or 'not judged' (random weights)."""
    return 'not judged' if passed is None else 'pass' if passed else 'FAIL'
