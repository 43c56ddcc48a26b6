"""The three AlexNets as timm models: layer table, parameter counts, timm's model interface, weights, registration.

The timm interface checks follow timm's own ``tests/test_models.py`` (forward, backward, default cfgs, features,
forward_intermediates, torchscript), restricted to what applies to these models.
"""
import inspect
import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

from alexnet_zoo.alexnet import checkpoint_filter_fn
from alexnet_zoo.checkpoint import CheckpointError, load_model, save_checkpoint_dir

MODELS = ['alexnet', 'alexnet_bn', 'alexnet_lrn']


def _input(model, batch=1):
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


# --- the design card's layer table ---------------------------------------------------------------------------

ALEXNET_BN_TABLE = [
    # (conv out, kernel, stride, padding, output size after the block)
    (96, 11, 4, 0, 27),
    (256, 5, 1, 2, 13),
    (384, 3, 1, 1, 13),
    (384, 3, 1, 1, 13),
    (256, 3, 1, 1, 6),
]


def test_alexnet_bn_layer_sequence_and_shapes():
    model = timm.create_model('alexnet_bn').eval()
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == [
        'Conv2d', 'ReLU', 'MaxPool2d', 'BatchNorm2d',
        'Conv2d', 'ReLU', 'MaxPool2d', 'BatchNorm2d',
        'Conv2d', 'ReLU', 'BatchNorm2d',
        'Conv2d', 'ReLU', 'BatchNorm2d',
        'Conv2d', 'ReLU', 'MaxPool2d', 'BatchNorm2d',
    ]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    for conv, (out, k, s, p, _) in zip(convs, ALEXNET_BN_TABLE):
        assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (out, (k, k), (s, s), (p, p))
    for pool in (m for m in model.features if isinstance(m, nn.MaxPool2d)):
        assert (pool.kernel_size, pool.stride) == (3, 2)

    x = torch.randn(2, 3, 227, 227)
    conv1 = model.features[0](x)
    assert conv1.shape[1:] == (96, 55, 55)
    blocks = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(b.shape[1:]) for b in blocks] == [(c, s, s) for c, _, _, _, s in ALEXNET_BN_TABLE]

    head = [type(m).__name__ for m in model.head.pre_logits]
    assert head == ['Linear', 'ReLU', 'Dropout', 'BatchNorm1d'] * 3
    fcs = [m for m in model.head.pre_logits if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(9216, 4096), (4096, 4096), (4096, 1000)]
    assert all(m.p == 0.4 for m in model.head.pre_logits if isinstance(m, nn.Dropout))
    assert (model.head.fc.in_features, model.head.fc.out_features) == (1000, 1000)
    assert model.pretrained_cfg['input_size'] == (3, 227, 227)
    assert model(x).shape == (2, 1000)


@pytest.mark.parametrize('name,kwargs,count', [
    ('alexnet_bn', {}, 63_400_480),
    ('alexnet_bn', {'num_classes': 17}, 62_416_497),
    ('alexnet', {}, 61_100_840),
    ('alexnet_lrn', {}, 60_965_224),
])
def test_parameter_counts(name, kwargs, count):
    model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


def test_alexnet_lrn_is_the_paper_network():
    model = timm.create_model('alexnet_lrn').eval()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    lrns = [m for m in model.features if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2
    # torch divides alpha by size; the paper's alpha is 1e-4 on the plain sum
    assert all((m.size, m.alpha / m.size, m.beta, m.k) == (5, pytest.approx(1e-4), 0.75, 2.0) for m in lrns)
    kinds = [type(m).__name__ for m in model.features][:8]
    assert kinds == ['Conv2d', 'ReLU', 'LocalResponseNorm', 'MaxPool2d'] * 2
    assert model.features[0](torch.randn(1, 3, 227, 227)).shape[-2:] == (55, 55)


def test_lrn_matches_the_paper_formula():
    lrn = timm.create_model('alexnet_lrn').features[2]
    a = torch.rand(1, 9, 2, 2) * 10
    b = lrn(a)
    i = 4  # a middle channel: the sum runs over channels i-2 .. i+2
    expected = a[:, i] / (2.0 + 1e-4 * (a[:, i - 2:i + 3] ** 2).sum(1)) ** 0.75
    torch.testing.assert_close(b[:, i], expected)


# --- timm's model interface ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', MODELS)
def test_forward_backward_and_grad_checkpointing(name):
    """Training with gradient checkpointing recomputes the features in backward: same loss, same gradients, and
    the checkpointed path really taken (timm's checkpoint_seq runs each feature stage twice)."""
    model = timm.create_model(name, num_classes=42, drop_rate=0.0)
    x = _input(model, 2)

    def train_step():
        model.zero_grad()
        model.train()
        out = model(x)
        nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = train_step()
    assert out.shape == (2, 42) and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    calls = []
    hook = model.features[0].register_forward_hook(lambda *_: calls.append(1))
    model.set_grad_checkpointing()
    out_ckpt, grads_ckpt = train_step()
    hook.remove()
    assert len(calls) == 2, 'the first conv ran once: no recomputation in backward, no checkpointing'
    torch.testing.assert_close(out_ckpt, out, rtol=1e-5, atol=1e-6)
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg_head_and_pooling(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'pool_size'):
        assert key in cfg, key
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    assert model.in_chans == cfg['input_size'][0]
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1:] == (model.num_features, *cfg['pool_size'])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        assert model.get_classifier() is model.head.fc

        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        model.reset_classifier(0, '')
        assert model(x).shape == feats.shape
        model.reset_classifier(7, model.pretrained_cfg.get('global_pool', 'avg') if name == 'alexnet' else 'flatten')
        assert model(x).shape == (1, 7)

        unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert unpooled(x).shape == feats.shape
    param = inspect.signature(model.reset_classifier).parameters['global_pool']
    assert param.default is None


