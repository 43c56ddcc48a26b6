"""One way to turn "a model name and maybe some weights" into a ready model, for every command.

Accepted checkpoints: a ``.safetensors`` state dict, a ``.pth``/``.pt`` state dict (``torch.load(weights_only=True)``,
never unpickling code), or a directory in timm's Hugging Face layout (``config.json`` + ``model.safetensors``, what
``timm.models.save_for_hf`` and ``python -m alexnet_zoo.train`` write), which brings its own model name, classes
and label names.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import timm
import torch
from timm.models import is_model, save_for_hf

from .alexnet import checkpoint_filter_fn


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; the message is one clear line."""


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
        checkpoint: Optional[Union[str, Path]] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
) -> LoadedModel:
    """Create ``name`` in eval mode with weights from ``checkpoint``, its pretrained cfg, or random init."""
    if checkpoint is not None and Path(checkpoint).is_dir():
        return _load_hf_dir(Path(checkpoint), num_classes)
    if not name or not is_model(name):
        raise CheckpointError(f'unknown model: {name!r} (known AlexNet models: {", ".join(timm.list_models("alexnet*"))})')
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    if checkpoint is None:
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            raise CheckpointError(str(e).splitlines()[0]) from None
        source = f'pretrained ({model.pretrained_cfg.get("tag") or name})' if pretrained else 'random init'
        return LoadedModel(model.eval(), name, model.num_classes, pretrained, source,
                           model.pretrained_cfg.get('label_names'))

    state_dict = read_state_dict(checkpoint)
    model = timm.create_model(name, **kwargs)
    load_into(model, state_dict, checkpoint)
    return LoadedModel(model.eval(), name, model.num_classes, True, str(checkpoint))


def add_model_arguments(parser) -> None:
    """--model, --num-classes and --checkpoint | --pretrained, as every command that takes a model spells them."""
    parser.add_argument('--model', default='alexnet_bn', help='timm model name (default: alexnet_bn)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help="classifier size (default: a checkpoint directory's, else the model's: 1000)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', help='.safetensors, .pth (weights only) or a timm Hugging Face layout '
                                              'directory, which brings its own model name, classes and label names')
    weights.add_argument('--pretrained', action='store_true', help="weights from the model's pretrained cfg")


def read_state_dict(path: Union[str, Path]) -> dict:
    """A state dict from a .safetensors or .pth file, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many different types
        raise CheckpointError(f'cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}') from None
    if isinstance(state_dict, dict):
        state_dict = state_dict.get('state_dict', state_dict.get('model', state_dict))
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f'{path} does not hold a state dict of tensors')
    return state_dict


def load_into(model: torch.nn.Module, state_dict: dict, origin: Union[str, Path] = 'checkpoint') -> None:
    """Load (torchvision keys mapped) weights strictly, turning any mismatch into one clear line."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    classifier = model.pretrained_cfg.get('classifier', 'head.fc') + '.weight'
    if classifier in state_dict and classifier in own and state_dict[classifier].shape[0] != own[classifier].shape[0]:
        raise CheckpointError(
            f'{origin} has {state_dict[classifier].shape[0]} classes, the model has {own[classifier].shape[0]} '
            f'(set --num-classes to match the checkpoint)')
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f'{origin} does not fit {type(model).__name__} {model.pretrained_cfg.get("architecture")}: '
            f'{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})')
    bad = [k for k in own if own[k].shape != state_dict[k].shape]
    if bad:
        raise CheckpointError(f'{origin}: shape mismatch for {bad[0]}: {tuple(state_dict[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}')
    model.load_state_dict(state_dict)


def save_checkpoint_dir(model: torch.nn.Module, directory: Union[str, Path], label_names: Optional[List[str]] = None) -> Path:
    """Write timm's Hugging Face layout (config.json + model.safetensors), reloadable with ``local-dir:``."""
    model_config = {'label_names': list(label_names)} if label_names else None
    save_for_hf(model, str(directory), model_config=model_config, safe_serialization=True)
    return Path(directory)


def _load_hf_dir(path: Path, num_classes: Optional[int]) -> LoadedModel:
    config = path / 'config.json'
    if not config.is_file() or not any(path.glob('*.safetensors')) and not any(path.glob('*.bin')):
        raise CheckpointError(f'{path} is not a checkpoint directory (needs config.json and model.safetensors)')
    try:
        cfg = json.loads(config.read_text())
        name = cfg['architecture']
        classes = int(cfg.get('num_classes', cfg.get('pretrained_cfg', {}).get('num_classes', 0)))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{config} is not a timm model config: {e}') from None
    if not is_model(name):
        raise CheckpointError(f'{config} names an unknown model: {name!r}')
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f'{path} has {classes} classes, --num-classes asks for {num_classes}')
    try:
        model = timm.create_model(f'local-dir:{path}', pretrained=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f'cannot load {path}: {str(e).splitlines()[0]}') from None
    labels = model.pretrained_cfg.get('label_names') or cfg.get('label_names')
    return LoadedModel(model.eval(), name, model.num_classes, True, str(path), list(labels) if labels else None)
