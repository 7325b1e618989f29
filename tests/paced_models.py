"""MODEL_FACTORY=paced_models:paced_oracle: the demo's oracle (the TorchScript file PACED_ORACLE
names) with a sleep of PACE_MS milliseconds per image: the same answers from a machine that
runs it slower, for the tests whose runs must hold at any rate (docs/testing.md,
TEST_PACE_MS). Its state dict is the oracle's, under `oracle.`: save_state writes it."""

import os
import time

import torch
from torch import Tensor, nn


class Paced(nn.Module):
    def __init__(self, oracle, seconds: float):
        super().__init__()
        self.oracle = oracle
        self.seconds = seconds

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        time.sleep(self.seconds * len(images))
        return self.oracle(images)


def paced_oracle():
    oracle = torch.jit.load(os.environ["PACED_ORACLE"], map_location="cpu")
    return Paced(oracle, float(os.environ.get("PACE_MS") or 0) / 1000)


def save_state(oracle, path):
    """The MODEL file for paced_oracle: a state dict, as MODEL_FACTORY loads."""
    torch.save(Paced(torch.jit.load(str(oracle), map_location="cpu"), 0).state_dict(), path)
    return path
