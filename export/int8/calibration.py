"""Calibration data for int8: real photographs, fed to ONNX Runtime's quantizer through its reader interface.

The quantizer owns the algorithm (min/max or percentile); this module only decides what it sees: random
resized crops of the package's sample photographs, or of a folder of the user's images. Parity is then checked on
the centre crops the deployed model would receive, never on the calibration crops: by default those are other
views of the same photographs; with ``--calibration-images`` the parity photographs are not calibrated on at all.
"""
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from alexnet_zoo.data import random_crops
from alexnet_zoo.files import PathLike
from alexnet_zoo.samples import folder_images, photographs

CALIBRATION_CROPS = 128  # the issue asks for at least 100; a multiple of the batch size keeps batches equal
CALIBRATION_BATCH = 16
CALIBRATION_SEED = 1  # not the seed of the test fixture's training crops


class PhotoCalibrationReader(CalibrationDataReader):
    """Yields ``{input_name: batch}`` feeds of preprocessed crops, then None; ``rewind`` starts over."""

    def __init__(self, crops: np.ndarray, batch_size: int = CALIBRATION_BATCH, input_name: str = 'input'):
        self.crops = np.ascontiguousarray(crops, dtype=np.float32)
        self.batch_size = batch_size
        self.input_name = input_name
        self._next = 0

    def get_next(self) -> Optional[dict]:
        if self._next >= len(self.crops):
            return None
        batch = self.crops[self._next:self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next = 0

    def with_batch_size(self, batch_size: int) -> 'PhotoCalibrationReader':
        return PhotoCalibrationReader(self.crops, batch_size, self.input_name)

    def __len__(self) -> int:
        return len(self.crops)


def calibration_crops(
        model: torch.nn.Module,
        images_dir: Optional[PathLike] = None,
        count: int = CALIBRATION_CROPS,
        seed: int = CALIBRATION_SEED,
) -> Tuple[np.ndarray, str]:
    """``count`` random crops (timm's training crop, no colour jitter) and a short description of their source.

    ``images_dir`` missing, empty or holding no image raises FileNotFoundError / ValueError with one clear line.
    """
    if images_dir is None:
        images, source = photographs(), 'the sample photographs'
    else:
        images = folder_images(images_dir)
        source = f'{len(images)} image(s) in {Path(images_dir).name or images_dir}'
    crops, _ = random_crops(model, count, seed=seed, images=images)
    return crops.numpy(), f'{count} random crops of {source}'
