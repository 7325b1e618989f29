"""MODEL_FACTORY models that misbehave on cue, for the tests that prove no run can hang.

Each factory builds a detector without weights (its state dict is {}). Calls are counted
per process, over every instance: the model check, the harness and the accuracy guard
(which loads the model once per precision) each start from one, so "the third call" is
the same call in every run with the same settings. Before
it misbehaves, it answers like a model of the official contract. When it raises or stalls,
it first appends the time to the file MISBEHAVIOUR_LOG names, so that a test can measure
how long the run took to stop.
"""

import itertools
import os
import threading
import time

import torch
from torch import Tensor, nn

MESSAGE = "misbehaving model: deliberate failure"
CALLS = itertools.count(1)  # in this process


def detections(image: Tensor) -> dict[str, Tensor]:
    """Ten boxes xyxy in the 800 frame, scores sorted descending, labels 0..9: all read off
    the pixels, so that they change with the image and with the precision."""
    values = image.float().mean(dim=0)[::80, ::80].flatten()[:40]
    boxes = torch.stack(
        [
            values[:10] * 300,
            values[10:20] * 300,
            400 + values[20:30] * 300,
            400 + values[30:40] * 300,
        ],
        dim=1,
    )
    scores = torch.sort(0.1 + 0.9 * values[:10], descending=True)[0]
    return {"boxes": boxes, "scores": scores, "labels": torch.arange(10)}


class Detector(nn.Module):
    def __init__(self, misbehave_on: int = 0, how: str = "raise"):
        super().__init__()
        self.misbehave_on = misbehave_on
        self.how = how

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        call = next(CALLS)
        if call == self.misbehave_on:
            with open(os.environ["MISBEHAVIOUR_LOG"], "a") as log:
                log.write(f"{self.how} {time.time():.3f}\n")
            if self.how == "raise":
                raise RuntimeError(f"{MESSAGE} on call {call}")
            threading.Event().wait()  # stalls for good
        outputs = [detections(image) for image in images]
        if self.how == "drop-scores":  # breaks the harness's post-processing, not the model
            for output in outputs:
                del output["scores"]
        return outputs


class Bf16Detector(nn.Module):
    """Returns its boxes and scores in bfloat16, whatever the run's precision."""

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        outputs: list[dict[str, Tensor]] = []
        for image in images:
            found = detections(image)
            outputs.append(
                {
                    "boxes": found["boxes"].to(torch.bfloat16),
                    "scores": found["scores"].to(torch.bfloat16),
                    "labels": found["labels"],
                }
            )
        return outputs


def raises_on_first_call():
    return Detector(1)


def raises_on_second_call():
    return Detector(2)


def raises_on_third_call():
    return Detector(3)


def stalls_on_first_call():
    return Detector(1, "stall")


def stalls_on_second_call():
    return Detector(2, "stall")


def stalls_on_third_call():
    return Detector(3, "stall")


def output_without_scores():
    return Detector(how="drop-scores")


def bf16_outputs():
    return Bf16Detector()


class ShapeRecorder(nn.Module):
    """Well behaved: writes the batch size of each call to MISBEHAVIOUR_LOG, and has the
    compile_static() that --compile calls (it compiles nothing: it marks the lines after it)."""

    def compile_static(self):
        with open(os.environ["MISBEHAVIOUR_LOG"], "a") as log:
            log.write("compiled\n")
        return self

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        with open(os.environ["MISBEHAVIOUR_LOG"], "a") as log:
            log.write(f"{images.shape[0]}\n")
        return [detections(image) for image in images]


def shape_recorder():
    return ShapeRecorder()


SCRIPTED_MESSAGE = "a TorchScript model's own exception"


class RaisesInTorchScript(nn.Module):
    """Raises in its own TorchScript code, saved as an archive (the interpreter wraps the
    exception in its traceback: the cause is on its last line)."""

    def __init__(self):
        super().__init__()
        self.message = SCRIPTED_MESSAGE

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        if images.shape[0] > 0:
            raise ValueError(self.message)
        return [detections(image) for image in images]


def save_raises_in_torchscript(path):
    torch.jit.save(torch.jit.script(RaisesInTorchScript()), str(path))
    return path
