"""A training run's folder: the checkpoint others load, the state ``--resume`` goes on from, the metrics.

``config.json`` + ``model.safetensors`` (timm's Hugging Face layout: ``timm.create_model("local-dir:RUN",
pretrained=True)``, ``load_model(checkpoint=RUN)``), ``train_state.pt`` (optimizer, scheduler, epoch, settings;
tensors and plain types only, so it loads with ``weights_only=True``), ``metrics.json`` and ``metrics.csv``.
"""
import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import save_checkpoint_dir
from .cli import first_line
from .files import PathLike, atomic_path, write_text_atomic

STATE_FILE = 'train_state.pt'
CHECKPOINT_FILES = ('config.json', 'model.safetensors')
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


def read_run_state(run: PathLike) -> dict:
    """A run's training state (loaded with ``weights_only=True``); one clear line when ``run`` is not a run."""
    run = Path(run)
    missing = [f for f in (STATE_FILE, *CHECKPOINT_FILES) if not (run / f).is_file()]
    if missing:
        raise FileNotFoundError(f'{run} is not a training run (no {missing[0]}); '
                                f'--resume takes an --output of this command')
    try:
        state = torch.load(run / STATE_FILE, map_location='cpu', weights_only=True, mmap=True)
        Settings(**state['settings'])
        int(state['epoch'])
    except Exception as e:  # any corrupt or foreign file
        raise ValueError(f'{run / STATE_FILE} is not a training state: {first_line(e)}') from None
    return state


def save_run(output: Path, model, optimizer, scheduler, settings, classes, history, metrics) -> None:
    """Checkpoint, then training state, then metrics; each file replaced atomically."""
    with tempfile.TemporaryDirectory(dir=output, prefix='.checkpoint-') as tmp:
        save_checkpoint_dir(model, tmp, classes)
        for name in CHECKPOINT_FILES:
            os.replace(Path(tmp) / name, output / name)
    state = dict(epoch=len(history), settings=asdict(settings), label_names=list(classes),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), metrics=history)
    with atomic_path(output / STATE_FILE) as tmp:
        torch.save(state, tmp)
    write_text_atomic(output / 'metrics.json', json.dumps(metrics, indent=2) + '\n')
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(output / 'metrics.csv', text.getvalue())
