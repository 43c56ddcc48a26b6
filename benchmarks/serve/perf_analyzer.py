"""Triton's ``perf_analyzer`` against the served model: the load generator Triton users trust and read.

It is on no package index as a binary any more (``perf-analyzer`` 0.1.0 is an empty placeholder, and tritonclient
stopped carrying it after 2.48), so ``python -m benchmarks.serve.perf_analyzer --install DIR`` (``make setup``) takes
it from tritonclient 2.48.0's manylinux wheel, with the two libraries it links that a CPU machine lacks:
``libb64.so.0d`` (Debian's libb64-0d, unpacked without root) and ``libcudart.so.12`` (pip's
nvidia-cuda-runtime-cu12; perf_analyzer links it even when no GPU is used). ``DIR/perf_analyzer`` is a wrapper
that sets ``LD_LIBRARY_PATH``. Where any step fails, ``DIR/not-installed.txt`` records why (``unavailable()`` says
it), and serving measures with its own closed loop instead.

``measure`` runs one concurrency level over HTTP or gRPC: perf_analyzer's own stable measurement windows, client
latency percentiles, throughput, and Triton's server-side queue and compute times (from its statistics API).
"""
import csv
import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from alexnet_zoo.cli import ArgumentParser, first_line, run_cli
from alexnet_zoo.files import write_text_atomic

WHEEL = 'tritonclient==2.48.0'  # the last tritonclient whose manylinux wheel carries perf_analyzer
BINARY = 'tritonclient-2.48.0.data/data/bin/perf_analyzer'
ENV_VAR = 'ALEXNET_ZOO_PERF_ANALYZER'
# perf_analyzer's words for a window too short: none of its requests finished, or its trials never agreed
TOO_SHORT = ('No valid requests recorded within time interval', 'Failed to obtain stable measurement')
REASON_FILE = 'not-installed.txt'  # in the install folder: why --install failed, one line (removed once it works)
INSTALL_TIMEOUT_S = 300  # each download: a machine without the archives gives up, and serves without perf_analyzer
TOKEN_HEADER = {'http': 'triton-access-token', 'grpc': 'triton-grpc-protocol-triton-access-token'}
US = ('Client Send', 'Network+Server Send/Recv', 'Server Queue', 'Server Compute Input', 'Server Compute Infer',
      'Server Compute Output', 'Client Recv', 'p50 latency', 'p90 latency', 'p95 latency', 'p99 latency',
      'Avg latency')


def install_dir() -> Path:
    """Where ``make setup`` installs perf_analyzer: beside the interpreter."""
    return Path(sys.prefix) / 'perf-analyzer'


def recorded_reason(folder: Optional[Path] = None) -> Optional[str]:
    """Why ``--install`` could not install perf_analyzer into ``folder`` (``REASON_FILE``, written where it failed),
    or None where it did not record a failure."""
    path = (folder or install_dir()) / REASON_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def find() -> Optional[Path]:
    """perf_analyzer: ``$ALEXNET_ZOO_PERF_ANALYZER``, else the one ``make setup`` installed beside the interpreter,
    else one on the PATH."""
    for candidate in (os.environ.get(ENV_VAR), install_dir() / 'perf_analyzer',
                      shutil.which('perf_analyzer')):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def unavailable() -> Optional[str]:
    """Why perf_analyzer cannot run here, or None."""
    binary = find()
    recorded = recorded_reason()
    if binary is None and recorded:
        return f'make setup could not install perf_analyzer: {recorded}'
    if binary is None:
        return (f'perf_analyzer is not installed (python -m benchmarks.serve.perf_analyzer --install '
                f'{install_dir()}, which make setup runs)')
    proc = subprocess.run([str(binary), '--version'], capture_output=True, text=True, timeout=60)
    if 'Perf Analyzer Version' not in proc.stdout + proc.stderr:  # it prints its version, then exits 1
        return f'perf_analyzer does not run here: {first_line(RuntimeError(proc.stderr or proc.stdout), 200)}'
    return None


