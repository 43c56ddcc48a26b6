"""Every output folder is one state: a training run, a report, graphs bound to the weights they came from. Each
guarantee is broken on purpose: a failure injected at every file move of a save, files mixed by hand, graphs of
other weights."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from safetensors.torch import load_file

from alexnet_zoo.checkpoint import CheckpointError, load_model, weights_sha256
from alexnet_zoo.cli import run_cli
from alexnet_zoo.files import (DiskFullError, atomic_path, disk_full, ensure_writable_dir,
                               stale_temporaries)
from alexnet_zoo.manifest import STAGING, sha256_file, staging_dirs, verify
from alexnet_zoo.run import Settings, last_checkpoint, read_run_state, save_run
from benchmarks.backends.artifacts import graphs_in
from benchmarks.report.plots import PLOTS
from benchmarks.report.files import new_run_id, read_report, write_report
from benchmarks.report.schema import read_back
from export.contract import CALIBRATION_FILE, DEFAULT_OPSET, read_metadata
from export.export_manifest import EXPORT_MANIFEST, check_export, write_export_manifest
from test_timing import complete, synthetic_report, synthetic_rounds

REPLACES_PER_REPORT = 1 + 3 + len(PLOTS) + 1  # the staged manifest, then the files and the manifest moved into place


class Injected(RuntimeError):
    pass


def fail_at(monkeypatch, k):
    """os.replace (every file's final step, staged or moved into place) fails at its k-th call from now (k = 0:
    never); returns the count of calls so far."""
    real, calls = os.replace, [0]

    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise Injected(f'injected failure at file move {k}')
        return real(*args, **kwargs)
    monkeypatch.setattr(os, 'replace', replace)
    return calls


def leftovers(folder):
    """Temporary files, or staging folders inside the folder or beside it."""
    beside = [p.name for p in staging_dirs(folder)[1:] if p.exists()]
    return beside + [p.name for p in folder.rglob('*') if p.name == STAGING or p.name.endswith('.tmp')]


# ------------------------------------------------------------------------------------------------ reports


def report(scale=1.0):
    base, fast = synthetic_rounds(slow=())
    rows = [('torch', 'fp32', base), ('openvino', 'int8', (np.array(fast) * scale).tolist())]
    return read_back({**complete(synthetic_report(rows)), 'schema_version': 3, 'run_id': new_run_id()})


def test_report_files_carry_one_run_id(tmp_path, monkeypatch):
    r = report()
    calls = fail_at(monkeypatch, 0)  # counted, never failed
    paths = write_report(r, tmp_path)
    monkeypatch.undo()
    assert calls[0] == REPLACES_PER_REPORT  # every file move of a save is one case of the interrupted-save test
    run_id = r.run_id
    assert json.loads(paths['report.json'].read_text())['run_id'] == run_id
    assert run_id in paths['report.md'].read_text()
    assert all(line.endswith(run_id) for line in paths['report.csv'].read_text().splitlines()[1:])
    assert run_id.encode() in paths['latency.png'].read_bytes()  # PNG text chunk
    assert verify(tmp_path)['run_id'] == run_id and leftovers(tmp_path) == []


@pytest.mark.parametrize('k', range(1, REPLACES_PER_REPORT + 1))
def test_interrupted_report_is_the_old_one_or_the_new_one(tmp_path, monkeypatch, k):
    old, new = report(), report(scale=1.5)
    write_report(old, tmp_path)
    calls = fail_at(monkeypatch, k)
    with pytest.raises(Injected):
        write_report(new, tmp_path)
    monkeypatch.undo()
    assert calls[0] == k
    seen = read_report(tmp_path / 'report.json')  # a reader finishes a save that had staged everything
    assert seen.run_id == (old.run_id if k == 1 else new.run_id)
    assert seen.run_id in (tmp_path / 'report.md').read_text()
    assert verify(tmp_path) and leftovers(tmp_path) == []


def test_compare_refuses_a_mixed_report_folder(tmp_path):
    write_report(report(), tmp_path / 'a')
    write_report(report(scale=1.5), tmp_path / 'b')
    shutil.copy(tmp_path / 'b' / 'report.md', tmp_path / 'a' / 'report.md')
    with pytest.raises(ValueError, match='mixes reports: .*report.md does not belong'):
        read_report(tmp_path / 'a' / 'report.json')
    shutil.copy(tmp_path / 'b' / 'report.json', tmp_path / 'a' / 'report.json')
    with pytest.raises(ValueError, match='mixes reports'):
        read_report(tmp_path / 'a' / 'report.json')
    assert read_report(tmp_path / 'b' / 'report.json').results


# ------------------------------------------------------------------------------------------------ runs


class TinyRun:
    """save_run on a small timm model; every epoch's weights differ from the last."""

    def __init__(self, folder):
        torch.manual_seed(0)
        self.folder, self.epoch = folder, 0
        self.model = timm.create_model('test_resnet', num_classes=3)
        self.optimizer = torch.optim.AdamW(self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 1)
        self.saved = {}

    def next_epoch(self):
        self.epoch += 1
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(0.01)
        self.saved[self.epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}
        history = [{'epoch': e, 'val_top1': 60.0 - e} for e in range(1, self.epoch + 1)]  # epoch 1 stays best
        save_run(self.folder, self.model, self.optimizer, self.scheduler, Settings(model='test_resnet'),
                 ['a', 'b', 'c'], history, {'best_epoch': 1, 'epochs': history}, best=self.epoch == 1)


