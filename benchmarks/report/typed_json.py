"""Frozen dataclasses to plain JSON values and back, checked: the machinery under report.json's schema
(``schema.py``), which holds the classes and the report's own encoder and decoder.

A class's fields are the JSON keys, written in their order (``plain``); a field made by ``omit()`` is written only
where it has a value, and one made by ``on_read()`` may be None in memory but must be in what is read back.
``checked`` reads plain values as a class, refusing with a ValueError the first key that is missing, of the wrong
type, not finite, or not an interval, and ignoring keys it does not name (a later version's); ``typed`` builds new
values the same way but refuses those keys too (a figure the file would drop); ``updated`` is
``dataclasses.replace`` with each new value ``typed`` as its field.
"""
import dataclasses
import functools
import math
import typing
from dataclasses import field
from typing import Any, Dict


def omit() -> Any:
    """A field written only when it is not None."""
    return field(default=None, metadata={'omit': True})


def on_read() -> Any:
    """A field that is None until a run fills it in, and that a file read back must have."""
    return field(default=None, metadata={'required': True})


def plain(value: Any) -> Any:
    """Plain JSON values from typed ones (or a dict or list of them): the fields in their order, an ``omit()`` field
    only where it has a value, intervals as lists, and no NaN/Infinity (which strict parsers reject): a non-finite
    float becomes null (an SQNR of null means the logits were identical)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None or not f.metadata.get('omit')}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def checked(kind: Any, value: Any, where: str = '') -> Any:
    """Plain values as read from a file, as ``kind``; a ValueError naming the first key that is not one."""
    return _decode(kind, value, where, False)


def typed(kind: Any, value: Any, where: str = '') -> Any:
    """``value`` (plain values, or typed parts) as ``kind``, checked as a file is, and refused where it holds a key
    that ``kind`` does not name: how new values enter a report."""
    return _decode(kind, plain(value), where, True)


def updated(value: Any, **changes: Any) -> Any:
    """``dataclasses.replace``, each new value typed as its field (``typed``): how a row or a report is enriched."""
    hints = _hints(type(value))
    return dataclasses.replace(value, **{name: typed(hints[name], v, name) for name, v in changes.items()})


@functools.lru_cache(maxsize=None)
def _hints(kind: type) -> Dict[str, Any]:
    return typing.get_type_hints(kind)


def _decode(kind: Any, value: Any, where: str, building: bool) -> Any:
    """``value`` as ``kind`` (a class, Optional, List, Dict, Interval, float, int, bool, str or Any)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        return None if value is None else _decode(args[0], value, where, building)
    if dataclasses.is_dataclass(kind):
        return _decode_object(kind, value, where, building)
    if origin in (list, dict, tuple):
        return _decode_container(origin, args, value, where, building)
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


def _decode_object(kind: type, value: Any, where: str, building: bool) -> Any:
    """A class from a JSON object: every key it requires, each of the right type."""
    if not isinstance(value, dict):
        raise ValueError(f'{where or "the report"} is not an object')
    hints, given = _hints(kind), {}
    for f in dataclasses.fields(kind):
        if f.name in value:
            given[f.name] = _decode(hints[f.name], value[f.name], f'{where}.{f.name}' if where else f.name, building)
        elif (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
              or f.metadata.get('required') and not building):
            raise ValueError(f'{where or "the report"} has no {f.name}')
    unknown = [key for key in value if key not in given] if building else []
    if unknown:
        raise ValueError(f'{where or "the report"} has {unknown[0]}, which {kind.__name__} does not name')
    return kind(**given)


def _decode_container(origin: type, args: tuple, value: Any, where: str, building: bool) -> Any:
    """A List, a Dict of text keys, or an Interval (two numbers, low <= high)."""
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f'{where} is not a list')
        return [_decode(args[0], v, f'{where}[{i}]', building) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f'{where} is not an object')
        return {str(k): _decode(args[1], v, f'{where}.{k}', building) for k, v in value.items()}
    if not isinstance(value, list) or len(value) != 2:  # Interval
        raise ValueError(f'{where} is not an interval [low, high]')
    low, high = (_decode(float, v, where, building) for v in value)
    if low > high:
        raise ValueError(f'{where} is not an interval [low, high]')
    return low, high


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # a whole number beyond any float
        return False