def test_alexnet_adapts_to_other_input_sizes():
    model = timm.create_model('alexnet').eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 160)).shape == (1, 1000)
        model.reset_classifier(3, 'max')
        assert model(torch.randn(1, 3, 300, 300)).shape == (1, 3)


def test_alexnet_bn_img_size_sizes_the_first_fc_layer():
    model = timm.create_model('alexnet_bn', img_size=259).eval()  # 259 -> 7x7 grid after conv 5
    assert model.head.pre_logits.fc1.in_features == 256 * 7 * 7
    assert model(torch.randn(1, 3, 259, 259)).shape == (1, 1000)


@pytest.mark.parametrize('name', MODELS)
def test_features_only_and_intermediates(name):
    model = timm.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 5
    size = timm.get_pretrained_cfg(name).input_size[-1]
    outs = model(torch.randn(1, 3, size, size))
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[1] == c
        assert size / (2 * r) < o.shape[-1] <= math.ceil(size / r) + 1

    full = timm.create_model(name).eval()
    x = _input(full)
    with torch.no_grad():
        final, inter = full.forward_intermediates(x)
        torch.testing.assert_close(final, full.forward_features(x))
        assert [t.shape[1] for t in inter] == channels
        last_two = full.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[-1], inter[-1])
        kept = full.prune_intermediate_layers(indices=[1], prune_head=True)
        assert kept == [1]
        assert full.forward_intermediates(x, indices=[1], intermediates_only=True)[0].shape == inter[1].shape


@pytest.mark.parametrize('name', MODELS)
def test_torchscript_in_chans_drop_rate_and_groups(name):
    with timm.set_scriptable(True):
        model = timm.create_model(name, in_chans=1, drop_rate=0.1).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 1, *model.pretrained_cfg['input_size'][1:])
    torch.testing.assert_close(scripted(x), model(x))
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, nn.Dropout))
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) > 1


# --- weights -------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def torchvision_checkpoint(tmp_path_factory):
    """A torchvision AlexNet state dict made here (no download), saved as torchvision publishes it."""
    import torchvision
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp('tv') / 'alexnet-owt-test.pth'
    torch.save(tv.state_dict(), path)
    return tv, path


def test_alexnet_tv_in1k_cfg():
    cfg = timm.get_pretrained_cfg('alexnet.tv_in1k')
    assert cfg.url.startswith('https://download.pytorch.org/models/alexnet-owt-') and cfg.url.endswith('.pth')
    assert cfg.license == 'bsd-3-clause' and 'pytorch/vision' in cfg.origin_url
    assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, 224, 224), 0.875, 'bilinear')


def test_torchvision_weights_give_torchvision_outputs(torchvision_checkpoint):
    tv, path = torchvision_checkpoint
    model = timm.create_model('alexnet', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - tv(x)).abs().max().item() <= 1e-5


