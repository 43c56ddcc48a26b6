"""A training run's folder: the checkpoint others load, the state ``--resume`` goes on from, the metrics.

``config.json`` + ``model.safetensors``: the best validation epoch, in timm's Hugging Face layout
(``timm.create_model("local-dir:RUN", pretrained=True)``, ``load_model(checkpoint=RUN)``), its ``config.json``
saying which epoch and with which settings (``training``); ``last/``: the same for the last epoch; ``train_state.pt``
(optimizer, scheduler, epoch, settings; tensors and plain types only, so it loads with ``weights_only=True``), to
resume the last epoch from; ``metrics.json`` (with ``best_epoch``) and ``metrics.csv``; ``manifest.json``, which
binds them all by hash. Each epoch's files are saved as one state (``alexnet_zoo.manifest``): a run interrupted
while saving is either still the previous epoch's or is finished as the new one, and ``--resume`` refuses files
that do not belong together.
"""
import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

from .checkpoint import save_checkpoint_dir
from .cli import first_line
from .files import PathLike
from .manifest import RUN_KIND, save_set, verify

STATE_FILE = 'train_state.pt'
CHECKPOINT_FILES = ('config.json', 'model.safetensors')
LAST = 'last'  # RUN/last/: the last epoch's checkpoint, what --resume goes on from; RUN/ holds the best epoch
METRIC_FIELDS = ('epoch', 'lr', 'train_loss', 'train_top1', 'val_loss', 'val_top1', 'val_top5', 'seconds')


@dataclass
class Settings:
    """What defines a run; saved in its state, so that ``--resume`` goes on with the same ones."""
    model: Optional[str] = None  # None: the --init directory's architecture, else alexnet_bn
    epochs: int = 3
    batch_size: int = 16  # per process
    lr: float = 1e-4  # AdamW fine-tuning rate; from scratch or with frozen features 1e-3 learns faster
    weight_decay: float = 0.05
    opt: str = 'adamw'
    sched: str = 'cosine'
    warmup_epochs: int = 0
    smoothing: float = 0.1
    seed: int = 0
    init: Optional[str] = None  # checkpoint to start from (any form load_model reads), with a new classifier
    pretrained: bool = False  # start from the model's pretrained cfg, with a new classifier
    freeze_features: bool = False  # train only the head
    # augmentation, all through timm's create_transform / Mixup; the AlexNet recipe's three are on by default
    scale: Tuple[float, float] = (0.08, 1.0)  # random resized crop: area range
    hflip: float = 0.5  # horizontal flip probability
    color_jitter: float = 0.4  # timm's brightness/contrast/saturation strength (0: off)
    auto_augment: Optional[str] = None  # a timm policy such as rand-m9-mstd0.5 (replaces colour jitter)
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    amp: Optional[str] = None  # 'bf16': autocast on CUDA or on CPUs with native bf16


def read_run_state(run: PathLike) -> dict:
    """A run's training state (loaded with ``weights_only=True``); one clear line when ``run`` is not a run."""
    run = Path(run)
    manifest = verify(run) if run.is_dir() else None  # every file of the run, or one line naming the stray one
    missing = [f for f in (STATE_FILE, *CHECKPOINT_FILES) if not (run / f).is_file()]
    if missing:
        raise FileNotFoundError(f'{run} is not a training run (no {missing[0]}); '
                                f'--resume takes an --output of this command')
    try:
        state = torch.load(run / STATE_FILE, map_location='cpu', weights_only=True, mmap=True)
        state['settings'] = asdict(Settings(**state['settings']))  # a run of an older version: today's defaults
        int(state['epoch'])
    except Exception as e:  # any corrupt or foreign file
        raise ValueError(f'{run / STATE_FILE} is not a training state: {first_line(e)}') from None
    if manifest is not None and manifest.get('epoch') != state['epoch']:
        raise ValueError(f'{run}: {STATE_FILE} is from epoch {state["epoch"]}, its manifest.json from epoch '
                         f'{manifest.get("epoch")}: the files do not belong together')
    return state


def last_checkpoint(run: PathLike) -> Path:
    """The checkpoint --resume loads: RUN/last/ (RUN itself in runs that kept only the last epoch)."""
    run = Path(run)
    return run / LAST if (run / LAST / CHECKPOINT_FILES[1]).is_file() else run


def save_run(output: Path, model, optimizer, scheduler, settings, classes, history, metrics, best: bool) -> None:
    """The last epoch's checkpoint (RUN/last/), the best epoch's (RUN/, when ``best``: what others load), the
    training state and the metrics, saved as one state with its manifest (``alexnet_zoo.manifest``)."""
    about = {'training': {**asdict(settings), 'epoch': len(history), 'val_top1': history[-1]['val_top1']}}
    state = dict(epoch=len(history), settings=asdict(settings), label_names=list(classes),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), metrics=history)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(history)

    def write(staging: Path) -> None:
        for place in [staging / LAST] + ([staging] if best else []):
            place.mkdir(exist_ok=True)
            save_checkpoint_dir(model, place, classes, about)
        torch.save(state, staging / STATE_FILE)
        (staging / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
        (staging / 'metrics.csv').write_text(text.getvalue())

    kept = [] if best else [name for name in CHECKPOINT_FILES if (output / name).is_file()]
    save_set(output, write, {'kind': RUN_KIND, 'epoch': len(history), 'best_epoch': metrics.get('best_epoch')},
             keep=kept)
