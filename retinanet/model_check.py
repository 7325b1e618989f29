"""Check a model before the timed run: is it safe to load, and does it keep the output contract?

Safety comes first, before anything is unpickled: a TorchScript archive holds code the
harness compiles, not pickled objects; a state dict with MODEL_FACTORY is loaded with
weights_only=True; an ONNX file is data. A full pickle runs any code it holds while it
loads, so it is refused unless TRUST_MODEL=1 or its MD5 is a known official model's.

Then the model runs, through the harness's own backend and preprocessing, on the first
CHECK_IMAGES images, and its output must be the contract the accuracy tool assumes: a
list with one dict per image of boxes [N,4] xyxy inside the 800x800 frame, labels
0..263 (the annotation category_id), scores in [0,1] sorted descending. A wrong
convention stops here with one line instead of scoring mAP 0 hours later.
"""

import argparse
import contextlib
import importlib
import io
import json
import logging
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from retinanet import ANNOTATIONS, INPUT_SIZE, OFFICIAL_MODELS, harness
from retinanet.classes import NUM_CLASSES
from retinanet.download_model import cached_md5

SCORE_THRESHOLD = 0.05  # the harness drops detections below it
TOLERANCE = 1.0  # pixels a box may overhang the frame (rounding, fp16)


class ModelProblem(Exception):
    """One line: what is wrong with the model and what to do."""


class ImageProblem(Exception):
    """One line: an image the check runs the model on does not load, and what to do."""


