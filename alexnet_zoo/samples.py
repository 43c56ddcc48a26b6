"""Real photographs for every stage (calibration, parity, demos, tests), with no download.

The photographs are the ones scikit-image ships inside its wheel; a user's folder of images works the same way.
``python -m alexnet_zoo.samples`` lists them or writes a demo ImageFolder of crops of them. Preprocessing for a
model lives in ``alexnet_zoo.data``.
"""
import random
from importlib.resources import files
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from .cli import ArgumentParser, bounded, first_line, positive, run_cli, seed
from .files import PathLike, ensure_writable_dir

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own bound (89 MP): it warns past it and refuses past twice it
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

Photo = Tuple[str, Image.Image]


def photographs(names: Optional[Sequence[str]] = None) -> List[Photo]:
    """The bundled photographs as (name, RGB PIL image), in a fixed order."""
    names = list(PHOTOGRAPHS) if names is None else list(names)
    unknown = [n for n in names if n not in PHOTOGRAPHS]
    if unknown:
        raise ValueError(f'unknown sample photograph(s): {", ".join(unknown)}; known: {", ".join(PHOTOGRAPHS)}')
    data = files('skimage') / 'data'
    return [(n, open_rgb(Path(str(data / PHOTOGRAPHS[n])))) for n in names]


def folder_images(folder: PathLike) -> List[Photo]:
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
            out.append((str(path.relative_to(folder)), open_rgb(path)))
        except UnreadableImage:
            continue  # not an image after all; an empty result is reported below
    if not out:
        raise ValueError(f'no readable images in {folder}')
    return out


def write_image_folder(
        root: PathLike,
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


class UnreadableImage(OSError):
    """A file that is not an image, or whose data is broken."""


class ImageTooLarge(ValueError):
    """An image whose header promises more pixels than any photograph needs: refused before it is decoded."""


def open_rgb(path: PathLike) -> Image.Image:
    """The image as RGB (grey, palette, CMYK and 16-bit ones converted), refused in one line before decoding when
    its header promises more than MAX_PIXELS (a decompression bomb: a few KB that decode to gigabytes)."""
    with open_header(path) as im:
        try:
            return im.convert('RGB')
        except Exception as e:  # PIL raises many types for broken data (OSError, ValueError, SyntaxError, ...)
            raise UnreadableImage(f'{path}: cannot decode ({first_line(e)})') from None


def open_header(path: PathLike) -> Image.Image:
    """``Image.open`` (which reads the header only), with the size checked."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:  # PIL's own refusal, past twice its limit
        raise ImageTooLarge(f'{path}: more than {2 * MAX_PIXELS} pixels; refused (a decompression bomb?)') from None
    except FileNotFoundError:
        raise
    except Exception as e:
        raise UnreadableImage(f'{path}: not an image PIL can read ({first_line(e)})') from None
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f'{path}: {im.width}x{im.height} pixels, more than the {MAX_PIXELS} an image may have; '
                            f'refused before decoding (a decompression bomb?)')
    return im


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m alexnet_zoo.samples',
                            description='List the sample photographs, or write an ImageFolder of crops of them.')
    parser.add_argument('--write-folder', metavar='DIR', help='write DIR/train/<photo>/*.jpg and DIR/val/<photo>/*.jpg')
    parser.add_argument('--train-per-class', type=positive(int, 10_000), default=20)
    parser.add_argument('--val-per-class', type=positive(int, 10_000), default=5)
    parser.add_argument('--size', type=bounded(int, 16, 4096), default=128, help='side of the square crops in pixels')
    parser.add_argument('--seed', type=seed(), default=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.write_folder:
        for name, image in photographs():
            print(f'{name}\t{image.size[0]}x{image.size[1]}')
        return 0
    root = write_image_folder(ensure_writable_dir(args.write_folder), train_per_class=args.train_per_class,
                              val_per_class=args.val_per_class, size=args.size, seed=args.seed)
    print(f'wrote {len(PHOTOGRAPHS)} classes x ({args.train_per_class} train + {args.val_per_class} val) crops to {root}')
    return 0


if __name__ == '__main__':
    run_cli(main)
