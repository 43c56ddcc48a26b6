"""An engine's build record (``model.<precision>.plan.json``): what built it, from which graph, for which inputs.

TensorRT refuses (returns None for) an engine built by another TensorRT version or GPU, so loading an engine checks
its record first and says which build it was. Needs neither a GPU nor TensorRT.
"""
import json
from pathlib import Path

from alexnet_zoo.files import PathLike
from alexnet_zoo.manifest import sha256_file

RECORD_KEYS = (('engine', 'sha256'), ('engine', 'file'), ('tensorrt_version',), ('precision',), ('input', 'name'),
               ('gpu', 'name'), ('gpu', 'compute_capability'))


class EngineRecordError(ValueError):
    """An engine whose build record is missing, unreadable, or does not match the engine or this machine."""


def record_path(plan: PathLike) -> Path:
    """``model.int8.plan`` -> ``model.int8.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + '.json')


def read_record(plan: PathLike) -> dict:
    """The build record of ``plan``, checked against the engine file."""
    plan = Path(plan)
    if not plan.is_file():
        raise FileNotFoundError(f'engine not found: {plan}')
    path = record_path(plan)
    if not path.is_file():
        raise EngineRecordError(f'engine {plan.name} has no build record ({path.name}); rebuild it with export.trt')
    try:
        record = json.loads(path.read_text())
        for keys in RECORD_KEYS:
            value = record
            for key in keys:
                value = value[key]
    except (ValueError, KeyError, TypeError) as e:
        raise EngineRecordError(f'build record {path.name} is unreadable ({type(e).__name__}: {e})') from None
    if sha256_file(plan) != record['engine']['sha256']:
        raise EngineRecordError(f'engine {plan.name} does not match its build record {path.name} '
                                f'(sha256 differs); rebuild it with export.trt')
    return record


def check_record(record: dict, tensorrt_version: str, gpu_name: str, compute_capability: str) -> None:
    """An engine runs only on the TensorRT version and GPU that built it: say so in one line if this is not it."""
    built = (record['tensorrt_version'], record['gpu']['name'], record['gpu']['compute_capability'])
    here = (tensorrt_version, gpu_name, compute_capability)
    if built != here:
        raise EngineRecordError(
            f'engine {record["engine"]["file"]} was built with TensorRT {built[0]} on {built[1]} '
            f'(compute {built[2]}); this machine has TensorRT {here[0]} on {here[1]} (compute {here[2]}): '
            f'rebuild it here with python -m export.trt')
