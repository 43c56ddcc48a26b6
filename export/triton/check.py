"""Triton's own server checks a model repository: ``python -m export.triton ... --check``.

Protobuf accepts configs that Triton refuses (a preferred batch above the max, dims that do not match, fields that
conflict), so the repository is loaded by Triton's model repository manager itself: the ``tritonserver`` binary
that PyTriton ships, in explicit model control with every model requested, auto-complete off, no endpoints.
Triton normalizes and validates each config before it looks for the model's backend library, and PyTriton's server
has only the Python backend (ONNX Runtime, OpenVINO and TensorRT ship in NVIDIA's container): a model whose config
is right ends in "unable to find backend library" for its own backend and nothing else. Any other error line is a
problem, and so is a subfolder Triton cannot take for a model (a half-written save's folder would be one).
"""
import os
import re
import subprocess
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from alexnet_zoo.cli import printable
from alexnet_zoo.files import PathLike

LOG_LINE = re.compile(r'^([IWE])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] "?(.*?)"?$')
FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
MISSING_BACKEND = re.compile(r"unable to find backend library for backend '([^']+)'")
# Error lines of a machine without a GPU, and the summary of the expected failures: not about the repository
ENVIRONMENT = re.compile(r'CUDA|Cuda|cuda|pinned memory|failed to load all models')
OPTIONS_TABLE = 'tritonserver.cc'  # the server's options, printed once every requested model was tried
QUIET_S = 0.5


@dataclass
class TritonCheck:
    """What Triton said of each model (its failure message, or 'READY') and every problem, one line each."""
    models: Dict[str, str] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    log: str = ''

    @property
    def passed(self) -> bool:
        return not self.problems


def tritonserver() -> Tuple[Path, Path]:
    """PyTriton's ``tritonserver`` binary and its backends folder; FileNotFoundError saying how to get them."""
    try:
        import pytriton
    except ImportError:
        raise FileNotFoundError('Triton\'s server binary is not installed: it comes with PyTriton (pip install '
                                '\'alexnet-zoo[serve]\', Linux x86-64 and arm64)') from None
    root = Path(pytriton.__file__).parent / 'tritonserver'
    if not (root / 'bin' / 'tritonserver').is_file():
        raise FileNotFoundError(f'no tritonserver binary in {root}/bin (a PyTriton without its server?)')
    return root / 'bin' / 'tritonserver', root / 'backends'


def with_own_libpython(ld_library_path: str) -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's library folder first: Triton's Python backend stub is linked to
    ``libpython3.X.so`` without a path to it (a pyenv or conda build differs from the system one it would load)."""
    libdir = sysconfig.get_config_var('LIBDIR')
    paths = [p for p in ld_library_path.split(':') if p]
    return ':'.join([libdir, *paths] if libdir and libdir not in paths else paths)


def check_repository(repository: PathLike, backends: Dict[str, str], timeout: float = 120) -> TritonCheck:
    """Triton's verdict on ``repository``, where ``backends`` maps each model we wrote to the Triton backend it
    needs ('onnxruntime', 'openvino', 'tensorrt')."""
    lines, tried_all, code = run_server(repository, timeout)
    check = judge(lines, backends)
    if tried_all is None:
        check.problems.append(f'tritonserver did not finish loading within {timeout:.0f} s (exit code {code})')
    return check


def server_footprint(empty_dir: PathLike, timeout: float = 60) -> int:
    """Peak resident bytes of Triton's server itself (an empty repository in ``empty_dir``), what a deployment
    needs before any model."""
    peak: List[int] = []
    run_server(empty_dir, timeout, peak)
    if not peak:
        raise RuntimeError('could not read tritonserver\'s memory')
    return peak[0]


def run_server(repository: PathLike, timeout: float, peak: Optional[List[int]] = None):
    """Start Triton's server on ``repository`` (every model requested), read its log until it has tried every
    model (its options table, then quiet), stop it. Returns its log lines, when it had tried them all (None: it
    never did) and its exit code; ``peak`` receives its peak resident bytes (VmHWM)."""
    binary, backend_dir = tritonserver()
    env = {**os.environ, 'LD_LIBRARY_PATH': with_own_libpython(os.environ.get('LD_LIBRARY_PATH', ''))}
    proc = subprocess.Popen([str(binary), f'--model-repository={Path(repository).resolve()}',
                             '--model-control-mode=explicit', '--load-model=*', '--disable-auto-complete-config',
                             '--exit-on-error=false', f'--backend-directory={backend_dir}', '--allow-http=false',
                             '--allow-grpc=false', '--allow-metrics=false'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline, tried_all = time.monotonic() + timeout, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if tried_all is None and any(OPTIONS_TABLE in line for line in lines):
                tried_all = time.monotonic()
            if tried_all is not None and time.monotonic() - tried_all > QUIET_S:
                break
    finally:
        if peak is not None:
            peak.extend(_vm_hwm(proc.pid))
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
    return lines, tried_all, proc.returncode


def _vm_hwm(pid: int) -> List[int]:
    try:
        with open(f'/proc/{pid}/status') as f:
            return [int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:')]
    except (OSError, ValueError, IndexError):
        return []


def judge(lines: List[str], backends: Dict[str, str]) -> TritonCheck:
    """Triton's log lines, judged: each model of ours must fail only for its own missing backend (or be ready)."""
    check = TritonCheck(log=''.join(lines))
    for line in lines:
        match = LOG_LINE.match(line.strip())
        if not match:
            continue
        level, _, message = match.groups()
        failed = FAILED_LOAD.search(message)
        if failed:
            name, reason = failed.groups()
            check.models[name] = reason
            missing = MISSING_BACKEND.search(reason)
            if name in backends and missing and missing.group(1) == backends[name]:
                continue
        elif 'successfully loaded' in message:
            check.models.setdefault(re.sub(r".*'([^']+)'.*", r'\1', message), 'READY')
            continue
        if level == 'E' and not ENVIRONMENT.search(message):
            check.problems.append(printable(message))
    for name in backends:
        if name not in check.models:
            check.problems.append(f'{name}: Triton never tried to load it')
    return check
