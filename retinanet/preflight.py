"""Check a run's inputs before the harness starts, and say what to do when one is wrong.

Prints shell assignments for run_eval.sh: the resolved device, the settings left on
auto, the image count and the cache key. Exits 2 with one line per problem. Warns (on
stderr, without failing) when the model is not the official file or the dataset differs
from its manifest.
"""
import argparse
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

from retinanet import ANNOTATIONS, IMAGE_DIR
from retinanet.download_model import OFFICIAL, cached_md5
from retinanet.verify_dataset import MANIFEST


def dataset_problems(data_dir, count):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [f"DATA_DIR={data_dir} does not exist: point it at the folder 'make dataset DIR=...' wrote"], 0
    annotations = data_dir / ANNOTATIONS
    if not annotations.is_file():
        hint = "the folder 'make dataset DIR=...' wrote, which holds annotations/ and validation/"
        if (data_dir.parent.parent / ANNOTATIONS).is_file():
            hint = f"its dataset root, DATA_DIR={data_dir.parent.parent}"
        return [f"DATA_DIR={data_dir} has no {ANNOTATIONS}: point DATA_DIR at {hint}"], 0
    try:
        images = json.loads(annotations.read_text())["images"]
    except (ValueError, KeyError) as error:
        return [f"{annotations} is not an OpenImages-MLPerf COCO file ({error}): run 'make dataset' again"], 0
    if not images:
        return [f"{annotations} lists no images"], 0
    image_dir = data_dir / IMAGE_DIR if (data_dir / IMAGE_DIR).is_dir() else data_dir
    wanted = images[:count] if count else images
    # The harness silently skips a missing image, which shifts every later image in the
    # accuracy log onto the wrong annotations: refuse instead.
    missing = [image["file_name"] for image in wanted if not (image_dir / image["file_name"]).is_file()]
    if missing:
        return [f"{len(missing)} of {len(wanted)} images are missing from {image_dir}, first {missing[0]}: "
                "rerun 'make dataset' to fetch them"], len(wanted)
    return [], len(wanted)


def model_problems(model, backend="pytorch"):
    model = Path(model)
    if not model.is_file():
        return [f"MODEL={model} not found: download it with 'make model DIR=...', "
                "or set MODEL_DIR to the folder holding resnext50_32x4d_fpn.pth"]
    if backend == "onnxruntime":
        return []  # model_check.py loads it
    if not zipfile.is_zipfile(model):
        return [f"MODEL={model} is not a TorchScript archive (a .pth zip file): is the download complete?"]
    return []


def model_warnings(model):
    """The demo models are not official: a warning, not an error."""
    md5 = cached_md5(model)
    official = OFFICIAL["pytorch"]
    if md5 == official["md5"]:
        return []
    return [f"MODEL={model} is not the official {official['file']} (MD5 {md5}, official {official['md5']}): "
            "its mAP says nothing about the reference model; 'make model' downloads the official one"]


