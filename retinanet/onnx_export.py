"""Export a RetinaNet to ONNX the way the official resnext50_32x4d_fpn.onnx is laid out:
input "images" float [1,3,800,800], outputs "boxes" [N,4] xyxy, "labels" [N], "scores" [N]
(upstream's retinanet-onnxruntime profile, batch 1), for BACKEND=onnxruntime.

    python -m retinanet.onnx_export --out demo/models/random-weights/resnext50_32x4d_fpn.onnx
    python -m retinanet.onnx_export --factory retinanet.model_factories:resnet50_fpn \\
        --weights models/resnet50/state_dict.pth --out models/resnet50/resnet50_fpn.onnx
"""

import argparse
from pathlib import Path

import torch
from torch import nn

OPSET = 17


class OneImage(nn.Module):
    """The detections of the one image in the batch, as the tuple the ONNX outputs name."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images):
        detections = self.detector(images)[0]
        return detections["boxes"], detections["labels"], detections["scores"]


def export(detector, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The TorchScript-based exporter traces torchvision's detection post-processing.
    torch.onnx.export(
        OneImage(detector.eval()),
        (torch.rand(1, 3, 800, 800),),
        str(tmp),
        input_names=["images"],
        output_names=["boxes", "labels", "scores"],
        opset_version=OPSET,
        dynamo=False,
    )
    tmp.replace(path)
    return path


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument(
        "--factory",
        help="package.module:function building the model (default: the demo's "
        "real architecture with random weights)",
    )
    parser.add_argument("--weights", help="state dict or {'model': state_dict} for --factory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.factory:
        from retinanet.model_check import import_factory, state_dict_of

        detector = import_factory(args.factory)()
        if args.weights:
            detector.load_state_dict(state_dict_of(args.weights))
    else:
        from retinanet.demo_models import build_random_retinanet

        detector = build_random_retinanet(args.seed)
    print("wrote", export(detector, args.out))


if __name__ == "__main__":
    main()
