"""Demo models, saved as TorchScript archives the way the official resnext50_32x4d_fpn.pth is.

Both take float [N,3,800,800] in [0,1] and return one dict per image: boxes xyxy in
800x800 pixels, scores sorted descending, labels 0..263 (the annotation category_id).

- random-weights: the real architecture (ResNeXt50-32x4d FPN RetinaNet, P3-P7, 9 anchors,
  264 classes) with seeded random weights, biased so that it emits detections.
- oracle: reads the code strip demo_data.py paints on each image and returns that image's
  true boxes, so its mAP is exactly 100%. Its variants break one convention each
  (label+1, xywh boxes, boxes in original pixels) or perturb the boxes.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet import INPUT_SIZE
from retinanet.classes import NUM_CLASSES
from retinanet.demo_data import CODE_BITS, CODE_STRIP_FRACTION, load_annotations

MODEL_FILE = "resnext50_32x4d_fpn.pth"
ORACLE_VARIANTS = [
    "oracle",
    "oracle-label-plus-one",
    "oracle-xywh",
    "oracle-unscaled",
    "oracle-perturbed",
]


class ListOfDetections(nn.Module):
    """Calls a torchvision detector on a batch tensor and returns only its detections."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        outputs = self.detector(list(images.unbind(0)))
        if torch.jit.is_scripting():
            return outputs[1]  # scripted detectors return (losses, detections)
        return outputs


def build_random_retinanet(seed=0):
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(
        backbone_name="resnext50_32x4d",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    # Zero the last norm of each residual block so random activations stay bounded.
    for name, buffer in backbone.body.named_buffers():
        if name.endswith("bn3.weight"):
            buffer.zero_()
    model = RetinaNet(backbone, NUM_CLASSES, min_size=INPUT_SIZE, max_size=INPUT_SIZE)
    # A prior of 0.1 instead of 0.01 puts scores above the harness's 0.05 threshold.
    nn.init.constant_(model.head.classification_head.cls_logits.bias, -math.log((1 - 0.1) / 0.1))
    return ListOfDetections(model.eval())


class OracleDetector(nn.Module):
    """Looks up each image's detections by the code in its top strip."""

    def __init__(self, boxes, scores, labels, counts):
        super().__init__()
        self.register_buffer("boxes", boxes)
        self.register_buffer("scores", scores)
        self.register_buffer("labels", labels)
        self.register_buffer("counts", counts)
        self.register_buffer("bit_values", 2 ** torch.arange(CODE_BITS - 1, -1, -1))
        self.code_bits = CODE_BITS
        self.strip = int(INPUT_SIZE * CODE_STRIP_FRACTION)
        self.cell = INPUT_SIZE // CODE_BITS

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        strip, cell = self.strip, self.cell
        rows = images[:, :, strip // 4 : 3 * strip // 4, :].mean(dim=(1, 2))
        cells = rows.reshape(images.shape[0], self.code_bits, cell)[
            :, :, cell // 4 : 3 * cell // 4
        ].mean(-1)
        codes = ((cells > 0.5).long() * self.bit_values).sum(1)
        known = codes < self.counts.shape[0]
        codes = torch.where(known, codes, torch.zeros_like(codes))
        detections: list[dict[str, Tensor]] = []
        for i in range(codes.shape[0]):
            code = int(codes[i])
            n = int(self.counts[code])
            detections.append(
                {
                    "boxes": self.boxes[code, :n],
                    "scores": self.scores[code, :n],
                    "labels": self.labels[code, :n],
                }
            )
        return detections


def to_800_xyxy(bbox, width, height):
    x, y, w, h = bbox
    sx, sy = INPUT_SIZE / width, INPUT_SIZE / height
    return [x * sx, y * sy, (x + w) * sx, (y + h) * sy]


def oracle_detections(coco, variant="oracle", seed=0):
    """Per image (in annotation order): a list of (box, score, label) in the model's output
    convention, as the given oracle variant returns it."""
    rng = np.random.default_rng(seed)
    images = coco["images"]
    by_image = {image["id"]: [] for image in images}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    result = []
    for image in images:
        width, height = image["width"], image["height"]
        dets = []
        for rank, ann in enumerate(by_image[image["id"]]):
            box = to_800_xyxy(ann["bbox"], width, height)
            label = ann["category_id"]
            score = 1.0 - 0.001 * rank
            if variant == "oracle-label-plus-one":
                label = (label + 1) % NUM_CLASSES
            elif variant == "oracle-xywh":
                box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            elif variant == "oracle-unscaled":
                x, y, w, h = ann["bbox"]
                box = [x, y, x + w, y + h]
            elif variant == "oracle-perturbed":
                if rng.random() < 0.2:
                    continue  # missed
                w, h = box[2] - box[0], box[3] - box[1]
                box = [
                    box[0] + rng.normal(0, 0.08) * w,
                    box[1] + rng.normal(0, 0.08) * h,
                    box[2] + rng.normal(0, 0.08) * w,
                    box[3] + rng.normal(0, 0.08) * h,
                ]
                score = float(rng.uniform(0.1, 1.0))
            dets.append((box, score, label))
        if variant == "oracle-perturbed":
            for _ in range(int(rng.integers(0, 4))):  # false positives
                x0, y0 = rng.uniform(0, 700, size=2)
                w, h = rng.uniform(20, 100, size=2)
                dets.append(
                    (
                        [x0, y0, x0 + w, y0 + h],
                        float(rng.uniform(0.1, 0.9)),
                        int(rng.integers(0, NUM_CLASSES)),
                    )
                )
        dets.sort(key=lambda det: -det[1])
        result.append(dets)
    return result


def build_oracle(coco, variant="oracle", seed=0):
    per_image = oracle_detections(coco, variant, seed)
    # row 0 answers an unknown code with no detections; image i has code i + 1
    rows = len(per_image) + 1
    width = max([len(dets) for dets in per_image] + [1])
    boxes = torch.zeros(rows, width, 4)
    scores = torch.zeros(rows, width)
    labels = torch.zeros(rows, width, dtype=torch.int64)
    counts = torch.zeros(rows, dtype=torch.int64)
    for index, dets in enumerate(per_image):
        code = index + 1
        counts[code] = len(dets)
        for k, (box, score, label) in enumerate(dets):
            boxes[code, k] = torch.tensor(box)
            scores[code, k] = score
            labels[code, k] = label
    return OracleDetector(boxes, scores, labels, counts)


def save_torchscript(module, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.jit.save(torch.jit.script(module.eval()), str(tmp))
    tmp.replace(path)
    return path


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="demo dataset folder (needed for the oracles)")
    parser.add_argument(
        "--out", required=True, help="models folder: writes <out>/<model>/" + MODEL_FILE
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=ORACLE_VARIANTS + ["random-weights"],
        choices=ORACLE_VARIANTS + ["random-weights"],
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    for name in args.models:
        if name == "random-weights":
            module = build_random_retinanet(args.seed)
        else:
            if not args.data:
                parser.error(f"--data is needed to build {name}")
            module = build_oracle(load_annotations(args.data), name, args.seed)
        print("wrote", save_torchscript(module, out / name / MODEL_FILE))


if __name__ == "__main__":
    main()