def dataset_warnings(data_dir, count):
    """Compare the images in use with the manifest verify-dataset wrote: sizes only, no hashing."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / IMAGE_DIR.parent / MANIFEST
    if not manifest_path.is_file():
        return []
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = manifest["annotations"]["sha256"]
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{manifest_path} is not a manifest verify-dataset wrote: run 'make verify-dataset DIR={data_dir}'"]
    redo = f"run 'make verify-dataset DIR={data_dir}' to see what changed"
    if hashlib.sha256((data_dir / ANNOTATIONS).read_bytes()).hexdigest() != recorded:
        return [f"{data_dir / ANNOTATIONS} changed since the manifest of {manifest.get('written')}: {redo}"]
    images = json.loads((data_dir / ANNOTATIONS).read_text())["images"]
    changed = [image["file_name"] for image in (images[:count] if count else images)
               if files.get(str(IMAGE_DIR / image["file_name"]), {}).get("bytes")
               != (data_dir / IMAGE_DIR / image["file_name"]).stat().st_size]
    if changed:
        many = len(changed) > 1
        return [f"{len(changed)} image{'s' if many else ''} in {data_dir / IMAGE_DIR} differ{'' if many else 's'} "
                "from the manifest of "
                f"{manifest.get('written')}, first {changed[0]}: {redo}"]
    return []


def resolve_device(device):
    """cpu, gpu or auto (gpu when torch sees one); a gpu asked for must exist."""
    if device not in ("auto", "cpu", "gpu"):
        return None, [f"DEVICE={device} is not one of: auto, cpu, gpu"]
    if device == "cpu":
        return "cpu", []
    import torch

    if torch.cuda.is_available():
        return "gpu", []
    if device == "auto":
        return "cpu", []
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return None, [f"DEVICE=gpu but torch {torch.__version__} ({built}) sees no CUDA GPU: "
                  "check nvidia-smi and the driver, reinstall torch for your CUDA "
                  "(make setup TORCH_INDEX_URL=...), or run with DEVICE=cpu"]


# Fastest settings measured per device (BENCHMARKS.md); fp32 stays one setting away.
DEVICE_DEFAULTS = {
    "cpu": {"PRECISION": "bf16 if native", "CHANNELS_LAST": "1", "FREEZE": "0", "BATCH_SIZE": "1", "THREADS": "1"},
    "gpu": {"PRECISION": "fp16", "CHANNELS_LAST": "1", "FREEZE": "0", "BATCH_SIZE": "16", "THREADS": "2"},
}
CHOICES = {"PRECISION": ("fp32", "bf16", "fp16"), "CHANNELS_LAST": ("0", "1"), "FREEZE": ("0", "1"),
           "IMAGE_CACHE": ("none", "uint8", "float32")}


# The upstream onnxruntime profile: batch 1 (the ONNX model's input), the model's own precision.
ONNX_SETTINGS = {"PRECISION": "fp32", "CHANNELS_LAST": "0", "FREEZE": "0", "BATCH_SIZE": "1"}


def cpu_has_native_bf16():
    """AVX512-BF16 or AMX: without them bf16 is emulated, 12x slower than fp32 (BENCHMARKS.md)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_settings(device, requested, backend="pytorch"):
    """Fill the settings left on auto (or empty) with the device's defaults."""
    problems, resolved = [], {}
    for name, value in requested.items():
        if backend == "onnxruntime" and name in ONNX_SETTINGS:
            if value not in ("", "auto", ONNX_SETTINGS[name]):
                problems.append(f"{name}={value} is for BACKEND=pytorch: BACKEND=onnxruntime runs "
                                f"{name}={ONNX_SETTINGS[name]}; leave {name} on auto")
            resolved[name] = ONNX_SETTINGS[name]
            continue
        if value in ("", "auto"):
            value = DEVICE_DEFAULTS.get(device, {}).get(name, "")
            if value == "bf16 if native":
                value = "bf16" if cpu_has_native_bf16() else "fp32"
        elif name in CHOICES and value not in CHOICES[name]:
            problems.append(f"{name}={value} is not one of: auto, {', '.join(CHOICES[name])}")
        resolved[name] = value
    if device == "cpu" and resolved.get("PRECISION") == "fp16":
        problems.append("PRECISION=fp16 is for GPUs: on a CPU use bf16 or fp32")
    return resolved, problems


def cache_key(data_dir):
    """Upstream keys its cache by file name only; key the folder by dataset path and annotations."""
    digest = hashlib.sha256(os.path.realpath(data_dir).encode())
    digest.update((Path(data_dir) / ANNOTATIONS).read_bytes())
    return digest.hexdigest()[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--backend", default="pytorch")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting to resolve when auto: " + ", ".join(DEVICE_DEFAULTS["cpu"]))
    args = parser.parse_args()

    problems, images = dataset_problems(args.data_dir, args.count)
    if args.backend not in ("pytorch", "onnxruntime"):
        problems.append(f"BACKEND={args.backend} is not one of: pytorch, onnxruntime")
    problems += model_problems(args.model, args.backend)
    device, device_problems = resolve_device(args.device)
    problems += device_problems
    settings, setting_problems = resolve_settings(
        device, dict(item.split("=", 1) for item in args.setting), args.backend)
    problems += setting_problems
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    for warning in model_warnings(args.model) + dataset_warnings(args.data_dir, args.count):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"DEVICE={device}")
    for name, value in settings.items():
        print(f"{name}={value}")
    print(f"IMAGES={images}")
    print(f"CACHE_KEY={cache_key(args.data_dir)}")


if __name__ == "__main__":
    main()
