"""What report.json holds, as typed classes: one encoder writes them, one decoder reads them back and checks them.

The classes name the figures that are read back (by ``--compare`` and ``benchmarks.agreement``); each field is the
JSON key it comes from, so the classes are the schema. The harness builds a report as a dict and ``encode`` writes
that dict as it is; ``decode`` turns what a file holds into a ``Report``, or refuses it with a ValueError naming the
first key that is missing, of the wrong type, not finite, or not an interval: nothing else checks figures by hand.
"""
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

# 2: parity on >= 256 views with near-ties, non-finite counts, accuracy gates, int8 remedies
# 3: interleaved timing rounds; median over rounds with 95 % intervals, paired speed-ups, noise
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)  # --compare reads p50 (1, 2) or the median and its interval (3), and SQNR

Interval = Tuple[float, float]  # [low, high] in the file, low <= high


@dataclass(frozen=True)
class Latency:
    """Latency of one timing window in ms; p50 is the one figure every schema has."""
    p50: float
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    p90: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None
    max: Optional[float] = None


@dataclass(frozen=True)
class Parity:
    """One row's figures against one reference (``export.parity.compare`` and its gate); None where a schema has
    none, or where the figure was not finite (an SQNR of identical logits)."""
    reference: Optional[str] = None
    views: Optional[int] = None
    max_abs_err: Optional[float] = None
    max_rel_err: Optional[float] = None
    reference_max_abs: Optional[float] = None
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
    judged: Optional[bool] = None
    passed: Optional[bool] = None


@dataclass(frozen=True)
class Row:
    """One backend, precision, device and batch size: its latency, speed-up and parity."""
    backend: str
    precision: str
    batch_size: int
    latency_ms: Latency
    device: str = 'cpu'
    median_ms: Optional[float] = None  # schema 3: the median over rounds, with its interval
    median_ci95_ms: Optional[Interval] = None
    speedup_vs_torch_fp32: Optional[float] = None
    speedup_ci95: Optional[Interval] = None
    throughput_ips: Optional[float] = None
    parity: Optional[Parity] = None
    parity_fp64: Optional[Parity] = None

    @property
    def key(self) -> Tuple[str, str, str, int]:
        return self.backend, self.precision, self.device, self.batch_size

    def latency(self) -> Tuple[float, Optional[Interval]]:
        """The median over rounds and its interval (schema 3) or, from older reports, the p50 of one window,
        which has no interval."""
        if self.median_ms is not None:
            return self.median_ms, self.median_ci95_ms
        return self.latency_ms.p50, None


@dataclass(frozen=True)
class Fastest:
    """The fastest row that passes its gates at one batch size."""
    batch_size: int
    backend: str
    precision: str
    device: str = 'cpu'
    median_ms: Optional[float] = None
    median_ci95_ms: Optional[Interval] = None
    p50_ms: Optional[float] = None  # schema 1, 2
    speedup_vs_torch_fp32: Optional[float] = None
    speedup_ci95: Optional[Interval] = None

    @property
    def ms(self) -> Optional[float]:
        return self.p50_ms if self.median_ms is None else self.median_ms


@dataclass(frozen=True)
class Summary:
    fastest_passing: List[Fastest]


@dataclass(frozen=True)
class Cpu:
    model: Optional[str] = None


@dataclass(frozen=True)
class Environment:
    cpu: Cpu = field(default_factory=Cpu)


@dataclass(frozen=True)
class Report:
    """A report as it reads back from its file."""
    schema_version: int
    results: List[Row]
    run_id: Optional[str] = None
    created_at: Optional[str] = None
    environment: Optional[Environment] = None
    summary: Optional[Summary] = None


def finite(value: Any) -> Any:
    """Plain JSON values without NaN/Infinity (which strict parsers reject): a non-finite float becomes null (an
    SQNR of null means the logits were identical: no noise at all), a typed result its dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return finite(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def encode(report: Any) -> str:
    """The one encoder: report.json's text, from the dict the harness builds or from a ``Report``."""
    return json.dumps(finite(report), indent=2, allow_nan=False) + '\n'


def decode(data: Any) -> Report:
    """The one decoder: parsed report.json as a ``Report``; a ValueError naming the key if it is not one."""
    if not isinstance(data, dict) or data.get('schema_version') not in READABLE_SCHEMAS:
        raise ValueError(f'no schema_version in {READABLE_SCHEMAS}')
    return _decode(Report, data, '')


def read_back(report: dict) -> Report:
    """A report built in memory as its file will read: NaN and Inf as null, then decoded."""
    return decode(finite(report))


def _decode(kind: Any, value: Any, where: str) -> Any:
    """``value`` as ``kind`` (a result class, Optional, List, Interval, float, int, bool or str)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else _decode(args[0], value, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f'{where or "the report"} is not an object')
        hints, given = typing.get_type_hints(kind), {}
        for f in dataclasses.fields(kind):
            if f.name in value:
                given[f.name] = _decode(hints[f.name], value[f.name], f'{where}.{f.name}' if where else f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f'{where or "the report"} has no {f.name}')
        return kind(**given)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f'{where} is not a list')
        return [_decode(args[0], v, f'{where}[{i}]') for i, v in enumerate(value)]
    if origin is tuple:  # Interval
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f'{where} is not an interval [low, high]')
        low, high = (_decode(float, v, where) for v in value)
        if low > high:
            raise ValueError(f'{where} is not an interval [low, high]')
        return low, high
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise ValueError(f'{where} is not a finite number: {str(value)[:20]!r}')
        return float(value)
    if kind is int and type(value) is not int:
        raise ValueError(f'{where} is not a whole number: {str(value)[:20]!r}')
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f'{where} is not true or false: {str(value)[:20]!r}')
    if kind is str and not isinstance(value, str):
        raise ValueError(f'{where} is not text: {str(value)[:20]!r}')
    return value


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # a whole number beyond any float
        return False