def test_torchvision_weights_adapt_to_in_chans_and_num_classes(torchvision_checkpoint):
    tv, path = torchvision_checkpoint
    model = timm.create_model(
        'alexnet', pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.features[0].weight.shape == (64, 1, 11, 11)
    torch.testing.assert_close(model.features[0].weight, tv.features[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.head.pre_logits.fc2.weight, tv.classifier[4].weight)
    assert model(torch.randn(2, 1, 224, 224)).shape == (2, 5)


def test_filter_passes_a_native_checkpoint_unchanged():
    state = timm.create_model('alexnet').state_dict()
    assert checkpoint_filter_fn(state, None) is state


def test_local_dir_and_safetensors_file_loads(tmp_path):
    model = timm.create_model('alexnet_bn', num_classes=3).eval()
    run = save_checkpoint_dir(model, tmp_path / 'run', ['a', 'b', 'c'])
    x = torch.randn(2, 3, 227, 227)
    again = timm.create_model(f'local-dir:{run}', pretrained=True).eval()
    assert again.num_classes == 3 and again.pretrained_cfg['label_names'] == ['a', 'b', 'c']
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        by_file = timm.create_model('alexnet_bn', pretrained=True, num_classes=3,
                                    pretrained_cfg_overlay=dict(file=str(run / 'model.safetensors'), num_classes=3)).eval()
        torch.testing.assert_close(by_file(x), model(x), rtol=0, atol=0)
    loaded = load_model(checkpoint=run)
    assert (loaded.name, loaded.num_classes, loaded.label_names, loaded.trained) == ('alexnet_bn', 3, ['a', 'b', 'c'], True)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))
    path = tmp_path / 'evil.pth'
    torch.save({'features.0.weight': Evil()}, path)
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_model('alexnet_bn', checkpoint=path)


# --- bad input -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['alexnet_bn', 'alexnet_lrn'])
def test_pretrained_without_weights_names_the_model(name):
    with pytest.raises(RuntimeError, match=f'No pretrained weights exist for {name}'):
        timm.create_model(name, pretrained=True)
    with pytest.raises(CheckpointError, match=f'{name} has no published pretrained weights; train it'):
        load_model(name, pretrained=True)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('alexnet_xl')
    with pytest.raises(CheckpointError, match="unknown model: 'alexnet_xl'"):
        load_model('alexnet_xl')


def test_unknown_model_name_suggests_close_timm_names():
    """A typo of any timm model (not only an AlexNet) names the model meant, and how to list its family."""
    with pytest.raises(CheckpointError) as error:
        load_model('resnet19')
    message = str(error.value)
    assert message.startswith("unknown model: 'resnet19' (did you mean resnet18, ") and '\n' not in message
    assert len(message.split('did you mean ')[1].split('?')[0].split(', ')) <= 5
    assert message.endswith('python -c "import timm; print(timm.list_models(\'resnet*\'))" lists them)')
    with pytest.raises(CheckpointError, match=r"unknown model: 'alexnet_bm' \(did you mean alexnet_bn"):
        load_model('alexnet_bm')


def test_a_feature_extractor_is_refused_unless_given_a_classifier():
    """A timm tag with ``num_classes=0`` (a self-supervised CNN, here random weights) returns features, not logits:
    refused in one line; --num-classes gives it a classifier."""
    with pytest.raises(CheckpointError, match=r'^convnextv2_atto.fcmae has no classifier \(num_classes 0: .*'
                                              r'give it one with --num-classes$'):
        load_model('convnextv2_atto.fcmae')
    assert load_model('convnextv2_atto.fcmae', num_classes=5).model.get_classifier().out_features == 5


class _Tiny(nn.Module):
    """A model whose own keys look like torchvision AlexNet's (``classifier.1.``), as another CNN's may."""

    def __init__(self):
        super().__init__()
        self.pretrained_cfg = {'architecture': 'tiny', 'classifier': 'classifier.1'}
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(4, 2))


def test_alexnets_key_mapping_is_for_alexnet_only(tmp_path):
    """torchvision's AlexNet key names mean nothing to another model: its own checkpoint loads under its own keys."""
    from alexnet_zoo.checkpoint import load_weights
    saved, fresh = _Tiny(), _Tiny()
    torch.save(saved.state_dict(), tmp_path / 'tiny.pth')
    load_weights(fresh, tmp_path / 'tiny.pth')
    assert list(fresh.state_dict()) == ['classifier.1.weight', 'classifier.1.bias']
    torch.testing.assert_close(fresh.state_dict(), saved.state_dict(), rtol=0, atol=0)


def test_checkpoint_with_wrong_number_of_classes(tmp_path):
    path = tmp_path / 'seventeen.pth'
    torch.save(timm.create_model('alexnet_bn', num_classes=17).state_dict(), path)
    with pytest.raises(CheckpointError, match='has 17 classes, the model has 5'):
        load_model('alexnet_bn', checkpoint=path, num_classes=5)
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_model('alexnet_bn', checkpoint=tmp_path / 'missing.pth')


