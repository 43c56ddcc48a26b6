"""What report.json holds, as typed classes: the one constructor of a row, the one encoder that writes a report and
the one decoder that reads it back and checks it.

A benchmark row is a ``Row`` from the moment the harness opens its runner (``make_row``) to report.json: timing,
speed-ups and the roofline are added by returning new values (``updated``: ``dataclasses.replace`` with each value
typed as its field), never by writing into it. Each field is the JSON key it is written as, in the file's order, so
the classes are the schema (``typed_json`` holds the machinery). ``plain`` turns a report into report.json's plain
values, the one form that renderers reading dicts get; ``encode`` writes them; ``decode`` turns what a file holds
into a ``Report``, or refuses it with a ValueError naming the first key that is missing, of the wrong type, not
finite, or not an interval: nothing else checks figures by hand. The sections that no code reads by attribute (the
model, the settings, the ceilings...) are plain JSON objects.
"""
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.report.typed_json import checked, omit, on_read, plain, typed, updated  # noqa: F401 (the schema's API)

# 2: parity on >= 256 views with near-ties, non-finite counts, accuracy gates, int8 remedies
# 3: interleaved timing rounds; median over rounds with 95 % intervals, paired speed-ups, noise
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)  # --compare reads p50 (1, 2) or the median and its interval (3), and SQNR

Interval = Tuple[float, float]  # [low, high] in the file, low <= high
Section = Optional[Dict[str, Any]]  # a JSON object whose keys the schema does not name

frozen = dataclass(frozen=True, kw_only=True)


@frozen
class Latency:
    """Latency of every timed run of a row in ms; p50 is the one figure every schema has."""
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    p50: float
    p90: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None
    max: Optional[float] = None


@frozen
class Parity:
    """One row's figures against one reference (``export.parity.compare`` and its gate); None where a schema has
    none, or where the figure was not finite (an SQNR of identical logits). The accuracy figures are there where
    the run had labelled data, against PyTorch fp32 only."""
    reference: Optional[str] = None
    views: Optional[int] = None
    max_abs_err: Optional[float] = None
    reference_max_abs: Optional[float] = None
    max_rel_err: Optional[float] = None
    sqnr_db: Optional[float] = None
    identical: Optional[bool] = None
    nonfinite: Optional[int] = None
    cosine_min: Optional[float] = None
    top1_agreement: Optional[float] = None
    top5_agreement: Optional[float] = None
    near_tie_margin: Optional[float] = None
    near_ties: Optional[int] = None
    near_tie_flips: Optional[int] = None
    decisive_top1_agreement: Optional[float] = None
    accuracy_top1: Optional[float] = omit()
    reference_accuracy_top1: Optional[float] = omit()
    accuracy_views: Optional[int] = omit()
    judged: Optional[bool] = None
    passed: Optional[bool] = None


@frozen
class Accuracy:
    """Top-1 and top-5 on every labelled view (``--data``)."""
    top1: Optional[float] = None
    top5: Optional[float] = None


@frozen
class Roofline:
    """A row against its device's ceilings (``roofline.ceilings.place``)."""
    ops_per_s: Optional[float] = None
    bytes: Optional[int] = None
    bytes_per_s: Optional[float] = None
    intensity: Optional[float] = None
    ceiling: Optional[str] = None
    attainable_ops_per_s: Optional[float] = None
    documented_ops_per_s: Optional[float] = None
    memory: Optional[str] = None
    memory_bytes_per_s: Optional[float] = None
    bound: Optional[str] = None
    bound_ms: Optional[float] = None
    times_bound: Optional[float] = None
    share_of_documented: Optional[float] = None


def row_label(backend: str, precision: str, device: str = 'cpu') -> str:
    """'openvino int8', with the device where it is not the CPU."""
    return f'{backend} {precision}' + ('' if device == 'cpu' else f' ({device})')


def gates_passed(parity: Optional[bool], parity_fp64: Optional[bool], export_failure: Optional[str]) -> Optional[bool]:
    """True/False when the gates were judged (both references; a graph that failed its gate at export fails), None
    when not (random weights)."""
    if parity is None or parity_fp64 is None:
        return None
    return parity and parity_fp64 and not export_failure


@frozen
class Row:
    """One backend, precision, device and batch size: parity (the same at every batch size), the graph's notes,
    latency over the timing rounds, speed-up over the baseline and the roofline placement."""
    backend: str
    precision: str
    device: str = 'cpu'
    batch_size: int
    accuracy: Optional[Accuracy] = omit()
    parity: Optional[Parity] = None
    parity_fp64: Optional[Parity] = None
    float_layers: Optional[List[str]] = omit()  # an int8 graph's remedy, where the row runs a graph
    equalized: Optional[List[str]] = omit()
    export_failure: Optional[str] = omit()  # measured from a graph that failed its gate at export
    weight_bytes: Optional[int] = None
    median_ms: Optional[float] = None  # schema 3: the median over rounds, with its interval
    median_ci95_ms: Optional[Interval] = None
    median_ci95_rounds_ms: Optional[Interval] = None
    cv: Optional[float] = None
    round_medians_ms: Optional[List[float]] = None
    latency_ms: Optional[Latency] = on_read()
    throughput_ips: Optional[float] = None
    iterations: Optional[int] = None
    speedup_vs_torch_fp32: Optional[float] = None
    speedup_ci95: Optional[Interval] = None
    speedup_ci95_rounds: Optional[Interval] = None
    speedup_cv: Optional[float] = None
    not_separable_from: Optional[List[str]] = None
    roofline: Optional[Roofline] = None

    @property
    def key(self) -> Tuple[str, str, str, int]:
        return self.backend, self.precision, self.device, self.batch_size

    @property
    def label(self) -> str:
        return row_label(self.backend, self.precision, self.device)

    def passed(self) -> Optional[bool]:
        return gates_passed(self.parity and self.parity.passed, self.parity_fp64 and self.parity_fp64.passed,
                            self.export_failure)

    def latency(self) -> Tuple[float, Optional[Interval]]:
        """The median over rounds and its interval (schema 3) or, from older reports, the p50 of one window,
        which has no interval."""
        if self.median_ms is not None:
            return self.median_ms, self.median_ci95_ms
        return self.latency_ms.p50, None


