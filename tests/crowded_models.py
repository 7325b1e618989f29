"""MODEL_FACTORY models for the edge cases of the harness's post-processing. Each image gets,
by its pixels, one of: no detection at all, more than 300 candidates above the score
threshold, or scores out of order with one under the threshold in the middle (upstream stops
there). Boxes are awkward floats in the 800 frame, so that every division is exercised."""

import torch
from torch import Tensor, nn

KINDS = ("empty", "crowded", "unsorted")


def kind_of(image: Tensor) -> int:
    return int(image.float().mean().item() * 1000) % len(KINDS)


class Crowded(nn.Module):
    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        outputs = []
        for image in images:
            kind = kind_of(image)
            seed = int(image.float().sum().item() * 1000) % 2**31
            generator = torch.Generator().manual_seed(seed)
            count = (0, 450, 40)[kind]
            boxes = torch.rand(count, 4, generator=generator) * 800
            scores = 0.05 + 0.95 * torch.rand(count, generator=generator)
            if kind == 1:
                scores = scores.sort(descending=True)[0]
            if kind == 2:
                scores[25] = 0.01
            labels = torch.randint(0, 264, (count,), generator=generator)
            outputs.append({"boxes": boxes, "scores": scores, "labels": labels})
        return outputs


def crowded():
    return Crowded()