def test_wrong_input_shape_is_a_clear_error():
    model = timm.create_model('alexnet_bn').eval()
    with pytest.raises(RuntimeError, match='shapes cannot be multiplied'):
        model(torch.randn(1, 3, 200, 200))


# --- registration without an import --------------------------------------------------------------------------

def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout


@pytest.mark.slow  # a real process (imports torch): the quick loop has the in-process tests
def test_registration_in_a_clean_interpreter():
    out = _fresh(
        'import sys; assert "alexnet_zoo" not in sys.modules\n'
        'import timm\n'
        'm = timm.create_model("alexnet_bn", num_classes=17)\n'
        'print(type(m).__module__, m.num_classes, timm.list_models("alexnet*"))')
    assert out.strip() == "alexnet_zoo.alexnet 17 ['alexnet', 'alexnet_bn', 'alexnet_lrn']"


@pytest.mark.slow  # real processes: a clean interpreter's imports
def test_start_up_imports_nothing_heavy_and_is_cheap():
    """Cheap by construction, not by a timer: the hook imports no module outside the standard library."""
    heavy = _fresh('import sys; print(sorted(m for m in ("torch", "numpy", "timm", "alexnet_zoo") if m in sys.modules))')
    assert heavy.strip() == '[]'
    times = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'pass'], capture_output=True, text=True).stderr
    lines = [line.split('|')[2] for line in times.splitlines() if line.count('|') == 2 and 'imported' not in line]
    hook = [i for i, name in enumerate(lines) if name.strip() == '_alexnet_zoo_hook']
    assert len(hook) == 1, 'the start-up hook is not installed (alexnet_zoo.pth missing from site-packages)'
    depth = len(lines[hook[0]]) - len(lines[hook[0]].lstrip())
    children = []  # importtime prints a module's imports just before it, indented deeper
    for name in reversed(lines[:hook[0]]):
        if len(name) - len(name.lstrip()) <= depth:
            break
        children.append(name.strip())
    assert all(child.split('.')[0] in sys.stdlib_module_names for child in children), children


def test_checkpoint_of_another_architecture(torchvision_checkpoint):
    _, path = torchvision_checkpoint
    with pytest.raises(CheckpointError, match='does not fit AlexNet alexnet_bn: .* missing keys'):
        load_model('alexnet_bn', checkpoint=path)
    assert load_model('alexnet', checkpoint=path).trained


def test_a_state_dict_without_batchnorms_step_counters_loads(tmp_path):
    """Files converted from other frameworks lack BatchNorm's ``num_batches_tracked``, which torch's own
    ``load_state_dict`` fills in: --checkpoint and --init accept them; a real weight missing is still one line."""
    from safetensors.torch import save_file
    from alexnet_zoo.checkpoint import load_weights
    torch.manual_seed(0)
    source = timm.create_model('test_resnet', num_classes=5)
    weights = {k: v for k, v in source.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert len(weights) < len(source.state_dict())  # the counters were there to drop
    save_file(weights, str(tmp_path / 'converted.safetensors'))
    model = timm.create_model('test_resnet', num_classes=5)
    load_weights(model, tmp_path / 'converted.safetensors')
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    first = next(iter(weights))
    del weights[first]
    save_file(weights, str(tmp_path / 'broken.safetensors'))
    with pytest.raises(CheckpointError, match=rf"1 missing keys \(e\.g\. \['{first}'\]\)"):
        load_weights(model, tmp_path / 'broken.safetensors')


def test_packaged_imagenet_weights_for_efficientnet_lite0():
    """--pretrained takes EfficientNet-Lite0's ImageNet weights from the package make setup installs (no download):
    mapped in order onto timm's tf_efficientnet_lite0, they name the photographs' ImageNet classes."""
    from alexnet_zoo.data import sample_batch
    loaded = load_model('tf_efficientnet_lite0', pretrained=True)
    assert loaded.trained and loaded.num_classes == 1000
    names, x = sample_batch(loaded.model)
    with torch.inference_mode():
        top1 = dict(zip(names, loaded.model(x).argmax(dim=1).tolist()))
    assert top1['coffee'] == 967 and top1['rocket'] == 657, top1  # espresso, missile
    small = load_model('tf_efficientnet_lite0', pretrained=True, num_classes=5).model  # a new classifier
    assert torch.equal(small.conv_stem.weight, loaded.model.conv_stem.weight) and small.num_classes == 5
