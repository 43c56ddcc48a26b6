"""Writers against being killed and against a full disk: nothing at a final path is ever half a file.

``make fuzz`` runs these (they are marked ``faults``; ``make test`` keeps the cheaper tests of the same promises
in tests/test_folders.py: a failure injected at every file move, a full disk simulated in-process).
``export.onnx``, ``alexnet_zoo.train`` and ``benchmarks`` are sent SIGKILL at random moments of their run, drawn
after the command's start-up (its imports), where a kill meets the work (ALEXNET_ZOO_KILL_MOMENTS moments each,
3 by default; ``make fuzz``: 20, fresh moments). After every kill, every file at a final path is complete and
valid (graphs pass the ONNX checker, JSON parses, safetensors load, a folder saved as a set matches its manifest);
after the next, uninterrupted run, no temporary file is left and the result is whole: a resumed training run ends
with the very weights and metrics of one never interrupted. Then each writer fills a small tmpfs (mounted in a
user namespace with ``unshare``): one line naming the path, exit 1, nothing at a final path, no temporary file.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet_zoo.manifest import MANIFEST, verify
from alexnet_zoo.samples import write_image_folder
from export.export_manifest import EXPORT_MANIFEST, check_export

pytestmark = [pytest.mark.faults, pytest.mark.slow]
MOMENTS = int(os.environ.get('ALEXNET_ZOO_KILL_MOMENTS', '3'))
SEED = os.environ.get('ALEXNET_ZOO_KILL_SEED', '0')  # `make fuzz` passes a fresh one and prints it
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '2'}
ENV.pop('ALEXNET_ZOO_DEBUG', None)
HIDDEN_KEPT = {'.lock'}  # the lock file of a folder saved as a set stays (empty), like git's index.lock does not


def command(module: str, *args) -> list:
    return [sys.executable, '-m', module, *map(str, args)]


def timed_run(argv: list) -> float:
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    return time.perf_counter() - started


def kill_after(argv: list, seconds: float) -> bool:
    """Start ``argv`` and SIGKILL it (and anything it started) after ``seconds``; True if it was killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def start_up(module: str) -> float:
    """Seconds ``python -m module --help`` takes: the imports, before a command can write anything."""
    return timed_run(command(module, '--help'))


def moments(name: str, duration: float, start: float) -> list:
    """MOMENTS kill times spread at random over the part of a ``duration`` seconds run after its first ``start``
    seconds (imports: a kill there tests nothing)."""
    assert start < duration, (name, start, duration)
    rng = random.Random(f'{SEED}-{name}')
    return sorted(start + rng.uniform(0.0, 1.0) * (duration - start) for _ in range(MOMENTS))


def check_files(folder: Path) -> list:
    """Assert every file at a final path below ``folder`` is complete and valid; return the hidden ones
    (temporaries, staging folders, locks) as paths relative to ``folder``."""
    hidden = []
    for path in sorted(folder.rglob('*')):
        relative = path.relative_to(folder)
        if any(part.startswith('.') for part in relative.parts):
            hidden.append(relative.as_posix())
            continue
        if not path.is_file():
            continue
        if path.suffix == '.onnx':
            onnx.checker.check_model(str(path))
        elif path.suffix == '.json':
            json.loads(path.read_text())
        elif path.suffix == '.safetensors':
            load_file(str(path))
        elif path.suffix in ('.pth', '.pt'):
            torch.load(path, map_location='cpu', weights_only=True)
        elif path.suffix == '.png':
            with Image.open(path) as im:
                im.verify()
        else:
            path.read_text()  # .md, .csv: whole UTF-8 text
    if (folder / MANIFEST).is_file() or (folder / '.staging' / MANIFEST).is_file():
        verify(folder)  # a folder saved as a set: the files its manifest lists (a staged save is finished first)
    return hidden


def leftovers(folder: Path) -> list:
    """Hidden files other than locks: what a run must not leave behind."""
    return [h for h in check_files(folder) if Path(h).name not in HIDDEN_KEPT]


def export_is_noticed_or_whole(folder: Path) -> str:
    """A graph folder after a kill: whole (export.json vouches for every graph) or a mix that readers refuse."""
    graphs = sorted(folder.glob('*.onnx'))
    if not graphs:
        return 'empty'
    try:
        check_export(graphs)
        return 'whole'
    except (ValueError, FileNotFoundError) as e:
        assert str(e) and '\n' not in str(e)
        return 'refused'


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_export_killed_at_random_moments(trained_checkpoint, tmp_path, fault_log):
    out = tmp_path / 'onnx'
    argv = command('export.onnx', '--checkpoint', trained_checkpoint, '--output-dir', out, '--precisions', 'fp32,int8')
    duration = timed_run(argv)
    assert export_is_noticed_or_whole(out) == 'whole' and not leftovers(out)
    states = []
    for t in moments('export', duration, start_up('export.onnx')):
        killed = kill_after(argv, t)
        check_files(out)
        states.append(export_is_noticed_or_whole(out) + ('' if killed else ' (finished)'))
    timed_run(argv)
    assert export_is_noticed_or_whole(out) == 'whole'
    assert not leftovers(out), leftovers(out)
    fault_log.append(f'export.onnx: {len(states)} kills over a {duration:.0f} s run; graph folder after each: '
                     f'{", ".join(states)}; next run whole, no temporary left')


