"""Shared fixtures: a briefly trained alexnet_bn, so that parity gates are meaningful (random weights give
logit margins too small to judge), and its checkpoint in timm's Hugging Face layout.

The fixture's alexnet_bn takes 67 x 67 images (``img_size`` sizes its first FC layer for the 1 x 1 grid conv 5
pools to, the data config says 67): the same layers and the same code paths as at 227 x 227, at a thirteenth of
the arithmetic (0.18 GFLOPs) and 40 % of the weights (25.7 M), so that the suite's exports and benchmarks fit its
time budget. The full-size network is exported in test_export_onnx.py (``test_export_the_other_alexnets``) and by ``make report``.

The trained weights are cached between runs in pytest's cache folder (``.pytest_cache``), under a key made of
everything that decides them (torch and timm versions, the model, data and training code), behind a file lock
so that parallel sessions train once; ``pytest --cache-clear`` retrains.
"""
import os


def _pin_worker() -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``), each worker process gets its own share of the CPUs, before
    torch, ONNX Runtime or OpenVINO start a thread pool: every runtime sizes its pool from the CPUs a process may use
    (``benchmarks.measure.environment.cpu_threads``), so two workers never run four spinning pools on two cores. The
    processes a test starts inherit the share."""
    worker, count = os.environ.get('PYTEST_XDIST_WORKER'), os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if not worker or not count or not hasattr(os, 'sched_setaffinity'):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker.removeprefix('gw')) % int(count)::int(count)] or cpus
    os.sched_setaffinity(0, share)
    os.environ['OMP_NUM_THREADS'] = str(len(share))


_pin_worker()

import hashlib  # noqa: E402
import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from hypothesis import HealthCheck, settings
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file


from alexnet_zoo.checkpoint import LoadedModel, save_checkpoint_dir
from alexnet_zoo.data import random_crops, seeded
from alexnet_zoo.samples import PHOTOGRAPHS, photographs
from export.onnx import export_onnx

REPO = Path(__file__).resolve().parents[1]

# Property-based tests (tests/test_fuzz.py): the suite runs a fixed, deterministic subset of each property; `make
# fuzz` runs the same properties with --hypothesis-profile=fuzz (1,000 random examples each).
_PROPERTIES = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                         HealthCheck.data_too_large])
settings.register_profile('ci', derandomize=True, max_examples=25, database=None, **_PROPERTIES)
settings.register_profile('fuzz', max_examples=1000, **_PROPERTIES)
settings.load_profile('ci')


def fit_photographs(
        model: torch.nn.Module,
        steps: int = 60,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
) -> torch.nn.Module:
    """Teach ``model`` to tell the photographs apart (class = photograph) on random crops, in place.

    Parity figures mean little on random weights (top-1/top-2 logit margins are tiny); a few dozen steps give
    confident, trained-like logits. Real training is ``alexnet_zoo.train``.
    """
    images = photographs()
    model.reset_classifier(len(images))
    crops, labels = random_crops(model, steps * batch_size // 4, seed=seed, images=images)
    with seeded(seed):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        model.train()
        for step in range(steps):
            idx = torch.randint(len(crops), (batch_size,))
            loss = torch.nn.functional.cross_entropy(model(crops[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _weights_key(*settings) -> str:
    parts = [torch.__version__, timm.__version__, inspect.getsource(fit_photographs), str(FIXTURE_SIZE), *settings]
    parts += [Path(importlib.import_module(f'alexnet_zoo.{name}').__file__).read_text()
              for name in ('alexnet', 'data', 'samples')]
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]


FIXTURE_SIZE = 67  # conv 5's output is 3 x 3, 1 x 1 after its pool


def fixture_alexnet_bn(num_classes: int = len(PHOTOGRAPHS)) -> torch.nn.Module:
    """alexnet_bn at the fixture's input size, its data config saying so (checkpoints carry both)."""
    return timm.create_model('alexnet_bn', num_classes=num_classes, img_size=FIXTURE_SIZE,
                             pretrained_cfg_overlay=dict(input_size=(3, FIXTURE_SIZE, FIXTURE_SIZE)))


@pytest.fixture(scope='session')
def trained_model(request):
    """alexnet_bn taught to tell the sample photographs apart (19 classes), in eval mode; trained once per key."""
    torch.manual_seed(0)
    return trained_once(request, fixture_alexnet_bn(), 'trained', steps=40)


def trained_once(request, model: torch.nn.Module, name: str, steps: int, batch_size: int = 32) -> torch.nn.Module:
    """``fit_photographs(model)``, or the weights an earlier run cached for the same settings and code."""
    cache = getattr(request.config, 'cache', None)  # None under -p no:cacheprovider
    if cache is None:
        return fit_photographs(model, steps=steps, batch_size=batch_size, seed=0)
    path = cache.mkdir('alexnet-zoo') / f'{name}-{_weights_key(name, str(steps), str(batch_size))}.safetensors'
    with FileLock(f'{path}.lock'):
        if path.is_file():
            model.reset_classifier(len(PHOTOGRAPHS))
            model.load_state_dict(load_file(path))
            return model.eval()
        fit_photographs(model, steps=steps, batch_size=batch_size, seed=0)
        tmp = path.with_suffix('.tmp')
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return model


@pytest.fixture(scope='session')
def trained_checkpoint(trained_model, tmp_path_factory):
    """The trained model saved as a checkpoint directory (config.json + model.safetensors, with label names)."""
    return save_checkpoint_dir(trained_model, tmp_path_factory.mktemp('ckpt') / 'alexnet_bn', list(PHOTOGRAPHS))


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, 'alexnet_bn', model.num_classes, True, 'test fixture', list(PHOTOGRAPHS))


