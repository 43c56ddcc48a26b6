"""``make gpu-check``'s preparation, checked where it can be: on the CPU. The GPU steps themselves run on a machine
with an NVIDIA GPU; here each step is replaced by a recorder, so that the order, the skips, the failures and the
folder the command leaves are what a GPU run would see."""
import json

import pytest

from alexnet_zoo.cli import run_cli
from alexnet_zoo.samples import PHOTOGRAPHS
from benchmarks import gpu_check


def test_without_a_gpu_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit) as e:
        run_cli(gpu_check.main, ['--output-dir', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1 and err.startswith('error: no CUDA GPU visible'), err
    assert not (tmp_path / 'out' / 'gpu_check.json').exists()


def test_steps_run_in_order_and_a_failure_does_not_stop_the_next(tmp_path, monkeypatch, capsys):
    ran = []

    def step(name, result):
        def run(out):
            ran.append((name, out))
            if isinstance(result, Exception):
                raise result
            return result
        return run
    monkeypatch.setattr(gpu_check, 'gpu_facts', lambda: {'gpu': 'NVIDIA H100'})
    monkeypatch.setattr(gpu_check, 'train_one_epoch', step('training', RuntimeError('CUDA out of memory\nmore')))
    monkeypatch.setattr(gpu_check, 'benchmark_cuda_rows', step('benchmark', {'rows': [], 'exit_code': 0}))
    monkeypatch.setattr(gpu_check, 'gpu_tests', step('tests', {'exit_code': 0, 'summary': '3 passed'}))
    out = tmp_path / 'out'
    assert gpu_check.main(['--output-dir', str(out)]) == 1  # one step failed
    assert [name for name, _ in ran] == ['training', 'benchmark', 'tests'] and all(o == out for _, o in ran)
    saved = json.loads((out / 'gpu_check.json').read_text())
    assert saved['machine'] == {'gpu': 'NVIDIA H100'}
    assert saved['training'] == {'error': 'RuntimeError: CUDA out of memory'}  # its first line
    assert saved['tests']['summary'] == '3 passed'
    monkeypatch.setattr(gpu_check, 'missing', lambda modules: [m for m in modules if m == 'skimage'])
    assert gpu_check.main(['--output-dir', str(out)]) == 0  # the photographs' steps skipped, with the reason
    saved = json.loads((out / 'gpu_check.json').read_text())
    assert saved['training'] == saved['benchmark'] == {'skipped': 'needs skimage, not installed here'}


def test_the_training_step_prepares_crops_of_every_photograph_and_one_epoch(tmp_path, monkeypatch):
    import alexnet_zoo.train
    seen = {}

    def train(data, output, settings, **kwargs):
        seen.update(data=data, settings=settings, kwargs=kwargs)
        return {'device': 'cuda', 'epochs': [{'val_top1': 0.5}]}
    monkeypatch.setattr(alexnet_zoo.train, 'train', train)
    result = gpu_check.train_one_epoch(tmp_path)
    assert result['device'] == 'cuda' and result['val_top1'] == 0.5 and result['seconds'] >= 0
    assert seen['settings'].epochs == 1 and seen['kwargs']['progress'] is False
    train_crops, val_crops = gpu_check.TRAIN_CROPS
    for split, crops in (('train', train_crops), ('val', val_crops)):
        classes = sorted(p.name for p in (seen['data'] / split).iterdir())
        assert classes == sorted(PHOTOGRAPHS)
        assert all(len(list((seen['data'] / split / c).iterdir())) == crops for c in classes)


def test_the_test_step_selects_the_gpu_tests_without_tensorrt(tmp_path, monkeypatch):
    import subprocess
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, '2 passed in 3.0s\n', '')
    monkeypatch.setattr(gpu_check.subprocess, 'run', run)
    assert gpu_check.gpu_tests(tmp_path) == {'exit_code': 0, 'summary': '2 passed in 3.0s'}
    cmd, = calls
    assert cmd[cmd.index('-m', 2) + 1] == 'gpu and not tensorrt'
    assert (tmp_path / 'pytest.log').read_text().startswith('2 passed')