def _weights_and_metrics(run: Path) -> tuple:
    metrics = json.loads((run / 'metrics.json').read_text())
    epochs = [{k: v for k, v in e.items() if k != 'seconds'} for e in metrics['epochs']]
    return load_file(str(run / 'last' / 'model.safetensors')), epochs, metrics.get('best_epoch')


def test_train_killed_at_random_moments_resumes_to_the_same_weights(tmp_path, fault_log):
    data = write_image_folder(tmp_path / 'data', ['astronaut', 'coffee'], 8, 2)
    settings = ['--data', data, '--epochs', 3, '--freeze-features', '--workers', 0, '--no-progress', '--seed', 5,
                '--batch-size', 8]
    reference = tmp_path / 'reference'
    duration = timed_run(command('alexnet_zoo.train', *settings, '--output', reference))
    run = tmp_path / 'run'

    def saved() -> int:
        return json.loads((run / MANIFEST).read_text())['epoch'] if (run / MANIFEST).is_file() else 0

    def argv():
        if saved():  # a saved epoch: go on from it, as a user would after a crash
            return command('alexnet_zoo.train', '--data', data, '--resume', run, '--workers', 0, '--no-progress')
        return command('alexnet_zoo.train', *settings, '--output', run)

    epochs_seen = []
    for t in moments('train', duration, start_up('alexnet_zoo.train')):
        if saved() == 3:  # a moment past the end let the run finish: the next kill meets a new one
            shutil.rmtree(run)
        kill_after(argv(), t)
        if run.exists():
            check_files(run)
        epochs_seen.append(saved())
    if saved() < 3:
        timed_run(argv())
    assert not leftovers(run), leftovers(run)
    weights, epochs, best = _weights_and_metrics(run)
    expected_weights, expected_epochs, expected_best = _weights_and_metrics(reference)
    assert epochs == expected_epochs and best == expected_best
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)  # bit-identical
    fault_log.append(f'train: {len(epochs_seen)} kills over a {duration:.0f} s run (epochs saved when killed: '
                     f'{epochs_seen}); resumed to weights and metrics bit-identical to an uninterrupted run')


def test_benchmark_killed_at_random_moments(trained_checkpoint, tmp_path, fault_log):
    report, graphs = tmp_path / 'report', tmp_path / 'onnx'
    argv = command('benchmarks', '--checkpoint', trained_checkpoint, '--onnx-dir', graphs, '--output-dir', report,
                   '--quick', '--backends', 'torch,onnxruntime', '--precisions', 'fp32', '--no-progress')
    shutil.rmtree(graphs, ignore_errors=True)
    duration = timed_run(argv)
    shutil.rmtree(graphs)  # the kills meet the export into --onnx-dir too
    states = []
    for t in moments('benchmarks', duration, start_up('benchmarks')):
        kill_after(argv, t)
        check_files(report) if report.exists() else None
        check_files(graphs) if graphs.exists() else None
        states.append(export_is_noticed_or_whole(graphs) if graphs.exists() else 'no graphs')
    if export_is_noticed_or_whole(graphs) == 'refused':  # an export killed between its graph and export.json
        run = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=1200)
        assert run.returncode == 1 and EXPORT_MANIFEST in run.stderr and run.stderr.count('\n') == 1, run.stderr
        shutil.rmtree(graphs)
    timed_run(argv)
    assert not leftovers(report) and not leftovers(graphs), (leftovers(report), leftovers(graphs))
    assert json.loads((report / 'report.json').read_text())['run_id'] == json.loads(
        (report / MANIFEST).read_text())['run_id']
    fault_log.append(f'benchmarks: {len(states)} kills over a {duration:.0f} s run; graph folder after each: '
                     f'{", ".join(states)}; report folder whole after each; next run whole')


