"""One way to turn "a model name and maybe some weights" into a ready model, for every command.

Accepted checkpoints: a ``.safetensors`` state dict, a ``.pth``/``.pt`` state dict (read by timm's
``load_state_dict`` with ``weights_only=True``, never unpickling code), or a directory in timm's Hugging Face layout
(``config.json`` + ``model.safetensors``, what ``timm.models.save_for_hf`` and ``python -m alexnet_zoo.train``
write), loaded by ``timm.create_model("local-dir:...", pretrained=True)``, which brings its own model name, classes
and label names.
"""
import difflib
import glob
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import timm
import torch
from safetensors import safe_open
from timm.models import is_model, load_state_dict, save_for_hf

from .alexnet import AlexNet, checkpoint_filter_fn
from .cli import MAX_CLASSES, first_line
from .packaged import PACKAGED, packaged_state_dict
from .files import PathLike
from .manifest import MANIFEST, RUN_KIND, verify


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; the message is one clear line."""


SUGGESTIONS = 5  # close names offered for an unknown model name: enough for a typo, few enough for one line


def unknown_model(name: object) -> str:
    """The one line refusing a model name timm does not know, with the closest names it does: a typo is the usual
    cause, and timm's own error names none."""
    text = str(name or '')
    arch = text.split('.', 1)[0]  # a pretrained tag (resnet19.a1_in1k) is no part of the architecture's name
    close = difflib.get_close_matches(arch, timm.list_models(), n=SUGGESTIONS) if arch else []
    close += [m for m in (timm.list_models(f'*{glob.escape(arch)}*') if arch else []) if m not in close]
    family = re.match(r'[A-Za-z]+', arch)
    pattern = repr(family.group(0) + '*') if family else ''
    listing = f'python -c "import timm; print(timm.list_models({pattern}))"'
    if not close:
        return f'unknown model: {name!r} ({listing} lists the known ones)'
    return f'unknown model: {name!r} (did you mean {", ".join(close[:SUGGESTIONS])}? {listing} lists them)'


def check_classifier(model: torch.nn.Module, name: str) -> None:
    """Every command here feeds (N, C, H, W) images and reads (N, classes) logits: a model without an image input
    size or without a classifier (a feature extractor, such as a self-supervised tag with ``num_classes=0``) is
    refused here, in one line, before an export or a benchmark gets far with it."""
    size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
    if not isinstance(size, (list, tuple)) or len(size) != 3:
        raise CheckpointError(f'{name} is not an image classifier: its pretrained cfg has no (C, H, W) input_size '
                              f'(got {size!r})')
    if not callable(getattr(model, 'get_classifier', None)) or getattr(model, 'num_classes', 0) < 1:
        raise CheckpointError(f'{name} has no classifier (num_classes {getattr(model, "num_classes", None)}: it '
                              f'returns features, not logits); give it one with --num-classes')


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    num_classes: int
    trained: bool  # weights came from a checkpoint or a pretrained cfg, so parity gates can be judged
    source: str  # where the weights came from, for reports ("random init" when none)
    label_names: Optional[List[str]] = field(default=None)


def load_model(
        name: Optional[str] = 'alexnet_bn',
        checkpoint: Optional[PathLike] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
) -> LoadedModel:
    """Create ``name`` in eval mode with weights from ``checkpoint``, its pretrained cfg, or random init."""
    if checkpoint is not None and Path(checkpoint).is_dir():
        return _load_hf_dir(Path(checkpoint), num_classes)
    if not name or not is_model(name):
        raise CheckpointError(unknown_model(name))
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    if checkpoint is None:
        model = create_pretrained(name, pretrained, **kwargs)
        check_classifier(model, name)
        source = f'pretrained ({model.pretrained_cfg.get("tag") or name})' if pretrained else 'random init'
        return LoadedModel(model.eval(), name, model.num_classes, pretrained, source,
                           model.pretrained_cfg.get('label_names'))
    model = timm.create_model(name, **kwargs)
    check_classifier(model, name)
    load_weights(model, checkpoint)
    return LoadedModel(model.eval(), name, model.num_classes, True, str(checkpoint))


