"""The command-line conventions the docs promise and no test checked: Ctrl-C, a closed pipe,
``ALEXNET_ZOO_DEBUG``, control characters in error lines, ``ALEXNET_ZOO_REQUIRE_GPU``.

In-process through ``run_cli`` where the exit code is the promise; a real process only where the promise is about
one (signals, pipes, tracebacks).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet_zoo.cli import UsageError, run_cli
from test_promises import REPO, one_error_line

ENV = {k: v for k, v in os.environ.items() if k not in ('ALEXNET_ZOO_DEBUG', 'ALEXNET_ZOO_REQUIRE_GPU')}

pytest_plugins = ['pytester']


# ------------------------------------------------------------------------------------------ Ctrl-C and pipes


def test_ctrl_c_is_exit_130_and_one_line(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_:
        run_cli(interrupted, [])
    captured = capsys.readouterr()
    assert exit_.value.code == 130 and captured.out == ''
    assert one_error_line(captured.err) == 'error: interrupted'


@pytest.mark.slow  # a real process: the promise is about a signal
def test_ctrl_c_in_a_running_command(tmp_path):
    """SIGINT to ``python -m alexnet_zoo.samples --write-folder`` once it is writing: exit 130, one line."""
    out = tmp_path / 'photos'
    # SIGINT as a terminal delivers it: a shell starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored, so a suite started in the background would wait here for nothing. A small launcher
    # restores it and execs the command (the default survives exec), rather than a preexec_fn: Python code run
    # between fork and exec is unsafe in a process with threads, as a test process has (runtimes' pools)
    command = [sys.executable, '-m', 'alexnet_zoo.samples', '--write-folder', str(out), '--train-per-class', '10000',
               '--size', '16']
    launcher = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                'os.execv(sys.argv[1], sys.argv[1:])')
    proc = subprocess.Popen([sys.executable, '-c', launcher, *command], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any((out / 'train').glob('*/*.jpg')) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, 'the command ended before it could be interrupted'
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and stdout == ''
    assert one_error_line(stderr) == 'error: interrupted'


def _closed_pipe_run(args, buffered: bool) -> subprocess.CompletedProcess:
    """``python -m ARGS | head -0``: stdout a pipe whose reader is gone before anything is written."""
    env = dict(ENV)
    env.pop('PYTHONUNBUFFERED', None)
    if not buffered:
        env['PYTHONUNBUFFERED'] = '1'
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.slow  # a real process: the promise is about a pipe
@pytest.mark.parametrize('buffered', [True, False])  # block-buffered: the output meets the pipe only at the end
def test_closed_pipe_is_quiet_exit_1(buffered):
    """``python -m alexnet_zoo.samples | head -0``: no traceback and no "Exception ignored" message, exit 1."""
    proc = _closed_pipe_run(['alexnet_zoo.samples'], buffered)
    assert (proc.returncode, proc.stderr) == (1, '')


def test_stats_on_a_closed_pipe_is_quiet_exit_1(monkeypatch, capsys):
    """``python -m alexnet_zoo.stats | head -0`` goes through run_cli too (run as ``__main__`` in-process, its first
    line meeting a pipe whose reader is gone, before any model is made)."""
    import runpy
    monkeypatch.delitem(sys.modules, 'alexnet_zoo.stats', raising=False)  # run afresh, as ``python -m`` does
    read, write = os.pipe()
    os.close(read)
    with open(write, 'w', buffering=1) as closed:
        monkeypatch.setattr(sys, 'stdout', closed)
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module('alexnet_zoo.stats', run_name='__main__')
        monkeypatch.undo()
    assert exit_.value.code == 1 and capsys.readouterr().err == ''


# --------------------------------------------------------------------------------- ALEXNET_ZOO_DEBUG, escapes


@pytest.mark.slow  # a real process: Python's own traceback
def test_debug_shows_the_traceback_of_a_users_mistake(tmp_path, monkeypatch, capsys):
    """A user's mistake is one line; with ALEXNET_ZOO_DEBUG=1 the exception itself comes out, traceback and
    all (in-process: raised through run_cli; in a process: Python's traceback on stderr)."""
    from alexnet_zoo import samples
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    argv = ['--write-folder', str(blocker / 'photos')]
    monkeypatch.delenv('ALEXNET_ZOO_DEBUG', raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(samples.main, argv)
    assert exit_.value.code == 1
    assert one_error_line(capsys.readouterr().err).startswith('error: output directory not writable: ')

    monkeypatch.setenv('ALEXNET_ZOO_DEBUG', '1')
    with pytest.raises(PermissionError, match='output directory not writable'):
        run_cli(samples.main, argv)

    def usage_mistake(argv):
        raise UsageError('unknown model: alexnet_xl')
    with pytest.raises(UsageError, match='unknown model'):  # a usage mistake too (exit 2 without the variable)
        run_cli(usage_mistake, [])

    proc = subprocess.run([sys.executable, '-m', 'alexnet_zoo.samples', *argv], cwd=REPO, capture_output=True,
                          text=True, env={**ENV, 'ALEXNET_ZOO_DEBUG': '1'}, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith('Traceback (most recent call last):')
    assert 'ensure_writable_dir' in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith('PermissionError: output directory not writable: ')
    assert not (blocker / 'photos').exists()


HOSTILE = 'in\x1b[31mred\rback\ttab'  # a terminal escape, a carriage return, a tab
ESCAPED = r'in\x1b[31mred\rback\ttab'


@pytest.mark.parametrize('command, argv, code', [
    ('benchmarks.crosscheck', ['--onnx', '{tmp}/' + HOSTILE + '.onnx'], 1),  # a file's name, from the command line
    ('alexnet_zoo.samples', ['--write-folder', '{tmp}/a-file/' + HOSTILE], 1),  # a folder that cannot be made
    ('alexnet_zoo.samples', [HOSTILE], 2),  # argparse's own message: an unrecognized argument
])
def test_control_characters_are_escaped_in_the_error_line(command, argv, code, tmp_path, capsys, monkeypatch):
    """Every control character of a name (not only newlines) is shown escaped, the whole name in one line."""
    import importlib
    monkeypatch.delenv('ALEXNET_ZOO_DEBUG', raising=False)
    (tmp_path / 'a-file').write_text('')
    main = importlib.import_module(command).main
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [a.replace('{tmp}', str(tmp_path)) for a in argv])
    line = one_error_line(capsys.readouterr().err)
    assert exit_.value.code == code and ESCAPED in line, line


@pytest.mark.parametrize('command, argv, code', [
    ('export.onnx', ['--output-dir', '{tmp}/out'], 1),
    ('benchmarks.__main__', ['--output-dir', '{tmp}/out'], 1),
    ('alexnet_zoo.train', ['--data', '{tmp}/data', '--output', '{tmp}/out'], 2),  # a usage error there, before the data
])
def test_an_unknown_model_is_one_line_naming_close_ones(command, argv, code, tmp_path, capsys, monkeypatch):
    """Every command that takes --model refuses a typo of any timm name alike: one line naming the close names,
    its exit code, nothing written."""
    import importlib
    monkeypatch.delenv('ALEXNET_ZOO_DEBUG', raising=False)
    main = importlib.import_module(command).main
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [a.replace('{tmp}', str(tmp_path)) for a in argv] + ['--model', 'resnet19'])
    line = one_error_line(capsys.readouterr().err)
    assert exit_.value.code == code and line.startswith("error: unknown model: 'resnet19' (did you mean resnet18, ")
    assert "timm.list_models('resnet*')" in line and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- ALEXNET_ZOO_REQUIRE_GPU


GPU_TESTS = '''
import pytest

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip('no GPU here')

@pytest.mark.tensorrt
def test_needs_tensorrt():
    pytest.skip('TensorRT is not installed')

@pytest.mark.gpu
def test_runs_on_a_gpu():
    pass

def test_skips_for_another_reason():
    pytest.skip('not a GPU test')
'''


@pytest.mark.parametrize('required', [False, True])
def test_require_gpu_turns_a_skipped_gpu_test_into_a_failure(required, pytester, monkeypatch):
    """The project's conftest hook: under ALEXNET_ZOO_REQUIRE_GPU (``make test-gpu``) a gpu or tensorrt test that
    skips fails, naming the skip's reason; other skips and passing GPU tests are untouched."""
    pytester.makeconftest((Path(__file__).with_name('conftest.py')).read_text())
    pytester.makeini('[pytest]\nmarkers =\n    gpu: needs a GPU\n    tensorrt: needs TensorRT\n')
    pytester.makepyfile(test_gpu=GPU_TESTS)
    if required:
        monkeypatch.setenv('ALEXNET_ZOO_REQUIRE_GPU', '1')
    else:
        monkeypatch.delenv('ALEXNET_ZOO_REQUIRE_GPU', raising=False)
    result = pytester.runpytest('-p', 'no:cacheprovider', '-rfs')
    if required:
        result.assert_outcomes(passed=1, failed=2, skipped=1)
        result.stdout.fnmatch_lines(['*_ test_needs_a_gpu _*', 'a GPU test skipped under make test-gpu: *no GPU here',
                                     '*_ test_needs_tensorrt _*',
                                     'a GPU test skipped under make test-gpu: *TensorRT is not installed'])
    else:
        result.assert_outcomes(passed=1, skipped=3)