def make_row(backend: str, precision: str, device: str, batch_size: int, parity: dict, parity_fp64: dict,
             weight_bytes: Optional[int], accuracy: Optional[dict] = None, float_layers: Optional[List[str]] = None,
             equalized: Optional[List[str]] = None, export_failure: Optional[str] = None) -> Row:
    """The one constructor of a row, before it is timed: its parity figures (``export.parity``'s dicts) and its
    graph's notes, typed and checked as report.json will read them back."""
    return typed(Row, {'backend': backend, 'precision': precision, 'device': device, 'batch_size': batch_size,
                       'accuracy': accuracy, 'parity': parity, 'parity_fp64': parity_fp64,
                       'float_layers': float_layers, 'equalized': equalized, 'export_failure': export_failure,
                       'weight_bytes': weight_bytes})


@frozen
class Fastest:
    """The fastest row that passes its gates at one batch size, and what bounds it."""
    batch_size: int
    backend: str
    precision: str
    device: str = 'cpu'
    median_ms: Optional[float] = None
    median_ci95_ms: Optional[Interval] = None
    p50_ms: Optional[float] = omit()  # schema 1, 2
    baseline_median_ms: Optional[float] = None
    speedup_vs_torch_fp32: Optional[float] = None
    speedup_ci95: Optional[Interval] = None
    runner_up: Optional[str] = None
    runner_up_ratio_ci95: Optional[Interval] = None
    ranked: Optional[bool] = None
    bound: Optional[str] = omit()

    @property
    def ms(self) -> Optional[float]:
        return self.p50_ms if self.median_ms is None else self.median_ms

    @property
    def label(self) -> str:
        return row_label(self.backend, self.precision, self.device)


@frozen
class Tie:
    """Two neighbouring rows (by latency) whose per-round ratio's interval includes 1."""
    batch_size: Optional[int] = None
    rows: Optional[List[str]] = None
    ratio_ci95: Optional[Interval] = None


@frozen
class Summary:
    baseline: Optional[str] = None
    fastest_passing: List[Fastest]
    ties: Optional[List[Tie]] = None
    gates_judged: Optional[bool] = None
    rows_failed: Optional[int] = None
    passed: Optional[bool] = None


@frozen
class Noise:
    """How noisy the machine was while timing (``summary.add_noise``)."""
    steal: Optional[float] = None
    baseline_cv: Optional[Dict[str, Optional[float]]] = None
    round_noise: Optional[List[float]] = None
    noisy_rounds: Optional[List[int]] = None
    warnings: Optional[List[str]] = None
    trusted: Optional[bool] = None


@frozen
class Skipped:
    """A row asked for that cannot run here, and why."""
    backend: Optional[str] = None
    precision: Optional[str] = None
    device: Optional[str] = None
    reason: Optional[str] = None


@frozen
class Cpu:
    model: Optional[str] = None
    logical_cores: Optional[int] = None
    usable_cores: Optional[int] = None
    features: Optional[Dict[str, bool]] = None
    torch_capability: Optional[str] = None


@frozen
class Environment:
    """The machine and the software (``measure.environment``)."""
    cpu: Cpu = field(default_factory=Cpu)
    memory_gb: Optional[float] = None
    os: Optional[str] = None
    python: Optional[str] = None
    packages: Optional[Dict[str, str]] = None
    gpu: Section = None
    threads: Optional[int] = None
    onnxruntime_providers: Optional[List[str]] = None


@frozen
class Report:
    """report.json: the run's inputs, its rows, and what the summary made of them."""
    schema_version: int
    created_at: Optional[str] = None
    command: Optional[str] = None
    environment: Optional[Environment] = None
    model: Section = None
    images: Section = None
    graphs: Section = None
    data: Section = None
    settings: Section = None
    results: List[Row]
    skipped: Optional[List[Skipped]] = None
    timing: Section = None
    ceilings: Section = None
    layer_profiles: Optional[List[Dict[str, Any]]] = None
    summary: Optional[Summary] = None
    noise: Optional[Noise] = None
    comparison: Section = omit()  # --compare
    duration_s: Optional[float] = None
    run_id: Optional[str] = None


def encode(report: Report) -> str:
    """The one encoder: report.json's text, from a ``Report``."""
    return json.dumps(plain(report), indent=2, allow_nan=False) + '\n'


def decode(data: Any) -> Report:
    """The one decoder: parsed report.json as a ``Report``; a ValueError naming the key if it is not one."""
    if not isinstance(data, dict) or data.get('schema_version') not in READABLE_SCHEMAS:
        raise ValueError(f'no schema_version in {READABLE_SCHEMAS}')
    return checked(Report, data)


def read_back(report: Any) -> Report:
    """A report (typed, or as plain values) as its file will read: NaN and Inf as null, then decoded."""
    return decode(plain(report))
