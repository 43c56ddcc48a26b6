"""Real photographs for every stage (calibration, parity, demos, tests), with no download.

The photographs are the ones scikit-image ships inside its wheel; a user's folder of images works the same way.
Preprocessing is always timm's: ``resolve_data_config`` + ``create_transform`` for the model at hand.
"""
import random
from importlib.resources import files
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg

# Photographs bundled in scikit-image's wheel (skimage/data); grey ones are converted to RGB.
PHOTOGRAPHS = {
    'astronaut': 'astronaut.png',
    'brick': 'brick.png',
    'camera': 'camera.png',
    'cell': 'cell.png',
    'chelsea': 'chelsea.png',
    'clock': 'clock_motion.png',
    'coffee': 'coffee.png',
    'coins': 'coins.png',
    'grass': 'grass.png',
    'gravel': 'gravel.png',
    'hubble_deep_field': 'hubble_deep_field.jpg',
    'immunohistochemistry': 'ihc.png',
    'moon': 'moon.png',
    'motorcycle': 'motorcycle_left.png',
    'page': 'page.png',
    'retina': 'retina.jpg',
    'rocket': 'rocket.jpg',
    'text': 'text.png',
}
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')

ModelOrName = Union[torch.nn.Module, str]
Photo = Tuple[str, Image.Image]


def photographs(names: Optional[Sequence[str]] = None) -> List[Photo]:
    """The bundled photographs as (name, RGB PIL image), in a fixed order."""
    names = list(PHOTOGRAPHS) if names is None else list(names)
    unknown = [n for n in names if n not in PHOTOGRAPHS]
    if unknown:
        raise ValueError(f'unknown sample photograph(s): {", ".join(unknown)}; known: {", ".join(PHOTOGRAPHS)}')
    data = files('skimage') / 'data'
    return [(n, _open_rgb(Path(str(data / PHOTOGRAPHS[n])))) for n in names]


def folder_images(folder: Union[str, Path]) -> List[Photo]:
    """Every readable image below ``folder`` as (relative path, RGB PIL image), sorted by path.

    Raises FileNotFoundError / ValueError with one clear line when the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'image folder not found: {folder}')
    out = []
    for path in sorted(p for p in folder.rglob('*') if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            out.append((str(path.relative_to(folder)), _open_rgb(path)))
        except (UnidentifiedImageError, OSError):
            continue  # not an image after all; an empty result is reported below
    if not out:
        raise ValueError(f'no readable images in {folder}')
    return out


def data_config(model: ModelOrName) -> dict:
    """timm's data config (input size, interpolation, mean, std, crop) for a model or a registered model name."""
    if isinstance(model, str):
        cfg = get_pretrained_cfg(model)
        if cfg is None:
            raise ValueError(f'unknown model: {model}')
        return resolve_data_config(pretrained_cfg=cfg.to_dict())
    return resolve_data_config(model=model)


def eval_transform(model: ModelOrName):
    return create_transform(**data_config(model), is_training=False)


def train_transform(model: ModelOrName):
    """timm's training transform (random resized crop and flip), without colour jitter or auto-augment."""
    return create_transform(**data_config(model), is_training=True, color_jitter=None, auto_augment=None)


def sample_batch(model: ModelOrName, images: Optional[List[Photo]] = None) -> Tuple[List[str], torch.Tensor]:
    """The photographs (or ``images``) preprocessed for ``model`` as one float32 NCHW batch, with their names."""
    images = photographs() if images is None else images
    transform = eval_transform(model)
    return [n for n, _ in images], torch.stack([transform(im) for _, im in images])


def random_crops(
        model: ModelOrName,
        count: int,
        seed: int = 0,
        images: Optional[List[Photo]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count`` random resized crops of the photographs, with the index of the photograph each came from.

    Deterministic for a seed; the global RNGs are left as they were.
    """
    images = photographs() if images is None else images
    transform = train_transform(model)
    with _seeded(seed):
        labels = torch.arange(count) % len(images)
        crops = torch.stack([transform(images[i][1]) for i in labels.tolist()])
    return crops, labels


def iter_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def fit_photographs(
        model: torch.nn.Module,
        steps: int = 60,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
) -> torch.nn.Module:
    """Teach ``model`` to tell the photographs apart (class = photograph) on random crops, in place.

    Parity figures mean little on random weights (top-1/top-2 logit margins are tiny); a few dozen steps give
    confident, trained-like logits. Used by the tests and the demo; real training is ``alexnet_zoo.train``.
    """
    images = photographs()
    model.reset_classifier(len(images))
    crops, labels = random_crops(model, steps * batch_size // 4, seed=seed, images=images)
    with _seeded(seed):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        model.train()
        for step in range(steps):
            idx = torch.randint(len(crops), (batch_size,))
            loss = torch.nn.functional.cross_entropy(model(crops[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def write_image_folder(
        root: Union[str, Path],
        names: Optional[Sequence[str]] = None,
        train_per_class: int = 20,
        val_per_class: int = 5,
        size: int = 128,
        seed: int = 0,
) -> Path:
    """Write ``root/train/<name>/*.jpg`` and ``root/val/<name>/*.jpg``: random crops of the photographs, one class each.

    A small real data set in the layout ``python -m alexnet_zoo.train`` reads, made offline in about a second. Each
    crop covers 10-50 % of its photograph (aspect 3:4 to 4:3), resized to ``size`` x ``size``; the same seed gives
    the same files.
    """
    root = Path(root)
    rng = random.Random(seed)
    for name, image in photographs(names):
        for split, count in (('train', train_per_class), ('val', val_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _random_crop(image, rng, size).save(folder / f'{name}_{i:03d}.jpg', quality=90)
    return root


def _random_crop(image: Image.Image, rng: random.Random, size: int) -> Image.Image:
    width, height = image.size
    area = rng.uniform(0.1, 0.5) * width * height
    aspect = rng.uniform(3 / 4, 4 / 3)
    w = min(width, round((area * aspect) ** 0.5))
    h = min(height, round((area / aspect) ** 0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert('RGB')


class _seeded:
    """Seed torch and random for a block, then put both RNGs back."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self._fork = torch.random.fork_rng()
        self._fork.__enter__()
        self._py_state = random.getstate()
        torch.manual_seed(self.seed)
        random.seed(self.seed)

    def __exit__(self, *exc):
        random.setstate(self._py_state)
        return self._fork.__exit__(*exc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .fileio import ArgumentParser, ensure_writable_dir
    parser = ArgumentParser(prog='python -m alexnet_zoo.samples',
                            description='List the sample photographs, or write an ImageFolder of crops of them.')
    parser.add_argument('--write-folder', metavar='DIR', help='write DIR/train/<photo>/*.jpg and DIR/val/<photo>/*.jpg')
    parser.add_argument('--train-per-class', type=int, default=20)
    parser.add_argument('--val-per-class', type=int, default=5)
    parser.add_argument('--size', type=int, default=128, help='side of the square crops in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if not args.write_folder:
        for name, image in photographs():
            print(f'{name}\t{image.size[0]}x{image.size[1]}')
        return 0
    if min(args.train_per_class, args.val_per_class, args.size) < 1:
        parser.error('--train-per-class, --val-per-class and --size must be positive')
    root = write_image_folder(ensure_writable_dir(args.write_folder), train_per_class=args.train_per_class,
                              val_per_class=args.val_per_class, size=args.size, seed=args.seed)
    print(f'wrote {len(PHOTOGRAPHS)} classes x ({args.train_per_class} train + {args.val_per_class} val) crops to {root}')
    return 0


if __name__ == '__main__':
    from .fileio import run_cli
    run_cli(main)
