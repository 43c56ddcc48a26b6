"""Fine-tune a model on a folder of images: ``python -m alexnet_zoo.train --data DIR --output RUN``.

DIR holds ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``; the classes come from the folder names. Every piece
is timm's: the model, its data config and transforms (random resized crop + flip for training), the optimizer and
scheduler factories, the label smoothing loss, the accuracy metric. RUN ends up in timm's Hugging Face layout
(``config.json`` with ``label_names`` + ``model.safetensors``: ``timm.create_model("local-dir:RUN",
pretrained=True)``, ``load_model(checkpoint=RUN)``), with ``train_state.pt`` (optimizer, scheduler, epoch,
settings; tensors and plain types only, so it loads with ``weights_only=True``) to resume from, and
``metrics.json`` / ``metrics.csv`` of the epochs. Every file is replaced atomically after each epoch.

Data-parallel under ``torchrun --nproc-per-node N``: gloo on CPU, NCCL on GPUs, each process reads its share of
the images (``--batch-size`` is per process) and only rank 0 writes.
"""
import contextlib
import os
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import timm
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import is_model
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import accuracy, random_seed
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from .checkpoint import CheckpointError, create_pretrained, load_model, load_weights, unknown_model
from .cli import MAX_BATCH, ArgumentParser, UsageError, bounded, positive, run_cli, seed
from .data import eval_transform, image_folders, train_transform
from .files import PathLike, ensure_writable_dir
from .run import Settings, last_checkpoint, read_run_state, save_run

SCHEDULERS = ('cosine', 'tanh', 'step', 'multistep', 'poly', 'constant', 'wsd')  # timm's, stepped per epoch


def train(
        data: PathLike,
        output: PathLike,
        settings: Optional[Settings] = None,
        resume: Optional[PathLike] = None,
        workers: int = 2,
        progress: bool = True,
) -> dict:
    """Fine-tune on ``data`` into ``output``; returns the metrics written to ``output/metrics.json``.

    With ``resume`` (a run directory), training goes on from its last epoch with its settings and optimizer state;
    ``settings`` (None: the run's) may then differ from the run's only in ``epochs``. Bad input raises a one-line
    ValueError/OSError before anything is written.
    """
    train_set, val_set = image_folders(data)
    classes = train_set.classes
    state = None
    if resume is not None:
        state = read_run_state(resume)
        settings = _check_resume(state, settings, classes, resume)
    settings = settings or Settings()
    check_settings(settings)
    if settings.init and settings.pretrained:
        raise UsageError('--init and --pretrained both choose the starting weights; give one')

    rank, world, device = _start_distributed()
    try:
        model = build_model(settings, classes, resume)
        settings = replace(settings, model=model.pretrained_cfg['architecture'])
        if rank == 0:
            ensure_writable_dir(output)
        return _fit(model, settings, train_set, val_set, Path(output), state, rank, world, device, workers, progress)
    finally:
        if world > 1:
            dist.destroy_process_group()