def install(folder: Path) -> Path:
    """perf_analyzer and the libraries it links into ``folder``; returns the wrapper to run."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-perf-analyzer-') as work:
        work_dir = Path(work)
        pip = [sys.executable, '-m', 'pip', 'download', '--no-deps', '-q', '-d', work]
        subprocess.run([*pip, WHEEL], check=True, timeout=INSTALL_TIMEOUT_S)
        subprocess.run([*pip, 'nvidia-cuda-runtime-cu12'], check=True, timeout=INSTALL_TIMEOUT_S)
        with zipfile.ZipFile(next(work_dir.glob('tritonclient-*.whl'))) as wheel:
            (folder / 'perf_analyzer.bin').write_bytes(wheel.read(BINARY))
        with zipfile.ZipFile(next(work_dir.glob('nvidia_cuda_runtime_cu12-*.whl'))) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith('/libcudart.so.12'))
            (folder / 'libcudart.so.12').write_bytes(wheel.read(name))
        subprocess.run(['apt-get', 'download', 'libb64-0d'], cwd=work, check=True, capture_output=True,
                       timeout=INSTALL_TIMEOUT_S)
        subprocess.run(['dpkg-deb', '-x', next(glob.iglob(f'{work}/libb64-0d_*.deb')), f'{work}/deb'], check=True,
                       timeout=INSTALL_TIMEOUT_S)
        library = next(Path(work, 'deb').rglob('libb64.so.0d'))
        shutil.copyfile(library.resolve(), folder / 'libb64.so.0d')
    (folder / 'perf_analyzer.bin').chmod(0o755)
    wrapper = folder / 'perf_analyzer'
    wrapper.write_text('#!/bin/sh\n# perf_analyzer 2.48.0 from tritonclient\'s wheel, with the libraries it links\n'
                       'here="$(dirname "$0")"\nLD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" '
                       'exec "$here/perf_analyzer.bin" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def measure(model: str, url: str, protocol: str, concurrency: int, input_shape: Sequence[int],
            window_ms: int = 1000, access_token: Optional[str] = None, timeout: float = 300) -> dict:
    """One concurrency level measured by perf_analyzer: throughput, latency percentiles and server times (ms);
    ``{'error': ...}`` when it fails (a server gone, no stable window). A window in which no request finished, or
    trials that never agreed within 30 % (a slow first batch, a busy machine), is tried once more, four times as
    long, as perf_analyzer's message advises."""
    binary = find()
    if binary is None:
        return {'error': unavailable()}
    figures = {}
    for window in (window_ms, 4 * window_ms):
        figures = _run(binary, model, url, protocol, concurrency, input_shape, window, access_token, timeout)
        if not any(words in figures.get('error', '') for words in TOO_SHORT):
            break
    return figures


def _run(binary: Path, model: str, url: str, protocol: str, concurrency: int, input_shape: Sequence[int],
         window_ms: int, access_token: Optional[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix='alexnet-zoo-pa-') as work:
        report = Path(work) / 'pa.csv'
        argv = [str(binary), '-m', model, '-u', url, '-i', protocol, '--concurrency-range', f'{concurrency}',
                '--shape', f'input:{",".join(map(str, input_shape))}', '--measurement-interval', str(window_ms),
                '--max-trials', '10', '--stability-percentage', '30', '-f', str(report)]
        if access_token:  # PyTriton's server gives its model-config and statistics APIs to its token's holder only
            argv += ['-H', f'{TOKEN_HEADER[protocol]}:{access_token}']
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {'error': f'perf_analyzer did not finish within {timeout:.0f} s'}
        if proc.returncode != 0 or not report.is_file():
            lines = [line.strip() for line in (proc.stdout + '\n' + proc.stderr).splitlines() if line.strip()]
            told = [line for line in lines if 'fail' in line.lower() or 'error' in line.lower()] or lines
            return {'error': f'perf_analyzer failed (exit {proc.returncode}): '
                             f'{first_line(RuntimeError(told[-1] if told else "no output"), 300)}'}
        return parse_csv(report.read_text())


def parse_csv(text: str) -> dict:
    """perf_analyzer's CSV report (times in µs) as ms, throughput in inferences per second."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return {'error': 'perf_analyzer wrote no measurement'}
    row = rows[-1]
    figures = {key.lower().replace(' latency', '').replace(' ', '_').replace('+', '_').replace('/', '_'): float(row[key]) / 1e3
               for key in US if key in row}
    return {'concurrency': int(row['Concurrency']), 'throughput_ips': float(row['Inferences/Second']),
            'latency_ms': {q: figures.pop(q) for q in ('p50', 'p90', 'p95', 'p99', 'avg') if q in figures},
            'server_ms': {k[len('server_'):]: v for k, v in figures.items() if k.startswith('server_')},
            'client_ms': {k: v for k, v in figures.items() if not k.startswith('server_')}}


def main(argv: Sequence[str] = None) -> int:
    parser = ArgumentParser(prog='python -m benchmarks.serve.perf_analyzer', description='install Triton\'s perf_analyzer')
    parser.add_argument('--install', required=True, metavar='DIR', help='where to put perf_analyzer and its libraries; '
                                                                         f'where it fails, DIR/{REASON_FILE} says why')
    args = parser.parse_args(argv)
    folder = Path(args.install)
    try:
        wrapper = install(folder)
        os.environ[ENV_VAR] = str(wrapper)
        reason = unavailable()
    except (subprocess.SubprocessError, StopIteration, KeyError, zipfile.BadZipFile, OSError) as e:  # refused or odd
        reason = f'could not install perf_analyzer: {first_line(e, 300) or type(e).__name__}'
    if reason:
        record_reason(folder, reason)
        raise RuntimeError(f'{reason} (recorded in {folder / REASON_FILE})')
    (folder / REASON_FILE).unlink(missing_ok=True)
    print(f'installed {wrapper}')
    return 0


def record_reason(folder: Path, reason: str) -> None:
    """``reason`` in ``folder/REASON_FILE``, written beside and renamed into place (never half a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / REASON_FILE, reason.replace('\n', ' ') + '\n')


if __name__ == '__main__':
    run_cli(main)