def create_pretrained(name: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    """``timm.create_model``, with timm's "no pretrained weights" error extended by what to do instead; weights a
    package ships (``alexnet_zoo.packaged``) instead of a download where there are such."""
    if pretrained and name in PACKAGED:
        return _from_package(name, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if pretrained and 'No pretrained weights exist' in str(e):
            raise CheckpointError(
                f'{name} has no published pretrained weights; train it (python -m alexnet_zoo.train) or start '
                f'from a checkpoint of your own') from None
        raise CheckpointError(first_line(e)) from None


def _from_package(name: str, **kwargs) -> torch.nn.Module:
    """``name`` with its packaged weights (ImageNet's classifier replaced by a new one for other classes)."""
    model = timm.create_model(name, **kwargs)
    try:
        weights = packaged_state_dict(name, timm.create_model(name))  # the file holds ImageNet's 1000 classes
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(first_line(e)) from None
    classifier = _classifier(model) + '.'
    if model.num_classes != weights[classifier + 'weight'].shape[0]:
        weights = {k: v for k, v in weights.items() if not k.startswith(classifier)}
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith(classifier)})
    model.load_state_dict(weights)  # strict: BatchNorm fills in its step counters
    return model


def load_weights(model: torch.nn.Module, checkpoint: PathLike, new_classifier: bool = False) -> None:
    """Load a ``.safetensors``/``.pth`` state dict (for AlexNet, torchvision keys mapped) into ``model`` strictly.

    timm's ``load_state_dict`` reads the file (safetensors, or ``torch.load(weights_only=True)``; EMA, ``state_dict``
    and ``model`` wrappers and DDP prefixes undone); any mismatch becomes one clear line. ``new_classifier`` keeps
    the model's own classifier (fine-tuning to other classes) instead of the checkpoint's.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter('ignore')
            state_dict = load_state_dict(str(path), weights_only=True)
    except Exception as e:  # corrupt or foreign files, refused pickles: many different types
        raise CheckpointError(f'cannot read checkpoint {path}: {first_line(e)}') from None
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f'{path} does not hold a state dict of tensors')
    if isinstance(model, AlexNet):  # torchvision's AlexNet key names are AlexNet's alone: another model's are its own
        state_dict = checkpoint_filter_fn(state_dict, model)
    if new_classifier:
        classifier = _classifier(model) + '.'
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(classifier)}
        state_dict.update({k: v for k, v in model.state_dict().items() if k.startswith(classifier)})
    check_fits(model, state_dict, path)
    model.load_state_dict(state_dict)


def check_fits(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], origin: PathLike) -> None:
    """One clear line for a state dict whose classes, keys or shapes do not fit ``model``."""
    own = model.state_dict()
    classifier = _classifier(model) + '.weight'
    if classifier in state_dict and classifier in own and state_dict[classifier].ndim == 2 \
            and state_dict[classifier].shape[0] != own[classifier].shape[0]:
        raise CheckpointError(
            f'{origin} has {state_dict[classifier].shape[0]} classes, the model has {own[classifier].shape[0]} '
            f'(set --num-classes to match the checkpoint)')
    # BatchNorm's step counter is filled in by torch's own load_state_dict where a state dict lacks it (as files
    # converted from other frameworks do): its absence is no mismatch
    missing = sorted(k for k in set(own) - set(state_dict) if not k.endswith('.num_batches_tracked'))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f'{origin} does not fit {type(model).__name__} {model.pretrained_cfg.get("architecture")}: '
            f'{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})')
    bad = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if bad:
        raise CheckpointError(f'{origin}: shape mismatch for {bad[0]}: {tuple(state_dict[bad[0]].shape)} vs '
                              f'{tuple(own[bad[0]].shape)}')


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the weights themselves (names, dtypes, shapes and bytes, in name order), whatever file they came
    from: what binds an exported graph to the checkpoint it was exported from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checkpoint_dir(model: torch.nn.Module, directory: PathLike, label_names: Optional[List[str]] = None,
                        extra: Optional[Dict[str, object]] = None) -> Path:
    """Write timm's Hugging Face layout (config.json + model.safetensors), reloadable with ``local-dir:``; ``extra``
    keys go into config.json as they are (timm's loader ignores them)."""
    model_config = {**({'label_names': list(label_names)} if label_names else {}), **(extra or {})}
    save_for_hf(model, str(directory), model_config=model_config or None, safe_serialization=True)
    return Path(directory)


def _classifier(model: torch.nn.Module) -> str:
    return model.pretrained_cfg.get('classifier') or 'head.fc'  # a config.json without a pretrained_cfg has None


def _check_belongs(path: Path) -> None:
    """A checkpoint inside a training run (RUN/ or RUN/last/) must be the one the run's manifest lists; a
    manifest.json that is not a training run's (another tool's) is none of our business."""
    names = ('config.json', 'model.safetensors')
    for run, prefix in ((path, ''), (path.parent, f'{path.name}/')):
        try:
            manifest = json.loads((run / MANIFEST).read_text()) if (run / MANIFEST).is_file() else None
        except (OSError, ValueError):
            manifest = None
        if isinstance(manifest, dict) and manifest.get('kind') == RUN_KIND:
            try:
                verify(run, [prefix + name for name in names])
            except ValueError as e:
                raise CheckpointError(str(e)) from None
            return


def _load_hf_dir(path: Path, num_classes: Optional[int]) -> LoadedModel:
    config = path / 'config.json'
    weights = path / 'model.safetensors'
    if not config.is_file() or not weights.is_file():
        raise CheckpointError(f'{path} is not a checkpoint directory (needs config.json and model.safetensors)')
    _check_belongs(path)
    name, classes, labels = _read_config(config)
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f'{path} has {classes} classes, --num-classes asks for {num_classes}')
    try:  # the model exactly as timm will build it (model_args included), as shapes alone: nothing allocated yet
        with torch.device('meta'):
            shapes = timm.create_model(f'local-dir:{path}', pretrained=False)
    except Exception as e:  # a config.json timm reads its own way (pretrained_cfg, model_args): many types
        raise CheckpointError(f'cannot load {path}: {first_line(e)}') from None
    if not 1 <= shapes.num_classes <= MAX_CLASSES:
        raise CheckpointError(f'{config}: the model it builds has {shapes.num_classes} classes (at most {MAX_CLASSES})')
    check_fits(shapes, _header(weights), weights)
    try:
        model = timm.create_model(f'local-dir:{path}', pretrained=True)
    except Exception as e:  # a config.json timm reads its own way (pretrained_cfg, model_args): many types
        raise CheckpointError(f'cannot load {path}: {first_line(e)}') from None
    check_classifier(model, f'{path} ({name})')
    labels = labels or model.pretrained_cfg.get('label_names')
    return LoadedModel(model.eval(), name, model.num_classes, True, str(path), list(labels) if labels else None)