def build_model(settings: Settings, classes: Sequence[str], resume: Optional[PathLike] = None) -> torch.nn.Module:
    """The model to train: the resumed run's weights, ``init``'s or pretrained ones with a new classifier, or random."""
    torch.manual_seed(settings.seed)
    if resume is not None:
        model = load_model(checkpoint=last_checkpoint(resume)).model
    elif settings.init:
        model = _from_checkpoint(settings.init, settings.model, len(classes))
    else:
        name = settings.model or 'alexnet_bn'
        try:
            model = create_pretrained(name, settings.pretrained, num_classes=len(classes))
        except CheckpointError as e:  # "alexnet_bn has no published pretrained weights; ..."
            raise ValueError(f'--pretrained: {e}' if settings.pretrained else str(e)) from None
        except OSError as e:  # no network, no cached copy
            raise OSError(f'--pretrained: cannot fetch the weights of {name}: {e}') from None
    model.pretrained_cfg = {**model.pretrained_cfg, 'num_classes': len(classes), 'label_names': list(classes)}
    if settings.freeze_features:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(_head_prefixes(model))
    return model


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog='python -m alexnet_zoo.train', description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='folder with train/<class>/* and val/<class>/*')
    parser.add_argument('--output', help='run directory to write (default: the --resume directory)')
    parser.add_argument('--model', help='timm model name (default alexnet_bn, or the --init directory\'s model)')
    parser.add_argument('--epochs', type=positive(int, 10_000), help=f'total epochs (default {Settings.epochs})')
    parser.add_argument('--batch-size', type=positive(int, MAX_BATCH), help=f'per process (default {Settings.batch_size})')
    parser.add_argument('--lr', type=positive(float, 100), help=f'base learning rate (default {Settings.lr})')
    parser.add_argument('--weight-decay', type=bounded(float, 0, 1), help=f'(default {Settings.weight_decay})')
    parser.add_argument('--opt', help=f'timm optimizer name (default {Settings.opt})')
    parser.add_argument('--sched', choices=SCHEDULERS, help=f'timm scheduler (default {Settings.sched})')
    parser.add_argument('--warmup-epochs', type=bounded(int, 0, 10_000), help=f'(default {Settings.warmup_epochs})')
    parser.add_argument('--smoothing', type=bounded(float, 0, 0.99), help=f'label smoothing (default {Settings.smoothing})')
    parser.add_argument('--seed', type=seed(), help=f'(default {Settings.seed})')
    start = parser.add_mutually_exclusive_group()
    start.add_argument('--init', help='start from this checkpoint (.safetensors, .pth, run directory); new classifier')
    start.add_argument('--pretrained', action='store_true', default=None, help='start from the pretrained weights')
    parser.add_argument('--freeze-features', action='store_true', default=None, help='train only the head')
    augment = parser.add_argument_group('augmentation (timm\'s; random resized crop, flip and colour jitter on by default)')
    augment.add_argument('--scale', type=bounded(float, 0, 1), nargs=2, metavar=('MIN', 'MAX'),
                         help=f'random resized crop area range (default {Settings.scale[0]} {Settings.scale[1]})')
    augment.add_argument('--hflip', type=bounded(float, 0, 1), help=f'horizontal flip probability (default {Settings.hflip})')
    augment.add_argument('--color-jitter', type=bounded(float, 0, 10),
                         help=f'colour jitter strength, 0 for none (default {Settings.color_jitter}, timm\'s)')
    augment.add_argument('--auto-augment', help='timm auto-augment policy, e.g. rand-m9-mstd0.5 (default: off)')
    augment.add_argument('--mixup', type=bounded(float, 0, 100), help='mixup alpha, e.g. 0.2 (default: off)')
    augment.add_argument('--cutmix', type=bounded(float, 0, 100), help='cutmix alpha, e.g. 1.0 (default: off)')
    parser.add_argument('--amp', choices=['bf16'],
                        help='bf16 autocast for the training forward pass (CUDA, or a CPU with AMX or AVX512-BF16)')
    parser.add_argument('--resume', help='run directory to go on from (keeps its settings; --epochs may raise them)')
    parser.add_argument('--workers', type=bounded(int, 0, 64), default=2, help='data loading processes per process (default 2)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    given = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name) is not None}
    if args.resume:
        changed = [f'--{k.replace("_", "-")}' for k in given if k != 'epochs']
        if changed:
            raise UsageError(f'{changed[0]} cannot change when resuming: a run keeps its settings (only --epochs may)')
        settings = replace(Settings(**read_run_state(args.resume)['settings']), **given)
    else:
        if not args.output:
            raise UsageError('--output is required (or --resume RUN)')
        settings = Settings(**given)
    if settings.model is not None and not is_model(settings.model):
        raise UsageError(unknown_model(settings.model))
    if settings.opt not in list_optimizers():
        raise UsageError(f'unknown optimizer: {settings.opt} (timm.optim.list_optimizers() names them)')
    check_settings(settings)
    train(args.data, args.output or args.resume, settings, args.resume, args.workers, not args.no_progress)
    return 0


def check_settings(settings: Settings) -> None:
    """What the command line cannot check alone: ranges, pairs, and the hardware --amp needs."""
    low, high = settings.scale
    if not 0 < low <= high <= 1:
        raise UsageError(f'--scale needs 0 < MIN <= MAX <= 1, got {low} {high}')
    if not 0 <= settings.hflip <= 1:
        raise UsageError(f'--hflip is a probability, got {settings.hflip}')
    if min(settings.color_jitter, settings.mixup, settings.cutmix) < 0:
        raise UsageError('--color-jitter, --mixup and --cutmix cannot be negative')
    if (settings.mixup > 0 or settings.cutmix > 0) and settings.batch_size % 2:
        raise UsageError(f'--mixup/--cutmix mix pairs of images: --batch-size must be even, got {settings.batch_size}')
    device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')
    if settings.amp == 'bf16' and not native_bf16(device):
        raise UsageError('--amp bf16 needs a CUDA GPU or a CPU with AMX or AVX512-BF16; this CPU has neither '
                         '(PyTorch would emulate bf16, slower than fp32)')


def _fit(model, settings, train_set, val_set, output, state, rank, world, device, workers, progress) -> dict:
    """Train from the run's last epoch (or the first) to ``settings.epochs``: each epoch trains, is validated by every
    process on rank 0's model and saved by rank 0; returns the run's metrics."""
    train_set.transform = train_transform(model, settings.scale, settings.hflip, settings.color_jitter or None,
                                          settings.auto_augment)
    val_set.transform = eval_transform(model)
    model.to(device)
    optimizer, scheduler, history, start = _optimization(model, settings, state)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None) \
        if world > 1 else model
    batch_size = _batch_size(settings, len(train_set), rank, world)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed)
    loader_args = dict(num_workers=workers, pin_memory=device.type == 'cuda')
    train_loader = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)), settings.batch_size, **loader_args)
    loss_fn, mixup = _loss(settings, len(train_set.classes))
    autocast = _autocast(settings.amp, device)

    run = dict(model=settings.model, classes=train_set.classes, settings=asdict(settings), world_size=world,
               batch_size=batch_size * world, device=device.type, train_images=len(train_set), val_images=len(val_set))
    for epoch in range(start, settings.epochs):
        began = time.perf_counter()
        random_seed(settings.seed + 1000 * epoch, rank)  # augmentation and dropout: the same again on --resume
        sampler.set_epoch(epoch)
        scheduler.step(epoch)
        lr = optimizer.param_groups[0]['lr']
        _train_mode(net, model, settings.freeze_features)
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{settings.epochs}', unit='batch',
                   disable=not (progress and rank == 0), leave=False)
        sums = _train_epoch(net, bar, optimizer, loss_fn, mixup, autocast, device)
        val = _validate(model, val_loader, device, world, sums)
        row = _epoch_row(epoch, lr, sums, val, began)
        best = not history or row['val_top1'] > max(h['val_top1'] for h in history)
        history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
        metrics = _metrics(run, history)
        if rank == 0:
            save_run(output, model, optimizer, scheduler, settings, train_set.classes, history, metrics, best)
            print(_epoch_line(row, settings.epochs, best), flush=True)
    return _metrics(run, history)