@pytest.fixture(scope='session')
def as_loaded():
    """Wraps an alexnet_bn of the photographs' classes (the fixture or a copy made in a test) as load_model would."""
    return _loaded


@pytest.fixture(scope='session')
def exported_graphs(trained_model, tmp_path_factory):
    """fp32, fp16 and int8 graphs of the trained model, exported once: (ExportResult, output folder)."""
    out = tmp_path_factory.mktemp('onnx')
    return export_onnx(_loaded(trained_model), out), out


@pytest.fixture(scope='session')
def softmax_graphs(trained_checkpoint, tmp_path_factory):
    """``python -m export.onnx --softmax`` as a user runs it (the suite's one export.onnx subprocess): int8 and fp16
    graphs of the trained checkpoint with a second output, ``probabilities``. (exit code, stdout, stderr, folder)."""
    out = tmp_path_factory.mktemp('softmax') / 'graphs'
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    env.pop('ALEXNET_ZOO_DEBUG', None)
    run = subprocess.run([sys.executable, '-m', 'export.onnx', '--checkpoint', str(trained_checkpoint),
                          '--output-dir', str(out), '--precisions', 'int8,fp16', '--softmax'],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return run.returncode, run.stdout, run.stderr, out


@pytest.fixture(scope='session')
def photos_data(tmp_path_factory):
    """An ImageFolder of the sample photographs, one class folder per photograph (the checkpoint's labels)."""
    root = tmp_path_factory.mktemp('data')
    for name, image in photographs():
        (root / name).mkdir()
        image.save(root / name / f'{name}.png')
    return root


@pytest.fixture(scope='session')
def quick_run(trained_checkpoint, exported_graphs, photos_data, tmp_path_factory):
    """``python -m benchmarks --quick`` as a user runs it (the suite's one benchmark subprocess), on the graphs
    export.onnx wrote (a copy of ``exported_graphs``' folder as --onnx-dir: reused, not exported again; the runs
    that export into --onnx-dir are in-process tests): (CompletedProcess, report folder, graph folder)."""
    out = tmp_path_factory.mktemp('quick')
    shutil.copytree(exported_graphs[1], out / 'graphs', copy_function=os.link)
    cmd = [sys.executable, '-m', 'benchmarks', '--checkpoint', str(trained_checkpoint), '--quick',
           '--data', str(photos_data), '--onnx-dir', str(out / 'graphs'), '--output-dir', str(out / 'report')]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    return proc, out / 'report', out / 'graphs'


# Tests that train, export a graph or run a whole benchmark are ``slow``: ``pytest -m "not slow"`` is the quick loop
# (pure logic, runners on small inputs, bad input; it trains nothing), the full suite (the README's command) runs
# them all. A test is slow when it uses one of these fixtures, directly or through another fixture.
SLOW_FIXTURES = {'trained_model', 'trained_checkpoint', 'exported_graphs', 'softmax_graphs', 'fault_log',
                 'quick_run', 'photo_folder', 'outlier_checkpoint', 'outlier_model', 'torchvision_checkpoint'}


# The tests of make fuzz (faults, full) are slow too: `-m "not slow"` replaces the -m of addopts.
SLOW_MARKS = ('faults', 'full')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())) or any(map(item.get_closest_marker, SLOW_MARKS)):
            item.add_marker(pytest.mark.slow)


# A slow test is also one that starts a process, checked below. Libraries that start one on their first import
# do it here, once, outside any test: numpy.testing runs lscpu, matplotlib's first font cache runs fc-list;
# OpenVINO's import sends a telemetry event from a forked process unless told it runs in CI (its own switch:
# nothing reaches the network at test time).
os.environ['CI'] = 'true'
import matplotlib.font_manager  # noqa: E402,F401
import numpy.testing  # noqa: E402,F401


PROCESSES = pytest.StashKey[list]()


@pytest.fixture(autouse=True)
def _no_process_unless_slow(request, monkeypatch):
    """The quick loop starts no real process: a test not marked ``slow`` that starts one (``subprocess`` in any
    form, ``os.fork``, ``os.posix_spawn``) fails, even where its code catches the error raised at the start."""
    if request.node.get_closest_marker('slow'):
        return
    started = request.node.stash.setdefault(PROCESSES, [])

    def refuse(what):
        def start(*args, **kwargs):
            started.append(what)
            pytest.fail(f'starts a process ({what}) but is not marked slow', pytrace=True)
        return start
    monkeypatch.setattr(subprocess.Popen, '_execute_child', refuse('subprocess'))
    for name in ('fork', 'forkpty', 'posix_spawn', 'posix_spawnp'):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f'os.{name}'))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that caught the refusal above (``except BaseException``) still fails."""
    result = yield
    if item.stash.get(PROCESSES, None):
        pytest.fail(f'starts a process ({", ".join(item.stash[PROCESSES])}) but is not marked slow')
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """``make test-gpu`` sets ALEXNET_ZOO_REQUIRE_GPU: there a GPU or TensorRT test that skips is a failure, so a
    machine without TensorRT (or without a visible GPU) cannot look green."""
    outcome = yield
    report = outcome.get_result()
    gpu_test = item.get_closest_marker('gpu') or item.get_closest_marker('tensorrt')
    if os.environ.get('ALEXNET_ZOO_REQUIRE_GPU') and gpu_test and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome, report.longrepr = 'failed', f'a GPU test skipped under make test-gpu: {reason}'


# What the fault tests tried (kill moments, full disks), printed after the run: `make fuzz` reports these counts.
FAULTS = pytest.StashKey[list]()


@pytest.fixture
def fault_log(request) -> list:
    return request.config.stash.setdefault(FAULTS, [])


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(FAULTS, [])
    if lines:
        terminalreporter.section('faults tried')
        for line in lines:
            terminalreporter.write_line(line)
