"""The structure docs/architecture.md draws: dependencies point one way, the light paths stay light, and the
backends are one table whose runners bind inputs and outputs by name."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.backends.registry import BACKENDS, PRECISIONS, REGISTRY, Spec, plan
from export.contract import GRAPH_PRECISIONS
from export.runner import Runner

REPO = Path(__file__).resolve().parents[1]
HEAVY = ('torch', 'timm', 'tensorrt', 'onnxruntime', 'openvino')


def test_import_contracts_are_kept():
    from importlinter.cli import lint_imports
    assert lint_imports(str(REPO / 'pyproject.toml'), no_cache=True, no_logo=True) == 0


@pytest.mark.slow  # a real process: import-linter on another tree
def test_the_layers_contract_catches_an_arrow_back_up(tmp_path):
    """The same contract on a tree where export imports benchmarks: import-linter must call it broken."""
    for package, body in (('alexnet_zoo', ''), ('export', 'import benchmarks\n'), ('benchmarks', 'import export\n')):
        (tmp_path / package).mkdir()
        (tmp_path / package / '__init__.py').write_text(body)
    (tmp_path / 'pyproject.toml').write_text((REPO / 'pyproject.toml').read_text())
    proc = subprocess.run([sys.executable, '-c', 'import sys; from importlinter.cli import lint_imports; '
                           'sys.exit(lint_imports("pyproject.toml", limit_to_contracts=("layers",), no_cache=True))'],
                          cwd=tmp_path, env={'PYTHONPATH': str(tmp_path), 'PATH': ''}, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'export is not allowed to import benchmarks' in proc.stdout


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400  # docs/architecture.md's size rules


def _sizes():
    """(module, its line count, its functions over MAX_FUNCTION_LINES as 'name: lines') for the three packages."""
    import ast
    for path in sorted(p for package in ('alexnet_zoo', 'export', 'benchmarks') for p in (REPO / package).rglob('*.py')):
        text = path.read_text()
        long = [f'{node.name}: {node.end_lineno - node.lineno + 1}' for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
        yield path.relative_to(REPO), len(text.splitlines()), long


def test_no_long_function_and_no_long_module():
    """A long orchestrator reads as its order of work, each step a function; a module has one duty."""
    sizes = list(_sizes())
    assert len(sizes) > 60  # every module of the three packages was read
    assert [f'{path}: {long}' for path, _, long in sizes if long] == []
    assert [f'{path}: {lines} lines' for path, lines, _ in sizes if lines > MAX_MODULE_LINES] == []


def _heavy_modules_after(code: str) -> list:
    script = f'{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))'
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.strip().splitlines()[-1])


def test_tensorrt_preflight_and_metadata_are_light(exported_graphs):
    """``python -m export.trt --check-only`` and reading a graph's metadata import no torch, timm or runtime."""
    result, _ = exported_graphs
    graph = str(result.paths['int8'])
    assert _heavy_modules_after(
        f'from export.trt.__main__ import main\nassert main(["--onnx", {graph!r}, "--check-only"]) == 0') == []
    assert _heavy_modules_after(
        f'from export.contract import read_metadata\nassert read_metadata({graph!r})["precision"] == "int8"') == []


def test_backends_are_one_table():
    assert BACKENDS == ('torch', 'torch-compile', 'onnxruntime', 'openvino', 'tensorrt')
    for name, runner in REGISTRY.items():
        assert issubclass(runner, Runner) and runner.backend == name
        assert runner.artifact in ('module', 'onnx', 'engine')
    for spec in plan(BACKENDS, PRECISIONS, gpu=True):
        reason = spec.unavailable()
        assert reason is None or (isinstance(reason, str) and reason), spec
        assert spec.graph is None if spec.runner.artifact == 'module' else spec.graph in (*GRAPH_PRECISIONS, None)
    assert Spec('openvino', 'bf16', 'cpu').graph == 'fp32'  # OpenVINO's bf16 is the fp32 graph under a bf16 hint
    assert Spec('tensorrt', 'int8', 'cuda').graph == 'int8' and Spec('torch', 'fp32', 'cpu').graph is None
    assert [s.device for s in plan(['onnxruntime'], ['fp32'], gpu=True)] == ['cpu', 'cuda']


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_runners_run_the_softmax_graph_by_name(softmax_graphs, trained_model, backend):
    """A graph with a second output (``probabilities``): the runner still returns the ``logits``, judged against
    PyTorch fp32 on the same images (not against another runtime's run of the same graph)."""
    import numpy as np
    import torch
    from alexnet_zoo.data import sample_batch
    from export.parity import compare, judge
    _, _, _, folder = softmax_graphs
    _, x = sample_batch(trained_model)
    with torch.inference_mode():
        expected = trained_model(x).numpy()
    with REGISTRY[backend](folder / 'model.int8.onnx', 'int8', 'cpu', 2) as runner:
        logits = runner.infer(x.numpy())
    assert logits.shape == expected.shape and not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities
    figures = compare(expected, logits)
    assert judge('int8', figures, trained=True)['passed'], figures