def test_triton_repository_killed_at_random_moments(exported_graphs, tmp_path, fault_log):
    """export.triton.repository killed at any moment leaves a repository Triton's own server takes as it is: nothing but model
    folders inside it (the save stages beside it), each config accepted (docs/serving.md)."""
    from export.triton.check import check_repository
    pytest.importorskip('pytriton', reason='Triton\'s server binary comes with PyTriton (the serve extra)')
    _, graphs = exported_graphs
    repo = tmp_path / 'repo'
    argv = command('export.triton.repository', '--onnx-dir', graphs, '--repository', repo, '--backends', 'onnxruntime,openvino',
                   '--precisions', 'fp32,int8')
    duration = timed_run(argv)
    states = []
    for i, t in enumerate(moments('export.triton.repository', duration, start_up('export.triton.repository'))):
        if i % 2:  # every other kill meets a repository with other models in it: the rewrite is killed
            subprocess.run(command('export.triton.repository', '--onnx-dir', graphs, '--repository', repo, '--backends',
                                   'openvino', '--precisions', 'int8'), capture_output=True, env=ENV, check=True)
        killed = kill_after(argv, t)
        check_files(repo)
        inside = sorted(p.name for p in repo.iterdir() if p.is_dir())
        models = (json.loads((repo / MANIFEST).read_text())['models'])
        assert inside == sorted(models), (inside, models)  # no staging folder, no half-written model
        verdict = check_repository(repo, {name: m['backend'] for name, m in models.items()})
        assert verdict.passed, verdict.problems
        states.append(f'{len(models)} model(s) accepted' + ('' if killed else ' (finished)'))
    timed_run(argv)
    assert not leftovers(repo) and not (tmp_path / '.repo.staging').exists()
    fault_log.append(f'export.triton.repository: {len(states)} kills over a {duration:.1f} s run; Triton\'s server after each: '
                     f'{", ".join(states)}')


# ------------------------------------------------------------------------------------------------ full disk
def _in_small_tmpfs(size: str, mount: Path, argv: list) -> tuple:
    """Run ``argv`` with ``mount`` a fresh tmpfs of ``size`` (in a private mount namespace, so nothing outside
    sees it); returns the exit code, stderr, and every path left below ``mount`` (listed before it goes)."""
    if not shutil.which('unshare'):
        pytest.skip('needs unshare (util-linux) to mount a small tmpfs')
    probe = subprocess.run(['unshare', '-rm', 'true'], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f'user and mount namespaces are not allowed here ({probe.stderr.strip()[:120]})')
    mount.mkdir()
    listing = mount.with_suffix('.listing')
    script = (f'mount -t tmpfs -o size={size} tmpfs "$1" || exit 99; shift; "$@"; rc=$?; '
              f'find "{mount}" -mindepth 1 -printf "%P\\n" > "{listing}"; exit $rc')
    run = subprocess.run(['unshare', '-rm', 'sh', '-c', script, 'sh', str(mount), *map(str, argv)],
                         capture_output=True, text=True, env=ENV, timeout=1200)
    if run.returncode == 99:
        pytest.skip(f'cannot mount a tmpfs here ({run.stderr.strip()[:120]})')
    return run.returncode, run.stderr, sorted(filter(None, listing.read_text().splitlines()))


def _one_line_naming(stderr: str, path: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and 'no space left on device' in lines[0] and str(path) in lines[0], stderr[-1500:]
    assert 'Traceback' not in stderr


def test_disk_full(trained_checkpoint, exported_graphs, tmp_path, fault_log):
    """export, train and benchmark writing into a tmpfs too small for their files."""
    mount = tmp_path / 'small'
    out = mount / 'onnx'
    code, stderr, left = _in_small_tmpfs('48m', mount, command(
        'export.onnx', '--checkpoint', trained_checkpoint, '--output-dir', out, '--precisions', 'fp32'))
    assert code == 1, stderr[-1500:]
    _one_line_naming(stderr, out / 'model.onnx')
    assert left == ['onnx'], left  # the folder it made, nothing in it

    mount = tmp_path / 'small-run'
    run = mount / 'run'
    data = write_image_folder(tmp_path / 'data', ['astronaut', 'coffee'], 4, 2)
    code, stderr, left = _in_small_tmpfs('96m', mount, command(
        'alexnet_zoo.train', '--data', data, '--output', run, '--epochs', 1, '--freeze-features', '--workers', 0,
        '--no-progress'))
    assert code == 1, stderr[-1500:]
    _one_line_naming(stderr, run)
    assert left in (['run', 'run/.lock'], ['run']), left

    _, graphs = exported_graphs
    mount = tmp_path / 'small-report'
    report = mount / 'report'
    code, stderr, left = _in_small_tmpfs('64k', mount, command(
        'benchmarks', '--checkpoint', trained_checkpoint, '--onnx-dir', graphs, '--output-dir', report, '--quick',
        '--backends', 'torch,onnxruntime', '--precisions', 'fp32', '--no-progress'))
    assert code == 1, stderr[-1500:]
    _one_line_naming(stderr, report)
    assert left in (['report', 'report/.lock'], ['report']), left
    fault_log.append('disk full: export.onnx (48 MB tmpfs), train (96 MB), benchmarks (64 KB): one line naming '
                     'the path, exit 1, nothing at a final path, no temporary file')