def same_weights(folder, state):
    found = load_file(folder / 'model.safetensors')
    return set(found) <= set(state) and all(torch.equal(found[k], state[k]) for k in found)


def count_replaces(action):
    with pytest.MonkeyPatch.context() as m:
        calls = fail_at(m, 0)  # counts, never fails
        action()
    return calls[0]


def test_interrupted_epoch_resumes_from_one_epoch_exactly(tmp_path, monkeypatch):
    """A failure at every file move of epoch 2's save: --resume then finds epoch 1 or epoch 2 whole (weights,
    state, metrics, best checkpoint, manifest), and nothing left over."""
    probe = TinyRun(tmp_path / 'probe')
    probe.folder.mkdir()
    probe.next_epoch()
    moves = count_replaces(probe.next_epoch)
    assert moves == 1 + 5 + 1  # the staged manifest; last/ (2 files), state, 2 metrics files moved; the manifest
    for k in range(1, moves + 1):
        run = TinyRun(tmp_path / f'run{k}')
        run.folder.mkdir()
        run.next_epoch()
        calls = fail_at(monkeypatch, k)
        with pytest.raises(Injected):
            run.next_epoch()
        monkeypatch.undo()
        assert calls[0] == k
        state = read_run_state(run.folder)
        epoch = state['epoch']
        assert epoch == (1 if k == 1 else 2), k  # before the staged manifest: the old epoch; after: finished
        assert len(state['metrics']) == epoch and verify(run.folder)['epoch'] == epoch
        assert same_weights(last_checkpoint(run.folder), run.saved[epoch])
        assert same_weights(run.folder, run.saved[1])  # the best epoch's checkpoint, kept
        assert json.loads((run.folder / 'metrics.json').read_text())['epochs'][-1]['epoch'] == epoch
        assert leftovers(run.folder) == []


def test_resume_refuses_files_that_do_not_belong_together(tmp_path):
    a, b = TinyRun(tmp_path / 'a'), TinyRun(tmp_path / 'b')
    for run in (a, b):
        run.folder.mkdir()
        run.next_epoch()
    b.next_epoch()
    shutil.copy(b.folder / 'train_state.pt', a.folder / 'train_state.pt')
    with pytest.raises(ValueError, match='train_state.pt does not belong with the other files'):
        read_run_state(a.folder)
    shutil.copy(b.folder / 'last' / 'model.safetensors', tmp_path / 'a' / 'last' / 'model.safetensors')
    with pytest.raises(CheckpointError, match='last/model.safetensors does not belong'):
        load_model(checkpoint=last_checkpoint(a.folder))
    assert load_model(checkpoint=b.folder).name == 'test_resnet' and read_run_state(b.folder)['epoch'] == 2


# ------------------------------------------------------------------------------------------------ graphs