def _read_config(config: Path) -> Tuple[str, int, Optional[List[str]]]:
    """Model name, classes and label names from a Hugging Face layout's config.json, each checked."""
    try:
        cfg = json.loads(config.read_text())
        if not isinstance(cfg, dict):
            raise TypeError('not an object')
        name = cfg['architecture']
        pretrained = cfg.get('pretrained_cfg', {})
        if not isinstance(pretrained, dict) or not isinstance(cfg.get('model_args', {}), dict):
            raise TypeError('pretrained_cfg and model_args must be objects')
        classes = cfg.get('num_classes', pretrained.get('num_classes'))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{config} is not a timm model config: {first_line(e)}') from None
    if not isinstance(name, str) or not is_model(name):
        raise CheckpointError(f'{config} names an {unknown_model(name)}')
    if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        raise CheckpointError(f'{config}: num_classes must be a whole number from 1 to {MAX_CLASSES}, got {classes!r}')
    labels = cfg.get('label_names')
    if labels is not None and (not isinstance(labels, list) or len(labels) != classes
                               or not all(isinstance(label, str) for label in labels)):
        raise CheckpointError(f'{config}: label_names must be {classes} strings')
    return name, classes, labels


def _header(weights: Path) -> Dict[str, torch.Tensor]:
    """A safetensors file's tensors as empty meta tensors of the right shapes: the header only, no data read."""
    try:
        with safe_open(str(weights), 'pt', device='cpu') as f:
            return {key: torch.empty(f.get_slice(key).get_shape(), device='meta') for key in f.keys()}
    except Exception as e:  # safetensors raises its own error type, and others for a header that lies
        raise CheckpointError(f'cannot read checkpoint {weights}: {first_line(e)}') from None