def _optimization(model: torch.nn.Module, settings: Settings, state: Optional[dict]):
    """(optimizer, scheduler, history, first epoch): a resumed run goes on with its optimizer's state and, unless its
    total of epochs changed, its schedule, so that it ends where an uninterrupted run would."""
    optimizer = create_optimizer_v2(model, settings.opt, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, settings.sched, num_epochs=settings.epochs,
                                       warmup_epochs=settings.warmup_epochs)
    history, start = [], 0
    if state is not None:
        optimizer.load_state_dict(state['optimizer'])
        if state['settings']['epochs'] == settings.epochs:
            scheduler.load_state_dict(state['scheduler'])  # else: the schedule is rebuilt for the new total
        history, start = list(state['metrics']), int(state['epoch'])
    return optimizer, scheduler, history, start


def _batch_size(settings: Settings, images: int, rank: int, world: int) -> int:
    """The per-process batch: at most this process's share of the ``images``, an even size for Mixup's pairs, and at
    least 2, since a BatchNorm layer cannot train on a batch of one."""
    share = len(range(rank, images, world))
    batch_size = min(settings.batch_size, share)  # BatchNorm needs more than one image per batch
    if settings.mixup > 0 or settings.cutmix > 0:
        batch_size -= batch_size % 2  # timm's Mixup mixes pairs
    if batch_size < 2:
        raise ValueError(f'{images} training images are too few for {world} process(es)')
    return batch_size


def _loss(settings: Settings, num_classes: int):
    """(loss, Mixup or None): mixup and cutmix turn labels into soft targets, which need timm's soft-target loss."""
    loss_fn = LabelSmoothingCrossEntropy(settings.smoothing) if settings.smoothing > 0 else torch.nn.CrossEntropyLoss()
    mixup = None
    if settings.mixup > 0 or settings.cutmix > 0:  # timm's Mixup mixes pairs (the batch size must be even) ...
        mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix, label_smoothing=settings.smoothing,
                      num_classes=num_classes)
        loss_fn = SoftTargetCrossEntropy()  # ... into soft targets, with label smoothing folded in
    return loss_fn, mixup


def _train_mode(net: torch.nn.Module, model: torch.nn.Module, freeze_features: bool) -> None:
    """Training mode, except for frozen features' BatchNorm layers, which keep their running statistics."""
    net.train()
    if freeze_features:
        head = _head_prefixes(model)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not name.startswith(head):
                module.eval()