def test_graphs_are_bound_to_their_weights(exported_graphs, trained_model, as_loaded):
    result, folder = exported_graphs
    assert read_metadata(result.paths['int8'])['weights_sha256'] == weights_sha256(trained_model)
    assert set(graphs_in(folder, as_loaded(trained_model), ['fp32', 'int8'])) == {'fp32', 'int8'}
    other = timm.create_model('alexnet_bn', num_classes=trained_model.num_classes)
    with pytest.raises(ValueError, match='--onnx-dir holds graphs of other weights'):
        graphs_in(folder, as_loaded(other), ['fp32', 'int8'])


def test_a_reader_waits_for_the_writer_it_meets(tmp_path, monkeypatch):
    """A reader arriving while a save moves its files waits on the folder's lock and then sees the new set whole,
    instead of finishing the move under the writer (which then failed)."""
    import threading
    from alexnet_zoo import manifest
    write_report(report(), tmp_path)
    new = report(scale=1.5)
    staged, release, seen = threading.Event(), threading.Event(), {}
    real_commit = manifest._commit

    def slow_commit(folder, staging):
        staged.set()
        release.wait(10)
        real_commit(folder, staging)
    monkeypatch.setattr(manifest, '_commit', slow_commit)

    def reader():
        staged.wait(10)
        seen['report'] = read_report(tmp_path / 'report.json')
    thread = threading.Thread(target=reader)
    thread.start()
    writer = threading.Thread(target=write_report, args=(new, tmp_path))
    writer.start()
    staged.wait(10)
    thread.join(0.5)
    assert thread.is_alive(), 'the reader did not wait for the save it met'
    release.set()
    writer.join(10)
    thread.join(10)
    assert seen['report'].run_id == new.run_id and leftovers(tmp_path) == []


def test_a_pending_save_is_finished_before_the_next(tmp_path, monkeypatch):
    run = TinyRun(tmp_path / 'run')
    run.folder.mkdir()
    run.next_epoch()
    fail_at(monkeypatch, 2)  # epoch 2 staged completely, interrupted while moving
    with pytest.raises(Injected):
        run.next_epoch()
    monkeypatch.undo()
    run.next_epoch()  # epoch 3 finishes epoch 2's move, then saves itself
    assert read_run_state(run.folder)['epoch'] == 3 and verify(run.folder)['epoch'] == 3
    assert same_weights(last_checkpoint(run.folder), run.saved[3]) and leftovers(run.folder) == []


def test_another_tools_manifest_beside_a_checkpoint_is_not_ours(tmp_path):
    from alexnet_zoo.checkpoint import save_checkpoint_dir
    save_checkpoint_dir(timm.create_model('test_resnet', num_classes=3), tmp_path / 'ckpt')
    (tmp_path / 'manifest.json').write_text('["a list from another tool"]')
    assert load_model(checkpoint=tmp_path / 'ckpt').num_classes == 3


# ------------------------------------------------------------------------------------------------ export.json
def test_export_lists_every_file_it_wrote(exported_graphs, trained_model):
    result, folder = exported_graphs
    manifest = json.loads((folder / EXPORT_MANIFEST).read_text())
    assert set(manifest['files']) == {p.name for p in result.paths.values()} | {CALIBRATION_FILE}
    for name, entry in manifest['files'].items():
        assert entry['sha256'] == sha256_file(folder / name)
        assert entry['weights_sha256'] == weights_sha256(trained_model)
        assert entry['settings']['opset'] == DEFAULT_OPSET and entry['settings']['checkpoint']['name']
    assert check_export(list(result.paths.values()))['kind'] == 'export'


def _graph_folder(exported_graphs, tmp_path):
    _, folder = exported_graphs
    copy = tmp_path / 'onnx'
    copy.mkdir()
    for name in ('model.onnx', 'model.int8.onnx', EXPORT_MANIFEST):
        shutil.copy(folder / name, copy / name)
    return copy


