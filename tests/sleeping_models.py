"""MODEL_FACTORY models for the Ray tests (test_ray.py): each spends a fixed time per image
without using the CPU (a sleep, SLEEP_PER_IMAGE seconds), so that on a 2-core machine N
workers show the dispatch's own scaling, and a run lasts long enough to lose a worker in
it. Their answers are misbehaving_models.detections: read off the pixels, the same in
every worker."""

import os
import sys
import time

from misbehaving_models import detections
from torch import Tensor, nn


class Sleeper(nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        time.sleep(self.seconds * len(images))
        return [detections(image) for image in images]


def sleeper():
    return Sleeper(float(os.environ.get("SLEEP_PER_IMAGE", "0.1")))


def missing_in_workers():
    """Loads in this machine's model check, not in a Ray worker: a node without the model."""
    if "ray" in sys.modules:
        raise FileNotFoundError("resnext50_32x4d_fpn.pth: no such file on this node")
    return sleeper()