def _train_epoch(net, batches, optimizer, loss_fn, mixup, autocast, device: torch.device) -> torch.Tensor:
    """One pass over ``batches`` (a tqdm bar, which shows the running figures); returns sums (loss * n, correct top-1,
    n) rather than means, so that processes can all-reduce them."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct top-1, n
    for images, targets in batches:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        images, soft = mixup(images, targets) if mixup is not None else (images, targets)
        with autocast():
            logits = net(images)
            loss = loss_fn(logits, soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(targets)
        sums += torch.tensor([loss.item() * n, accuracy(logits.detach(), targets)[0].item() * n / 100, n],
                             dtype=torch.float64, device=device)
        batches.set_postfix(loss=f'{sums[0] / sums[2]:.3f}', acc=f'{100 * sums[1] / sums[2]:.1f}%')
    return sums


def _validate(model: torch.nn.Module, loader: DataLoader, device: torch.device, world: int,
              sums: torch.Tensor) -> torch.Tensor:
    """The validation sums of rank 0's model, the one that is saved; with several processes, ``sums`` (training's) and
    the result are all-reduced over them."""
    if world > 1:  # every process validates rank 0's model, the one that is saved
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    val = evaluate(model, loader, device)
    if world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(val)
    return val


def _epoch_row(epoch: int, lr: float, sums: torch.Tensor, val: torch.Tensor, began: float) -> dict:
    """An epoch's line of metrics.json: the means of the summed figures, in percent where they are accuracies."""
    return dict(epoch=epoch + 1, lr=lr, train_loss=(sums[0] / sums[2]).item(),
                train_top1=(100 * sums[1] / sums[2]).item(), val_loss=(val[0] / val[3]).item(),
                val_top1=(100 * val[1] / val[3]).item(), val_top5=(100 * val[2] / val[3]).item(),
                seconds=time.perf_counter() - began)


def _epoch_line(row: dict, epochs: int, best: bool) -> str:
    """What a user watching the run reads after each epoch, including whether it became the run's model."""
    return (f'epoch {row["epoch"]}/{epochs}: train loss {row["train_loss"]:.3f} '
            f'top-1 {row["train_top1"]:.1f}%, val loss {row["val_loss"]:.3f} top-1 {row["val_top1"]:.1f}% '
            f'top-5 {row["val_top5"]:.1f}%, lr {row["lr"]:.2e}, {row["seconds"]:.1f} s'
            + (' (best so far: saved as the run\'s model)' if best else ''))


def _metrics(run: dict, history: List[dict]) -> dict:
    """The run's figures: every epoch, and which one is the run's model (the first with the best val top-1)."""
    best = max(history, key=lambda h: h['val_top1'])
    return dict(run, epochs=history, best_epoch=best['epoch'], best_val_top1=best['val_top1'],
                last_epoch=history[-1]['epoch'])


def native_bf16(device: torch.device) -> bool:
    """bf16 that the hardware computes (CUDA, AMX or AVX512-BF16); elsewhere PyTorch emulates it, slower than fp32."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def _autocast(amp: Optional[str], device: torch.device):
    """The forward pass's precision: ``torch.autocast`` in bf16 for ``--amp bf16``, else fp32."""
    if amp is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Sums over ``loader``: (cross-entropy * n, correct top-1, correct top-5, n), to all-reduce across processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        n = len(targets)
        top1, top5 = accuracy(logits, targets, topk=(1, 5))
        loss = torch.nn.functional.cross_entropy(logits, targets)
        sums += torch.tensor([loss.item() * n, top1.item() * n / 100, top5.item() * n / 100, n],
                             dtype=torch.float64, device=device)
    return sums


def _check_resume(state: dict, settings: Optional[Settings], classes: List[str], run) -> Settings:
    saved = Settings(**state['settings'])
    settings = settings or saved
    if replace(settings, epochs=saved.epochs, model=settings.model or saved.model) != saved:
        raise UsageError(f'{run} was trained with other settings; resuming keeps them (only the epochs may change)')
    if list(state['label_names']) != list(classes):
        raise ValueError(f'{run} was trained on classes {state["label_names"]}, the data has {classes}')
    if settings.epochs <= int(state['epoch']):
        raise UsageError(f'{run} has already trained {state["epoch"]} epochs; ask for more with --epochs')
    return settings


def _from_checkpoint(checkpoint: str, name: Optional[str], num_classes: int) -> torch.nn.Module:
    """A model with ``checkpoint``'s weights (a run directory brings its own architecture) and a new classifier."""
    path = Path(checkpoint)
    if path.is_dir():
        loaded = load_model(checkpoint=path)
        if name and name != loaded.name:
            raise UsageError(f'--init {path} holds a {loaded.name}, not a {name}')
        loaded.model.reset_classifier(num_classes)
        return loaded.model
    model = timm.create_model(name or 'alexnet_bn', num_classes=num_classes)
    load_weights(model, path, new_classifier=True)
    return model


def _head_prefixes(model: torch.nn.Module) -> Tuple[str, ...]:
    return 'head.', model.pretrained_cfg.get('classifier', 'head.fc') + '.'


def _start_distributed() -> Tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun with more than one process."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    if world == 1:
        return 0, 1, device
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return dist.get_rank(), world, device


if __name__ == '__main__':
    run_cli(main)
