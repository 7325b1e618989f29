"""Compare a faster setting's detections with fp32 on the same images.

Runs the harness's own dataset code and PyTorch backend twice over the first N images,
once in fp32 and once with the setting under test, and reports how many fp32 detections
the setting reproduces (same label, IoU >= 0.9) and both mAPs on those images. Writes
guard.json into the run folder.
"""

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from retinanet import ANNOTATIONS, INPUT_SIZE, harness
from retinanet.settings import NATIVE_MODEL_NNPACK

SCORE_THRESHOLD = 0.05  # the harness's PostProcessOpenImagesRetinanet
MATCH_IOU = 0.9


class GuardError(Exception):
    """One line: where the model failed."""


def detect(model_path, images, source=None, stall_timeout=0, **settings):
    """Detections above the score threshold, per image, as numpy (boxes, scores, labels).
    A model that stalls ends the process (failfast.py)."""
    failfast = harness.module("failfast")
    backend = harness.module("backend_pytorch_native").BackendPytorchNative()
    backend.configure(**settings)
    backend.set_model_source(**(source or {}))
    backend.load(str(model_path), inputs=["image"], outputs=["boxes", "labels", "scores"])
    results = []
    with failfast.Watchdog(stall_timeout, setting="STALL_TIMEOUT") as watchdog:
        for number, image in enumerate(images, start=1):
            try:
                with watchdog.inference():
                    output = backend.predict({"image": image[None]})[0]
            except Exception as error:
                raise GuardError(
                    f"the model raised in {settings.get('precision', 'fp32')} on image {number} "
                    f"of {len(images)}: {failfast.describe(error)}"
                ) from error
            keep = output["scores"] >= SCORE_THRESHOLD
            results.append(
                tuple(output[key][keep].cpu().numpy() for key in ("boxes", "scores", "labels"))
            )
    return results


def agreement(reference, candidate):
    """Share of reference detections that the candidate reproduces, matched greedily by score."""
    matched = total = 0
    score_diffs = []
    for (ref_boxes, ref_scores, ref_labels), (boxes, scores, labels) in zip(reference, candidate):
        total += len(ref_boxes)
        if not len(ref_boxes) or not len(boxes):
            continue
        iou = box_iou(torch.from_numpy(ref_boxes), torch.from_numpy(boxes)).numpy()
        iou[ref_labels[:, None] != labels[None, :]] = 0
        taken = np.zeros(len(boxes), bool)
        for i in np.argsort(-ref_scores):
            candidates = np.where(~taken & (iou[i] >= MATCH_IOU))[0]
            if len(candidates):
                j = candidates[np.argmax(iou[i, candidates])]
                taken[j] = True
                matched += 1
                score_diffs.append(abs(float(ref_scores[i]) - float(scores[j])))
    return {
        "reference_detections": total,
        "matched": matched,
        "agreement": matched / total if total else 1.0,
        "mean_abs_score_difference": float(np.mean(score_diffs)) if score_diffs else 0.0,
    }


def subset_map(truth, image_infos, detections):
    """COCO mAP (percent) of per-image detections in the 800 frame, on these images only."""
    entries = []
    for info, (boxes, scores, labels) in zip(image_infos, detections):
        sx, sy = info["width"] / INPUT_SIZE, info["height"] / INPUT_SIZE
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            entries.append(
                {
                    "image_id": info["id"],
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy],
                }
            )
    if not entries:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress chatter
        evaluation = COCOeval(truth, truth.loadRes(entries), iouType="bbox")
        evaluation.params.imgIds = [info["id"] for info in image_infos]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100.0 * max(evaluation.stats[0], 0.0)


def guard(model, data_dir, images, settings, source=None, stall_timeout=0, reference_source=None):
    """reference_source: how the fp32 reference loads the model, where not as `source` does
    (the native model: the archive as TorchScript)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        ds = harness.openimages(data_dir, cache_dir, images)
        pixels = [ds.get_item(i)[0] for i in range(ds.get_item_count())]
    reference = detect(model, pixels, reference_source or source, stall_timeout, precision="fp32")
    candidate = detect(model, pixels, source, stall_timeout, **settings)

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(Path(data_dir) / ANNOTATIONS))
    infos = [truth.imgs[image_id] for image_id in ds.image_ids]
    report = {
        "images": len(pixels),
        "setting": settings,
        "match_iou": MATCH_IOU,
        **agreement(reference, candidate),
    }
    report["map_fp32"] = subset_map(truth, infos, reference)
    report["map_setting"] = subset_map(truth, infos, candidate)
    return report


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], required=True)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--freeze", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the eager model")
    parser.add_argument(
        "--eager-model",
        help="MODULE:FUNCTION that loads the archive's weights into an eager model (both runs)",
    )
    parser.add_argument(
        "--reference-archive",
        action="store_true",
        help="the fp32 reference runs the TorchScript archive as it is, not --eager-model: "
        "the native model checked against the archive's own code",
    )
    parser.add_argument(
        "--model-factory", help="MODULE:FUNCTION that builds the model a state dict loads into"
    )
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow a full pickle (run_eval.sh checked it)"
    )
    parser.add_argument("--out", help="write the report here as JSON")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=0,
        help="seconds an inference may take before the guard stops as stalled (0: derived)",
    )
    args = parser.parse_args()
    settings = {
        "precision": args.precision,
        "channels_last": args.channels_last,
        "freeze": args.freeze,
        "compile": args.compile,
    }
    source = {
        "model_factory": args.model_factory,
        "trust_pickle": args.trust_pickle,
        "eager_model": args.eager_model,
    }
    reference_source = dict(source, eager_model=None) if args.reference_archive else None
    try:
        report = guard(
            args.model,
            args.data_dir,
            args.images,
            settings,
            source,
            args.stall_timeout,
            reference_source,
        )
    except Exception as error:  # the traceback for the log, then one line for run_eval.sh
        traceback.print_exc()
        reason = str(error) if isinstance(error, GuardError) else f"{type(error).__name__}: {error}"
        sys.exit(f"accuracy_guard.py: error: {reason.splitlines()[0]}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    name = "+".join(
        [args.precision]
        + ["channels_last"] * args.channels_last
        + ["freeze"] * args.freeze
        + ["compile"] * args.compile
        + ["nnpack"] * (args.eager_model == NATIVE_MODEL_NNPACK)
    )
    if args.eager_model:
        name = f"native {name}"
    reference = "the TorchScript archive in fp32" if args.reference_archive else "fp32"
    print(
        f"accuracy guard, {name} against {reference} on {report['images']} images: "
        f"{100 * report['agreement']:.1f}% of {report['reference_detections']} fp32 detections "
        f"reproduced (same label, IoU >= {MATCH_IOU}), mean |score difference| "
        f"{report['mean_abs_score_difference']:.4f}; mAP {report['map_setting']:.3f}% vs fp32 "
        f"{report['map_fp32']:.3f}% on these images"
    )


if __name__ == "__main__":
    main()