def test_two_exports_at_once_are_noticed(exported_graphs, trained_model, as_loaded, tmp_path, capsys):
    """Export A writes its graph, B overwrites it, A's export.json (hashed from A's bytes) lands last: every reader
    refuses the folder in one line, rather than measure B's graph as A's."""
    folder = _graph_folder(exported_graphs, tmp_path)
    graph = folder / 'model.int8.onnx'
    model = onnx.load(str(graph))
    model.graph.node[0].name += '-written-by-another-export'
    onnx.save(model, str(graph))
    with pytest.raises(ValueError, match='is not the file .*export.json lists'):
        graphs_in(folder, as_loaded(trained_model), ['fp32', 'int8'])
    from export.trt.__main__ import main as trt_main
    with pytest.raises(SystemExit) as exit_:
        run_cli(trt_main, ['--onnx', str(graph), '--check-only'])
    assert exit_.value.code == 1 and 'export.json lists' in capsys.readouterr().err
    (folder / EXPORT_MANIFEST).unlink()  # killed before its export.json: graphs nobody vouches for
    with pytest.raises(FileNotFoundError, match='has no export.json'):
        graphs_in(folder, as_loaded(trained_model), ['fp32', 'int8'])


def test_an_export_of_other_weights_takes_the_folder_over(exported_graphs, tmp_path):
    """A later export of other weights keeps no entry of the earlier ones: its export.json describes one model,
    and the earlier graphs left beside it are refused as unlisted."""
    folder = _graph_folder(exported_graphs, tmp_path)
    (folder / 'model.fp16.onnx').write_bytes(b'fp16 graph of other weights')
    write_export_manifest(folder, {'model.fp16.onnx': {'sha256': sha256_file(folder / 'model.fp16.onnx'),
                                                       'weights_sha256': 'other'}})
    assert set(json.loads((folder / EXPORT_MANIFEST).read_text())['files']) == {'model.fp16.onnx'}
    with pytest.raises(ValueError, match='not listed'):
        check_export([folder / 'model.onnx'])
    write_export_manifest(folder, {'model.onnx': {'sha256': sha256_file(folder / 'model.onnx'),
                                                  'weights_sha256': 'other'}})  # same weights: both kept
    assert set(json.loads((folder / EXPORT_MANIFEST).read_text())['files']) == {'model.onnx', 'model.fp16.onnx'}


@pytest.mark.slow  # real processes: a writer killed, another still writing
def test_temporaries_of_killed_writers_are_removed(tmp_path):
    """A temporary file is locked by its writer: one whose writer was killed (its lock gone with it) is removed by
    the next writer in the folder; one that another process or this one is still writing is left alone."""
    killed = subprocess.run([sys.executable, '-c', f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from alexnet_zoo.files import atomic_path
with atomic_path({str(tmp_path / 'model.onnx')!r}) as tmp:
    tmp.write_bytes(b'half a graph')
    os.kill(os.getpid(), 9)
"""])
    assert killed.returncode == -9
    [stale] = [p for p in tmp_path.iterdir() if p.name.startswith('.model.onnx.')]
    writer = subprocess.Popen([sys.executable, '-c', f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from alexnet_zoo.files import atomic_path
with atomic_path({str(tmp_path / 'model.int8.onnx')!r}) as tmp:
    print(tmp.name, flush=True)
    sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        elsewhere = writer.stdout.readline().strip()  # another process, still writing
        with atomic_path(tmp_path / 'model.fp16.onnx') as mine:  # this process, still writing
            mine.write_bytes(b'half')
            assert stale_temporaries(tmp_path) == [stale]
            ensure_writable_dir(tmp_path)
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted([elsewhere, mine.name])
    finally:
        writer.communicate('\n', timeout=30)
    assert writer.returncode == 0 and sorted(p.name for p in tmp_path.iterdir()) == ['model.fp16.onnx',
                                                                                     'model.int8.onnx']


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Every library says it its own way: an OSError's errno, safetensors' StorageFull, torch's text."""
    target = tmp_path / 'model.onnx'
    for error in (OSError(errno.ENOSPC, 'No space left on device'), RuntimeError('IoError(Os { code: 28, kind: '
                                                                                  'StorageFull })')):
        with pytest.raises(DiskFullError) as caught, atomic_path(target):
            raise error
        assert str(caught.value) == f'no space left on device writing {target}'
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match='unrelated'), atomic_path(target):
        raise ValueError('unrelated')
    monkeypatch.setattr(os, 'statvfs', lambda path: os.statvfs_result((4096, 4096, 10, 10, 10, 10, 10, 10, 0, 255)))
    assert isinstance(disk_full(RuntimeError('PytorchStreamWriter failed writing file data/0'), target),
                      DiskFullError)  # torch's words name no cause: a file system with 40 KB left does
