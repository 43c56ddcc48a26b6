"""A KServe ``InferenceService`` for a Triton model repository (``python -m export.triton ... --kserve``): what a
user who outgrows one machine hands to a cluster.

KServe's Triton runtime (model format ``triton``, protocol v2) serves a repository from a storage URI (``s3://``,
``gs://``, ``pvc://``, ...): the user's, or a placeholder that says to replace it. The requests come from the
repository's measured footprint: Triton's own server (PyTriton's binary, on an empty repository), each runtime
library its Triton backends wrap (ONNX Runtime, OpenVINO) once, and each model loaded by that runtime and run once
at its max batch in a process of its own (the peak resident memory each adds), summed, plus a quarter; CPU from
the cores the configs were written for. Threads follow the cores requested
(``OMP_NUM_THREADS``, as KServe's Triton examples set it, so the runtimes do not start one thread per node core).
TensorRT models ask for one GPU (``nvidia.com/gpu``).
"""
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

PLACEHOLDER = 's3://REPLACE-WITH-YOUR-BUCKET/path/to/this/repository'
TRITON_BASE_BYTES = 512 << 20  # Triton's server, where its binary is not here to measure
HEADROOM = 1.25  # requests at the measured peak plus a quarter: allocator slack, concurrent batches
# One model's peak resident memory, loaded and run once at its max batch, in a fresh process (printed in bytes)
MEASURE = '''
import sys, numpy as np
path, backend, batch, shape = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(d) for d in sys.argv[4].split(",")]
def peak():  # VmHWM: this process's own high-water mark (getrusage's ru_maxrss starts from the parent's)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
start = peak()
if backend == "onnxruntime":
    import onnxruntime as ort
    loaded = peak(); session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {session.get_inputs()[0].name: x})
else:
    import openvino as ov
    core = ov.Core(); loaded = peak(); compiled = core.compile_model(path, "CPU")
    run = lambda x: compiled.create_infer_request().infer({0: x})
run(np.zeros([batch, *shape], np.float32))
print(loaded - start, peak() - loaded)
'''


@dataclass
class KServe:
    """What ``--kserve`` was given: the storage URI the repository will live at, the cores to request."""
    storage_uri: Optional[str] = None
    cpus: int = 2


class Served(NamedTuple):
    """One model of the repository, as its footprint is measured: its file, Triton backend, max batch, input dims."""
    file: Path
    backend: str
    max_batch: int
    input_dims: Sequence[int]


def manifest_text(name: str, models: Dict[str, Served], settings: KServe) -> str:
    """kserve.yaml for a repository of ``models``, every footprint measured here."""
    from export.triton.check import server_footprint
    footprints: Dict[str, int] = {}
    gpus = 0
    for model, served in models.items():
        if served.backend == 'tensorrt':  # the engine lives in GPU memory; its host copy is the file
            gpus, footprints[model] = 1, served.file.stat().st_size
            continue
        library, size = model_footprint(served.file, served.backend, served.max_batch, served.input_dims)
        footprints[f'{served.backend} runtime'] = max(footprints.get(f'{served.backend} runtime', 0), library)
        footprints[model] = size
    try:
        with tempfile.TemporaryDirectory(prefix='alexnet-zoo-empty-repository-') as empty:
            triton = server_footprint(empty)
    except (FileNotFoundError, RuntimeError):  # no PyTriton here: Triton's own share estimated
        triton = TRITON_BASE_BYTES
    return to_yaml(inference_service(name, footprints, settings.cpus, gpus, settings.storage_uri, triton))


def dns_label(name: str) -> str:
    """A Kubernetes resource name (DNS-1035 label) from a model name: lower case, '-' for anything else."""
    label = re.sub(r'[^a-z0-9-]+', '-', name.lower()).strip('-')
    label = label if label[:1].isalpha() else f'm-{label}'
    return label[:63].rstrip('-')


def model_footprint(model_file: Path, backend: str, max_batch: int, input_dims) -> Tuple[int, int]:
    """Peak resident bytes that ``backend``'s runtime library, then loading ``model_file`` in it and running it
    once at ``max_batch``, add to a fresh process: (library, model)."""
    proc = subprocess.run([sys.executable, '-c', MEASURE, str(model_file), backend, str(max_batch),
                           ','.join(map(str, input_dims))], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f'measuring {model_file}: {(proc.stderr.strip().splitlines() or ["failed"])[-1]}')
    library, model = proc.stdout.strip().splitlines()[-1].split()
    return int(library), int(model)


def inference_service(name: str, footprints: Dict[str, int], cpus: int, gpus: int = 0,
                      storage_uri: Optional[str] = None, triton_bytes: int = TRITON_BASE_BYTES) -> dict:
    """The manifest (a dict, as ``kubectl apply`` reads it in YAML) for a repository whose models and runtime
    libraries need ``footprints`` bytes each, on a server of ``triton_bytes``."""
    memory_mi = int(HEADROOM * (triton_bytes + sum(footprints.values())) / 2 ** 20) + 1
    requests = {'cpu': str(cpus), 'memory': f'{memory_mi}Mi'}
    limits = dict(requests)
    if gpus:
        limits['nvidia.com/gpu'] = requests['nvidia.com/gpu'] = str(gpus)
    about = {'footprint_mib': {m: round(b / 2 ** 20, 1) for m, b in footprints.items()},
             'triton_mib': round(triton_bytes / 2 ** 20, 1)}
    return {
        'apiVersion': 'serving.kserve.io/v1beta1',
        'kind': 'InferenceService',
        'metadata': {'name': dns_label(name),
                     'annotations': {'alexnet-zoo/repository': json.dumps(about, sort_keys=True)}},
        'spec': {'predictor': {'model': {
            'modelFormat': {'name': 'triton'},
            'protocolVersion': 'v2',
            'storageUri': storage_uri or PLACEHOLDER,
            'env': [{'name': 'OMP_NUM_THREADS', 'value': str(cpus)}],
            'resources': {'requests': requests, 'limits': limits},
        }}},
    }


def to_yaml(manifest: dict) -> str:
    import yaml
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
