"""python -m alexnet_zoo.train: a real fine-tune on crops of the sample photographs; reload, resume, torchrun,
bad input."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from alexnet_zoo import train as trainer
from alexnet_zoo.checkpoint import load_model
from alexnet_zoo.cli import run_cli
from alexnet_zoo.data import sample_batch
from alexnet_zoo.samples import folder_images, write_image_folder

CLASSES = ['astronaut', 'chelsea', 'coffee', 'rocket']
CLI = [sys.executable, '-m', 'alexnet_zoo.train']


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """The 4-class fine-tuning set: 16 training and 8 validation crops per class (96 images)."""
    return write_image_folder(tmp_path_factory.mktemp('data') / 'photos', CLASSES, train_per_class=16, val_per_class=8)


@pytest.fixture(scope='module')
def small_folder(tmp_path_factory):
    """2 classes, 8 training and 2 validation crops each: enough to exercise resume and torchrun."""
    return write_image_folder(tmp_path_factory.mktemp('data') / 'small', ['astronaut', 'coffee'], 8, 2)


def run(args, **kwargs):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900, **kwargs)


def files_below(path: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(path.rglob('*'))}


def test_write_image_folder_layout_and_determinism(tmp_path):
    a = write_image_folder(tmp_path / 'a', ['coins', 'moon'], train_per_class=3, val_per_class=2, size=64, seed=1)
    b = write_image_folder(tmp_path / 'b', ['coins', 'moon'], train_per_class=3, val_per_class=2, size=64, seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob('*.jpg'))
    assert [str(p) for p in files] == [f'{split}/{name}/{name}_{i:03d}.jpg' for split, n in (('train', 3), ('val', 2))
                                       for name in ('coins', 'moon') for i in range(n)]
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files)
    assert folder_images(a / 'val')[0][1].size == (64, 64)


def test_fine_tune_reaches_accuracy_and_reloads(photo_folder, trained_checkpoint, tmp_path):
    """From a locally saved checkpoint (new 4-class classifier), 2 epochs reach far above chance (25 %)."""
    out = tmp_path / 'run'
    result = run(['--data', photo_folder, '--output', out, '--init', trained_checkpoint, '--epochs', 2,
                  '--batch-size', 16, '--seed', 0, '--workers', 0])
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr
    assert 'epoch 2/2' in result.stdout and 'val loss' in result.stdout

    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['classes'] == CLASSES and metrics['world_size'] == 1
    assert (metrics['train_images'], metrics['val_images']) == (64, 32)
    assert [e['epoch'] for e in metrics['epochs']] == [1, 2]
    final = metrics['epochs'][-1]
    assert final['val_top1'] >= 60, metrics['epochs']
    assert final['val_top5'] == 100  # 4 classes: the top 5 hold them all
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [float(r['val_top1']) for r in rows] == [e['val_top1'] for e in metrics['epochs']]

    # timm's own loader and the project's give the same 4-class model, labels included
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == CLASSES and config['num_classes'] == 4
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    loaded = load_model(checkpoint=out)
    assert model.num_classes == loaded.num_classes == 4
    assert loaded.label_names == CLASSES and loaded.name == 'alexnet_bn'

    # RUN holds the best validation epoch (what others load), RUN/last the last one (what --resume loads)
    best = max(metrics['epochs'], key=lambda e: e['val_top1'])
    assert metrics['best_epoch'] == best['epoch'] and metrics['last_epoch'] == 2
    assert config['training']['epoch'] == best['epoch'] and config['training']['val_top1'] == best['val_top1']
    assert json.loads((out / 'last' / 'config.json').read_text())['training']['epoch'] == 2
    assert config['training']['color_jitter'] == 0.4 and config['training']['hflip'] == 0.5  # the defaults
    # the reported validation accuracy is what the saved (best) model scores on val/
    images = folder_images(photo_folder / 'val')
    _, batch = sample_batch(model, images)
    with torch.no_grad():
        logits = model(batch)
        torch.testing.assert_close(loaded.model(batch), logits)
    labels = torch.tensor([CLASSES.index(Path(name).parts[0]) for name, _ in images])
    correct = (logits.argmax(1) == labels).sum().item()
    assert abs(100 * correct / len(images) - best['val_top1']) <= 100 / len(images) + 1e-6

    state = torch.load(out / 'train_state.pt', weights_only=True)
    assert state['epoch'] == 2 and state['label_names'] == CLASSES
    assert state['settings']['init'] == str(trained_checkpoint) and state['settings']['model'] == 'alexnet_bn'
    assert state['optimizer']['state'] and state['scheduler']['t_initial'] == 2


@pytest.mark.slow
def test_resume_continues_exactly_with_frozen_features(small_folder, trained_model, trained_checkpoint, tmp_path,
                                                     monkeypatch, capsys):
    """An interrupted run, resumed, ends with the very weights of an uninterrupted one (so --seed is deterministic)."""
    settings = trainer.Settings(epochs=2, batch_size=8, lr=1e-3, init=str(trained_checkpoint), freeze_features=True)
    full = trainer.train(small_folder, tmp_path / 'full', settings, workers=0, progress=False)

    calls = []
    real_evaluate = trainer.evaluate

    def crash_in_second_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args)

    monkeypatch.setattr(trainer, 'evaluate', crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(small_folder, tmp_path / 'cut', settings, workers=0, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / 'cut' / 'train_state.pt', weights_only=True)['epoch'] == 1

    assert trainer.main(['--data', str(small_folder), '--resume', str(tmp_path / 'cut'), '--workers', '0',
                         '--no-progress']) == 0
    resumed = json.loads((tmp_path / 'cut' / 'metrics.json').read_text())
    strip = [{k: v for k, v in e.items() if k != 'seconds'} for e in full['epochs']]
    assert [{k: v for k, v in e.items() if k != 'seconds'} for e in resumed['epochs']] == strip

    for argv, message in ((['--resume', str(tmp_path / 'full')], 'has already trained 2 epochs'),
                          (['--resume', str(tmp_path / 'full'), '--lr', '0.1'], '--lr cannot change when resuming')):
        with pytest.raises(SystemExit) as exit_:
            run_cli(trainer.main, ['--data', str(small_folder), '--workers', '0', *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith('error: ') and message in err, err

    a, b = (load_file(tmp_path / run / 'last' / 'model.safetensors') for run in ('full', 'cut'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best_a, best_b = (load_file(tmp_path / run / 'model.safetensors') for run in ('full', 'cut'))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    # --freeze-features: the convolutional blocks (BatchNorm statistics included) are the init's, the head learned
    start = trained_model.state_dict()
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith('features.'))
    assert not torch.equal(a['head.pre_logits.fc1.weight'], start['head.pre_logits.fc1.weight'])
    assert a['head.fc.weight'].shape == (2, start['head.fc.weight'].shape[1])


@pytest.mark.slow
def test_pretrained_alexnet_from_torch_hub_cache(small_folder, tmp_path, monkeypatch):
    """--pretrained alexnet loads torchvision's checkpoint (keys mapped) and a new classifier; the cache is primed
    with a locally made torchvision state dict, so nothing is downloaded."""
    import torchvision
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    url = timm.models.get_pretrained_cfg('alexnet').url
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / url.rsplit('/', 1)[1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torchvision_weights = torchvision.models.alexnet().state_dict()
    torch.save(torchvision_weights, cached)
    settings = trainer.Settings(model='alexnet', pretrained=True, freeze_features=True, epochs=1, batch_size=8)
    metrics = trainer.train(small_folder, tmp_path / 'run', settings, workers=0, progress=False)
    assert metrics['model'] == 'alexnet' and metrics['settings']['pretrained']
    weights = load_file(tmp_path / 'run' / 'last' / 'model.safetensors')
    assert torch.equal(weights['features.3.weight'], torchvision_weights['features.3.weight'])
    assert weights['head.fc.weight'].shape == (2, 4096)


@pytest.mark.slow
@pytest.mark.full  # two training processes (12 s of the suite's budget): make fuzz; make test trains in one process
def test_torchrun_two_processes(small_folder, trained_checkpoint, tmp_path):
    """Two processes under torchrun, from the suite's small checkpoint (a new classifier: its gradients are what the
    processes exchange)."""
    out = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}  # two CPU processes, even on a 1-GPU box
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m',
         'alexnet_zoo.train', '--data', str(small_folder), '--output', str(out), '--epochs', '1', '--batch-size', '4',
         '--freeze-features', '--lr', '1e-3', '--workers', '0', '--no-progress', '--init', str(trained_checkpoint)],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('epoch 1/1') == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir() if p.name != '.lock') == ['config.json', 'last', 'manifest.json', 'metrics.csv',
                                                      'metrics.json', 'model.safetensors', 'train_state.pt']
    metrics = json.loads((out / 'metrics.json').read_text())
    assert (metrics['world_size'], metrics['batch_size'], metrics['device']) == (2, 8, 'cpu')  # pinned to the CPU
    assert (metrics['train_images'], metrics['val_images']) == (16, 4)
    loaded = load_model(checkpoint=out)
    assert loaded.label_names == ['astronaut', 'coffee']
    # the accuracy gathered from both processes is what the saved model scores on all 4 validation images
    images = folder_images(small_folder / 'val')
    labels = torch.tensor([loaded.label_names.index(Path(name).parts[0]) for name, _ in images])
    with torch.no_grad():
        correct = (loaded.model(sample_batch(loaded.model, images)[1]).argmax(1) == labels).sum().item()
    assert metrics['epochs'][0]['val_top1'] == pytest.approx(100 * correct / len(images), abs=100 / len(images))


def _bad_folders(root: Path) -> dict:
    no_train = write_image_folder(root / 'no_train', ['coins', 'moon'], 1, 1)
    shutil.rmtree(no_train / 'train')
    one_class = write_image_folder(root / 'one_class', ['coins'], 2, 1)
    unreadable = write_image_folder(root / 'unreadable', ['coins', 'moon'], 2, 1)
    for f in (unreadable / 'train' / 'moon').iterdir():
        f.unlink()
    (unreadable / 'train' / 'moon' / 'notes.txt').write_text('not an image')
    (unreadable / 'train' / 'moon' / 'broken.jpg').write_bytes(b'not a jpeg either')
    (root / 'a_file').write_text('x')
    (root / 'not_a_run').mkdir()
    (root / 'not_a_run' / 'config.json').write_text('{}')
    return dict(no_train=no_train, one_class=one_class, unreadable=unreadable)


BAD = {
    'missing data': (['--data', '{root}/nowhere'], 1, 'data directory not found'),
    'no train split': (['--data', '{no_train}'], 1, 'no train/ split'),
    'one class': (['--data', '{one_class}'], 1, 'at least 2'),
    'unreadable class': (['--data', '{unreadable}'], 1, 'no readable images in'),
    'unwritable output': (['--data', '{small}', '--output', '{root}/a_file/run'], 1, 'not writable'),
    'resume not a run': (['--data', '{small}', '--resume', '{root}/not_a_run'], 1, 'is not a training run'),
    'no published weights': (['--data', '{small}', '--pretrained'], 1, 'no published pretrained weights'),
    'zero epochs': (['--data', '{small}', '--epochs', '0'], 2, '--epochs: must be above 0, got 0'),
    'unknown model': (['--data', '{small}', '--model', 'alexnet_xl'], 2, 'unknown model'),
    'scale out of range': (['--data', '{small}', '--scale', '0.5', '1.5'], 2, '--scale: must be at most 1, got 1.5'),
    'scale upside down': (['--data', '{small}', '--scale', '0.9', '0.5'], 2, '--scale needs 0 < MIN <= MAX <= 1'),
    'odd batch with mixup': (['--data', '{small}', '--mixup', '0.2', '--batch-size', '5'], 2, 'must be even'),
    'negative jitter': (['--data', '{small}', '--color-jitter', '-1'], 2, '--color-jitter: must be at least 0'),
}


@pytest.mark.slow  # a DataLoader worker process
def test_an_image_broken_past_its_header_is_one_line_naming_it(small_folder, tmp_path, capsys):
    """A truncated JPEG passes the scan (its header and PIL's verify are fine) and breaks in a loader process:
    one line naming the file, from the worker's error, not PyTorch's "Caught ... in DataLoader worker"."""
    data = tmp_path / 'data'
    shutil.copytree(small_folder, data)
    victim = sorted((data / 'train').rglob('*.jpg'))[0]
    victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    with pytest.raises(SystemExit) as exit_:
        run_cli(trainer.main, [str(a) for a in ['--data', data, '--output', tmp_path / 'run', '--epochs', 1,
                                                '--freeze-features', '--workers', 1, '--batch-size', 32,
                                                '--no-progress']])
    err = capsys.readouterr().err
    assert exit_.value.code == 1, err[-2000:]
    assert err.count('\n') == 1 and victim.name in err and 'cannot decode' in err, err[-2000:]


@pytest.mark.parametrize('case', BAD)
def test_bad_input_is_one_line_and_writes_nothing(case, small_folder, tmp_path, capsys):
    root = tmp_path / 'bad'
    root.mkdir()
    paths = dict(root=root, small=small_folder, **_bad_folders(root))
    argv, code, message = BAD[case]
    argv = [a.format(**paths) for a in argv]
    if '--output' not in argv and '--resume' not in argv:
        argv += ['--output', str(root / 'run')]
    before = files_below(root), files_below(small_folder)
    with pytest.raises(SystemExit) as exit_:
        run_cli(trainer.main, argv + ['--workers', '0', '--no-progress'])
    err = capsys.readouterr().err
    assert exit_.value.code == code
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err, err
    assert (files_below(root), files_below(small_folder)) == before


@pytest.mark.slow
def test_init_of_another_architecture(trained_checkpoint, small_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(trainer.main, ['--data', str(small_folder), '--output', str(tmp_path / 'run'), '--init',
                               str(trained_checkpoint), '--model', 'alexnet'])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == 'error: --init %s holds a alexnet_bn, not a alexnet\n' % trained_checkpoint
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow  # a real process (imports torch): the quick loop has the in-process tests
def test_cli_error_has_no_traceback(tmp_path):
    result = run(['--data', tmp_path / 'nowhere', '--output', tmp_path / 'run'])
    assert result.returncode == 1
    assert result.stderr == f'error: data directory not found: {tmp_path / "nowhere"}\n'
    assert not (tmp_path / 'run').exists()


def test_augmentations_reach_timms_transform(small_folder):
    """Random resized crop, flip and colour jitter by default (the AlexNet recipe), each settable."""
    from alexnet_zoo.data import train_transform
    names = lambda t: [type(step).__name__ for step in t.transforms]  # noqa: E731
    default = trainer.Settings()
    steps = names(train_transform('alexnet_bn', default.scale, default.hflip, default.color_jitter))
    assert steps[:3] == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'ColorJitter']
    assert 'ColorJitter' not in names(train_transform('alexnet_bn', default.scale, 0.5, None))
    assert 'RandomHorizontalFlip' not in names(train_transform('alexnet_bn', default.scale, 0.0, 0.4))
    crop = train_transform('alexnet_bn', (0.5, 0.9), 0.5, None).transforms[0]
    assert crop.scale == (0.5, 0.9)
    assert 'RandAugment' in names(train_transform('alexnet_bn', default.scale, 0.5, None, 'rand-m9-mstd0.5'))


@pytest.fixture
def recorded(monkeypatch):
    """What a training run builds and runs, seen from inside: its optimizer, each batch timm's Mixup is given and
    gives back (images before and after, soft targets), and what the loss is given (its class, the logits' dtype,
    the targets). ``--amp bf16`` runs emulated where the CPU has no native bf16 (a tiny model: cheap)."""
    seen = {'optimizers': [], 'mixed': [], 'losses': [], 'inputs': []}
    build_optimizer, build_model = trainer.create_optimizer_v2, trainer.build_model

    def model_seen(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, args: seen['inputs'].append(args[0]) if m.training else None)
        return model
    monkeypatch.setattr(trainer, 'build_model', model_seen)
    monkeypatch.setattr(trainer, 'create_optimizer_v2',
                        lambda *args, **kwargs: seen['optimizers'].append(build_optimizer(*args, **kwargs))
                        or seen['optimizers'][-1])
    monkeypatch.setattr(trainer, 'native_bf16', lambda device: True)

    class Mixup(trainer.Mixup):
        def __call__(self, images, targets):
            before = images.clone()  # timm mixes in place
            images, soft = super().__call__(images, targets)
            seen['mixed'].append((before, images.clone(), targets, soft))
            return images, soft

    def recording(loss):
        class Loss(loss):
            def forward(self, logits, targets):
                seen['losses'].append((loss.__name__, logits.dtype, targets))
                return super().forward(logits, targets)
        return Loss
    monkeypatch.setattr(trainer, 'Mixup', Mixup)
    for name in ('SoftTargetCrossEntropy', 'LabelSmoothingCrossEntropy'):
        monkeypatch.setattr(trainer, name, recording(getattr(trainer, name)))
    return seen


def tiny_run(folder, output, *extra) -> int:
    """One epoch of timm's test_resnet (a few thousand weights) on the 2-class folder: two steps of 8 images."""
    return trainer.main(['--data', str(folder), '--output', str(output), '--model', 'test_resnet', '--epochs', '1',
                         '--batch-size', '8', '--workers', '0', '--no-progress', *extra])


@pytest.mark.slow  # trains (two steps of a tiny model)
@pytest.mark.parametrize('extra, optimizer, mixing, logits', [
    (['--opt', 'sgd', '--lr', '0.01', '--mixup', '0.2'], torch.optim.SGD, 'blend', torch.float32),
    (['--cutmix', '1.0', '--amp', 'bf16'], torch.optim.AdamW, 'box', torch.bfloat16),
])
def test_optimizer_mixing_and_amp_change_the_training(extra, optimizer, mixing, logits, recorded, small_folder,
                                                      tmp_path, capsys):
    """--opt sgd trains with SGD (AdamW by default); --mixup blends every pixel of each batch with another image,
    --cutmix pastes a box of it; either way the loss is timm's soft-target loss, given Mixup's soft targets (not
    the smoothed labels); --amp bf16 computes the forward pass in bf16 (fp32 otherwise). Each is recorded too."""
    assert tiny_run(small_folder, tmp_path / 'run', *extra) == 0
    assert [type(o) for o in recorded['optimizers']] == [optimizer]
    assert len(recorded['mixed']) == len(recorded['losses']) == len(recorded['inputs']) == 2  # every step mixed
    for (before, after, targets, soft), (loss, dtype, given), seen in zip(recorded['mixed'], recorded['losses'],
                                                                       recorded['inputs']):
        assert torch.equal(seen, after)  # the model is given the mixed batch
        changed = (after != before).any(dim=1).any(dim=0)  # the pixels (H x W) that mixing changed in the batch
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert changed.all() if mixing == 'blend' else (box.all() and box.numel() < changed.numel()), changed.float().mean()
        smoothed = torch.nn.functional.one_hot(targets, 2) * 0.9 + 0.05  # the labels with --smoothing 0.1 alone
        assert loss == 'SoftTargetCrossEntropy' and torch.equal(given, soft) and not torch.allclose(soft, smoothed)
        assert dtype == logits
    settings = json.loads((tmp_path / 'run' / 'config.json').read_text())['training']
    flags = dict(zip(extra[::2], extra[1::2]))
    assert settings['opt'] == flags.get('--opt', 'adamw') and settings['amp'] == flags.get('--amp')
    assert (settings['mixup'], settings['cutmix']) == (float(flags.get('--mixup', 0)), float(flags.get('--cutmix', 0)))


@pytest.mark.slow  # trains (a tiny model, two epochs in two runs)
def test_resume_with_more_epochs_goes_on_from_the_saved_epoch(recorded, small_folder, tmp_path, capsys):
    """``--resume RUN --epochs 2`` on a run of 1 epoch trains epoch 2 only (epoch 1 is kept as it was), on the
    schedule rebuilt for 2 epochs; the history and the state say 2. The run itself has the defaults' training:
    AdamW, no mixing, label smoothing on hard labels, fp32."""
    run = tmp_path / 'run'
    assert tiny_run(small_folder, run) == 0
    first = json.loads((run / 'metrics.json').read_text())['epochs']
    capsys.readouterr()
    assert trainer.main(['--data', str(small_folder), '--resume', str(run), '--epochs', '2', '--workers', '0',
                         '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'epoch 2/2' in out and 'epoch 1/' not in out, out
    metrics = json.loads((run / 'metrics.json').read_text())
    assert [e['epoch'] for e in metrics['epochs']] == [1, 2] and metrics['epochs'][0] == first[0]
    assert metrics['last_epoch'] == 2 and metrics['settings']['epochs'] == 2
    state = torch.load(run / 'train_state.pt', weights_only=True)
    assert state['epoch'] == 2 and state['settings']['epochs'] == 2 and state['scheduler']['t_initial'] == 2
    assert [e['epoch'] for e in state['metrics']] == [1, 2]
    assert [type(o) for o in recorded['optimizers']] == [torch.optim.AdamW] * 2 and not recorded['mixed']
    assert {(loss, dtype) for loss, dtype, _ in recorded['losses']} == {('LabelSmoothingCrossEntropy', torch.float32)}
    assert len(recorded['losses']) == 4  # two steps an epoch, epoch 1 not trained again


def test_amp_is_refused_without_native_bf16(small_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer, 'native_bf16', lambda device: False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(trainer.main, ['--data', str(small_folder), '--output', str(tmp_path / 'run'), '--amp', 'bf16'])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and 'AMX or AVX512-BF16' in err
    assert not (tmp_path / 'run').exists()
