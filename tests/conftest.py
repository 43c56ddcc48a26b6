"""Shared fixtures: a briefly trained alexnet_bn, so that parity gates are meaningful (random weights give
logit margins too small to judge), and its checkpoint in timm's Hugging Face layout."""
import pytest
import timm
import torch

from alexnet_zoo.checkpoint import save_checkpoint_dir
from alexnet_zoo.samples import PHOTOGRAPHS, fit_photographs


@pytest.fixture(scope='session')
def trained_model():
    """alexnet_bn taught to tell the sample photographs apart (19 classes), in eval mode."""
    torch.manual_seed(0)
    model = timm.create_model('alexnet_bn', num_classes=len(PHOTOGRAPHS))
    return fit_photographs(model, steps=40, seed=0)


@pytest.fixture(scope='session')
def trained_checkpoint(trained_model, tmp_path_factory):
    """The trained model saved as a checkpoint directory (config.json + model.safetensors, with label names)."""
    return save_checkpoint_dir(trained_model, tmp_path_factory.mktemp('ckpt') / 'alexnet_bn', list(PHOTOGRAPHS))


@pytest.fixture(scope='session')
def exported_graphs(trained_model, tmp_path_factory):
    """fp32, fp16 and int8 graphs of the trained model, exported once: (ExportResult, output folder)."""
    from alexnet_zoo.checkpoint import LoadedModel
    from export.onnx import export_onnx
    loaded = LoadedModel(trained_model, 'alexnet_bn', trained_model.num_classes, True, 'test fixture', list(PHOTOGRAPHS))
    out = tmp_path_factory.mktemp('onnx')
    return export_onnx(loaded, out), out