def is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def import_factory(factory):
    module_name, colon, function = factory.partition(":")
    if not colon or not module_name or not function:
        raise ModelProblem(f"MODEL_FACTORY={factory} is not package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any error while importing the user's module
        raise ModelProblem(
            f"MODEL_FACTORY={factory}: cannot import {module_name} ({type(error).__name__}: "
            f"{error}): put its package in the project folder or on PYTHONPATH"
        ) from None
    if not callable(getattr(module, function, None)):
        raise ModelProblem(f"MODEL_FACTORY={factory}: {module_name} has no function {function}")
    return getattr(module, function)


def state_dict_of(model):
    """A state dict file, or the mlcommons/training checkpoint {"model": state_dict}, safely."""
    import torch

    try:
        state = torch.load(model, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelProblem(
            f"MODEL={model} does not load with weights_only=True ({str(error).splitlines()[0]}): "
            "MODEL_FACTORY needs a state dict or {'model': state_dict}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelProblem(
            f"MODEL={model} holds a {type(state).__name__}, not a state dict or "
            f"{{'model': state_dict}}"
        )
    return state


def fit_problem(model, factory, module, state):
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        key
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]})")
    if shapes:
        key = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape (first {key}: {tuple(state[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} in the model)"
        )
    return (
        f"MODEL={model} does not fit the model MODEL_FACTORY={factory} builds: {', '.join(parts)}: "
        "is it a checkpoint of that architecture?"
    )


def safety(model, backend, factory, trusted):
    """Refuse what would run untrusted code when loaded; check a factory and its state dict."""
    if backend == "onnxruntime":
        if factory:
            raise ModelProblem(
                "MODEL_FACTORY is for BACKEND=pytorch: an ONNX file holds its own graph"
            )
        return "onnx"
    if factory:
        build = import_factory(factory)
        state = state_dict_of(model)
        module = build()
        problem = fit_problem(model, factory, module, state)
        if problem:
            raise ModelProblem(problem)
        return "state dict + factory"
    if is_torchscript(model):
        return "torchscript"
    if trusted:
        return "trusted pickle"
    md5 = cached_md5(model)
    official = [spec["file"] for spec in OFFICIAL_MODELS.values() if spec["md5"] == md5]
    if official:
        return f"pickle: the official {official[0]}"
    import torch

    try:  # weights_only=True cannot run code: it tells a state dict from a pickled module
        torch.load(model, map_location="cpu", weights_only=True)
    except Exception:
        pass
    else:
        raise ModelProblem(
            f"MODEL={model} is a state dict or checkpoint, not a TorchScript archive: set "
            "MODEL_FACTORY=package.module:function to the function that builds its nn.Module"
        )
    raise ModelProblem(
        f"MODEL={model} is a full pickle, not a TorchScript archive: loading it runs any code it "
        "holds. A state dict loads safely with MODEL_FACTORY=package.module:function; if you "
        "trust the file, set TRUST_MODEL=1"
    )


def harness_images(data_dir, count, backend):
    """The first count images, preprocessed by the harness; ImageProblem for one that does
    not decode (the harness names it: 'cannot decode ...: download it again')."""
    with tempfile.TemporaryDirectory() as cache_dir:
        ds = harness.openimages(data_dir, cache_dir, count, backend)
        try:
            pixels = [ds.get_item(i)[0] for i in range(ds.get_item_count())]
        except ValueError as error:
            raise ImageProblem(str(error)) from None
        return pixels, list(ds.image_ids)


def load_model(model, backend, factory, eager=None):
    """The harness's backend with the model loaded (eager: the TorchScript archive's weights
    in that eager model, MODEL_IMPL=native), and the name of its input."""
    if backend == "onnxruntime":
        runtime = harness.module("backend_onnxruntime").BackendOnnxruntime()
        runtime.load(str(model), inputs=["images"], outputs=["boxes", "labels", "scores"])
        return runtime, "images"
    runtime = harness.module("backend_pytorch_native").BackendPytorchNative()
    runtime.set_model_source(factory, trust_pickle=True, eager_model=eager)  # safety() decided
    runtime.load(str(model), inputs=["image"], outputs=["boxes", "labels", "scores"])
    return runtime, "image"


def as_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def detections(output, backend):
    """(boxes, scores, labels) of one image, or a ModelProblem naming what the output is instead."""
    if backend == "onnxruntime":
        if not isinstance(output, (list, tuple)) or len(output) != 3:
            raise ModelProblem(
                f"the ONNX model's outputs are not boxes, labels, scores ({type(output).__name__})"
            )
        boxes, labels, scores = (np.asarray(x) for x in output)
    else:
        if (
            not isinstance(output, (list, tuple))
            or len(output) != 1
            or not isinstance(output[0], dict)
        ):
            kind = (
                type(output).__name__
                if not isinstance(output, (list, tuple))
                else f"{type(output).__name__} of {len(output)} "
                f"{type(output[0]).__name__ if output else 'items'}"
            )
            raise ModelProblem(
                f"the model returns a {kind} for one image, not a list of one dict per image "
                "with boxes, scores and labels"
            )
        missing = [key for key in ("boxes", "scores", "labels") if key not in output[0]]
        if missing:
            raise ModelProblem(
                f"the model's dict has no {', '.join(missing)} (keys: {', '.join(output[0])}): "
                "it must hold boxes, scores and labels"
            )
        boxes, scores, labels = (as_numpy(output[0][key]) for key in ("boxes", "scores", "labels"))
    n = len(scores)
    if boxes.shape != (n, 4) or labels.shape != (n,) or scores.shape != (n,):
        raise ModelProblem(
            f"boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)}, labels "
            f"{tuple(labels.shape)}: expected [N,4], [N], [N]"
        )
    return boxes.astype(np.float64), scores.astype(np.float64), labels


def convention_problem(boxes, scores, labels, image):
    where = f"image {image}"
    if labels.dtype.kind not in "iu" and not np.all(labels == np.round(labels)):
        return (
            f"labels are not whole numbers ({where}: {labels[:3]}): "
            f"they must be class indices 0..{NUM_CLASSES - 1}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        return (
            f"label {int(labels.max() if labels.max() >= NUM_CLASSES else labels.min())} on "
            f"{where} is outside 0..{NUM_CLASSES - 1}: labels must be the annotation category_id "
            "(is it shifted by one, with 0 as background?)"
        )
    if len(scores) and (scores.min() < 0 or scores.max() > 1):
        return (
            f"scores on {where} run from {scores.min():.3g} to {scores.max():.3g}: "
            "they must be probabilities in [0,1]"
        )
    if np.any(np.diff(scores) > 1e-6):
        first = int(np.argmax(np.diff(scores) > 1e-6))
        return (
            f"scores on {where} are not sorted descending (score {first + 1} is "
            f"{scores[first + 1]:.3g} after {scores[first]:.3g}): sort the detections by score"
        )
    backwards = np.flatnonzero(
        (boxes[:, 2] < boxes[:, 0] - 1e-3) | (boxes[:, 3] < boxes[:, 1] - 1e-3)
    )
    if len(backwards):
        box = ", ".join(f"{v:.1f}" for v in boxes[backwards[0]])
        return (
            f"box {backwards[0]} on {where} is [{box}], with x2 < x1 or y2 < y1: boxes must be "
            "x1,y1,x2,y2 (is it x,y,width,height?)"
        )
    if len(boxes) and (boxes.min() < -TOLERANCE or boxes.max() > INPUT_SIZE + TOLERANCE):
        return (
            f"boxes on {where} reach {boxes.min():.1f}..{boxes.max():.1f}: they must lie inside "
            f"the {INPUT_SIZE}x{INPUT_SIZE} input frame (are they in the original image's pixels, "
            "or normalised?)"
        )
    return None


def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / np.maximum(box_area(box) + box_area(boxes) - inter, 1e-9)


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def shifted_labels(found, truth, image_ids):
    """Labels consistently one off the annotations where boxes match: a background-0 convention."""
    by_image = {}
    for ann in truth["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sizes = {image["id"]: (image["width"], image["height"]) for image in truth["images"]}
    offsets = []
    for (boxes, scores, labels), image_id in zip(found, image_ids):
        width, height = sizes[image_id]
        for ann in by_image.get(image_id, []):
            x, y, w, h = ann["bbox"]
            sx, sy = INPUT_SIZE / width, INPUT_SIZE / height
            true_box = np.array([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
            keep = scores >= SCORE_THRESHOLD
            if not keep.any():
                continue
            overlaps = iou(true_box, boxes[keep])
            best = int(np.argmax(overlaps))
            if overlaps[best] >= 0.5:
                offsets.append(int(labels[keep][best]) - ann["category_id"])
    if len(offsets) < 3 or offsets.count(0) > 0:
        return None
    for shift in (1, -1):
        if offsets.count(shift) * 2 >= len(offsets):
            return (
                f"{offsets.count(shift)} of {len(offsets)} detections that match a true box have "
                f"label category_id{shift:+d} and none the category_id itself: labels must be the "
                "annotation category_id, 0..263"
            )
    return None


def check(
    model,
    data_dir,
    backend="pytorch",
    factory=None,
    trusted=False,
    images=1,
    stall_timeout=0,
    eager=None,
):
    """Returns a one-line summary; raises ModelProblem.

    A model that stalls ends the process (failfast.py)."""
    kind = safety(model, backend, factory, trusted)
    if images <= 0:
        return f"model check: {kind}; output contract not checked (CHECK_IMAGES=0)"
    pixels, image_ids = harness_images(data_dir, images, backend)
    failfast = harness.module("failfast")  # says an exception in one line, as the harness does
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            runtime, input_name = load_model(model, backend, factory, eager)
        except Exception as error:
            raise ModelProblem(
                f"the {backend} backend cannot load it: {failfast.describe(error)}"
            ) from None
        outputs = []
        try:
            with failfast.Watchdog(stall_timeout, setting="STALL_TIMEOUT") as watchdog:
                for image in pixels:
                    with watchdog.inference():
                        outputs.append(runtime.predict({input_name: image[None]}))
        except Exception as error:
            raise ModelProblem(
                f"the model failed on a [1,3,{INPUT_SIZE},{INPUT_SIZE}] input: "
                f"{failfast.describe(error)}"
            ) from None
    found = []
    for index, output in enumerate(outputs):
        boxes, scores, labels = detections(output, backend)
        problem = convention_problem(boxes, scores, labels, image_ids[index])
        if problem:
            raise ModelProblem(problem)
        found.append((boxes, scores, labels))
    problem = shifted_labels(
        found, json.loads((Path(data_dir) / ANNOTATIONS).read_text()), image_ids
    )
    if problem:
        raise ModelProblem(problem)
    total = sum(len(scores) for _, scores, _ in found)
    return f"model check: {kind}; output contract kept on {len(found)} images ({total} detections)"


def error_line(model, problem):
    text = str(problem)
    return (
        f"error: {text}"
        if text.startswith(("MODEL", "MODEL_FACTORY"))
        else f"error: MODEL={model}: {text}"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--backend", choices=["pytorch", "onnxruntime"], default="pytorch")
    parser.add_argument(
        "--factory", default="", help="package.module:function that builds the nn.Module"
    )
    parser.add_argument("--trusted", action="store_true", help="allow a full pickle")
    parser.add_argument(
        "--images", type=int, default=1, help="images to run the contract check on (0: none)"
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=0,
        help="seconds an inference may take before the check stops as stalled (0: derived)",
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the harness's dataset logs each load
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation
    try:
        print(
            check(
                args.model,
                args.data_dir,
                args.backend,
                args.factory or None,
                args.trusted,
                args.images,
                args.stall_timeout,
            )
        )
    except ModelProblem as problem:
        sys.exit(error_line(args.model, problem))
    except ImageProblem as problem:
        sys.exit(f"error: {problem}")


if __name__ == "__main__":
    main()
