"""Sample photographs: real images, timm preprocessing, deterministic crops, clear errors for bad folders."""
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN

from alexnet_zoo import data, samples


def test_photographs_are_real_rgb_images():
    photos = samples.photographs()
    assert len(photos) == len(samples.PHOTOGRAPHS) >= 16
    for name, image in photos:
        assert image.mode == 'RGB' and min(image.size) >= 160, name


@pytest.mark.parametrize('name,size', [('alexnet_bn', 227), ('alexnet', 224)])
def test_sample_batch_uses_the_models_data_config(name, size):
    names, batch = data.sample_batch(name)
    assert names == list(samples.PHOTOGRAPHS)
    assert batch.shape == (len(names), 3, size, size) and batch.dtype == torch.float32
    # normalised with ImageNet mean/std: per-channel means sit near 0, not near the raw 0.4-0.5
    assert batch.mean(dim=(0, 2, 3)).abs().max() < 1.0
    assert abs(batch.mean().item() - sum(IMAGENET_DEFAULT_MEAN) / 3) > 0.2
    # the same as torchvision's functional ops driven by the model's pretrained cfg, written out here
    import math
    import timm
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F
    cfg = timm.create_model(name).pretrained_cfg
    image = samples.photographs(['astronaut'])[0][1]
    image = F.resize(image, math.floor(size / cfg['crop_pct']), InterpolationMode(cfg['interpolation']))
    expected = F.normalize(F.to_tensor(F.center_crop(image, [size, size])), cfg['mean'], cfg['std'])
    torch.testing.assert_close(batch[0], expected)


def test_random_crops_are_deterministic_and_leave_the_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, labels = data.random_crops('alexnet_bn', 6, seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b, _ = data.random_crops('alexnet_bn', 6, seed=1)
    c, _ = data.random_crops('alexnet_bn', 6, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_folder_images_reads_a_users_folder(tmp_path):
    for name, image in samples.photographs(['coffee', 'rocket']):
        (tmp_path / 'sub').mkdir(exist_ok=True)
        image.save(tmp_path / 'sub' / f'{name}.jpg')
    (tmp_path / 'notes.txt').write_text('not an image')
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG garbage')
    found = samples.folder_images(tmp_path)
    assert [n for n, _ in found] == ['sub/coffee.jpg', 'sub/rocket.jpg']


def test_folder_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='image folder not found'):
        samples.folder_images(tmp_path / 'missing')
    (tmp_path / 'a.txt').write_text('x')
    with pytest.raises(ValueError, match='no readable images'):
        samples.folder_images(tmp_path)
    with pytest.raises(ValueError, match='unknown sample photograph'):
        samples.photographs(['nope'])


@pytest.mark.slow  # a real process: python -m alexnet_zoo.samples
def test_write_folder_command(tmp_path):
    import subprocess
    import sys
    out = tmp_path / 'photos'
    cmd = [sys.executable, '-m', 'alexnet_zoo.samples', '--write-folder', str(out), '--train-per-class', '2',
           '--val-per-class', '1', '--size', '64']
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / 'train').iterdir()) == sorted(samples.PHOTOGRAPHS)
    assert len(list((out / 'train').rglob('*.jpg'))) == 2 * len(samples.PHOTOGRAPHS)
    assert len(list((out / 'val').rglob('*.jpg'))) == len(samples.PHOTOGRAPHS)
    assert done.stdout and not done.stderr


def test_write_folder_bad_size_is_one_line(tmp_path, capsys):
    from alexnet_zoo.cli import run_cli
    with pytest.raises(SystemExit) as exit_:
        run_cli(samples.main, ['--write-folder', str(tmp_path / 'photos'), '--size', '0'])
    lines = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and '--size: must be' in lines[0] and 'got 0' in lines[0], lines
    assert not (tmp_path / 'photos').exists()
