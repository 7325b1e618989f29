"""Check a run's settings and inputs before the harness starts, and before any run folder
exists, and say what to do when one is wrong.

check() reads the settings from the environment (settings_auto.py validates and resolves
them) and checks the dataset, the model file and the GPU; model_contract() then checks the
model itself (model_check.py: safe to load, output contract kept). Each problem is one line.
Warns, without failing, when the model is not the official file of its format, the dataset
differs from its manifest, COUNT exceeds the dataset, or a setting keeps the run from
meeting the v5.1 run rules (rules.py; not for the demo's user.conf). run.py calls them.
"""

import hashlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

from retinanet import ANNOTATIONS, IMAGE_DIR, OFFICIAL_MODELS, settings, settings_auto
from retinanet.download_model import cached_md5
from retinanet.settings_outputs import stall_seconds
from retinanet.verify_dataset import MANIFEST


def dataset_problems(data_dir, count):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [
            f"DATA_DIR={data_dir} does not exist: point it at the folder 'make dataset DIR=...' "
            "wrote"
        ], 0
    annotations = data_dir / ANNOTATIONS
    if not annotations.is_file():
        hint = "the folder 'make dataset DIR=...' wrote, which holds annotations/ and validation/"
        if (data_dir.parent.parent / ANNOTATIONS).is_file():
            hint = f"its dataset root, DATA_DIR={data_dir.parent.parent}"
        return [f"DATA_DIR={data_dir} has no {ANNOTATIONS}: point DATA_DIR at {hint}"], 0
    try:
        images = json.loads(annotations.read_text())["images"]
    except (ValueError, KeyError) as error:
        return [
            f"{annotations} is not an OpenImages-MLPerf COCO file ({error}): run 'make dataset' "
            "again"
        ], 0
    if not images:
        return [f"{annotations} lists no images"], 0
    image_dir = data_dir / IMAGE_DIR if (data_dir / IMAGE_DIR).is_dir() else data_dir
    wanted = images[:count] if count else images
    # The harness silently skips a missing image, which shifts every later image in the
    # accuracy log onto the wrong annotations: refuse instead.
    missing = [
        image["file_name"] for image in wanted if not (image_dir / image["file_name"]).is_file()
    ]
    if missing:
        return [
            f"{len(missing)} of {len(wanted)} images are missing from {image_dir}, first "
            f"{missing[0]}: rerun 'make dataset' to fetch them"
        ], len(wanted)
    return [], len(wanted)


def model_problems(model, backend="pytorch"):
    model = Path(model)
    if not model.is_file():
        return [
            f"MODEL={model} not found: download it with 'make model DIR=...', "
            "or set MODEL_DIR to the folder holding resnext50_32x4d_fpn.pth"
        ]
    if backend == "onnxruntime":
        return []  # model_check.py loads it
    if not zipfile.is_zipfile(model):
        return [
            f"MODEL={model} is not a TorchScript archive (a .pth zip file): is the download "
            "complete?"
        ]
    return []


def model_warnings(model, backend):
    """A model that is not the official file of its format: a warning, not an error."""
    md5 = cached_md5(model)
    official = OFFICIAL_MODELS["onnx" if backend == "onnxruntime" else "pytorch"]
    if md5 == official["md5"]:
        return []
    return [
        f"MODEL={model} is not the official {official['file']} (MD5 {md5}, official "
        f"{official['md5']}): its mAP says nothing about the reference model; 'make "
        f"model{' FORMAT=onnx' if backend == 'onnxruntime' else ''}' downloads the official one"
    ]


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
        return [
            f"{manifest_path} is not a manifest verify-dataset wrote: run 'make verify-dataset "
            f"DIR={data_dir}'"
        ]
    redo = f"run 'make verify-dataset DIR={data_dir}' to see what changed"
    if hashlib.sha256((data_dir / ANNOTATIONS).read_bytes()).hexdigest() != recorded:
        return [
            f"{data_dir / ANNOTATIONS} changed since the manifest of {manifest.get('written')}: "
            f"{redo}"
        ]
    images = json.loads((data_dir / ANNOTATIONS).read_text())["images"]
    changed = [
        image["file_name"]
        for image in (images[:count] if count else images)
        if files.get(str(IMAGE_DIR / image["file_name"]), {}).get("bytes")
        != (data_dir / IMAGE_DIR / image["file_name"]).stat().st_size
    ]
    if changed:
        many = len(changed) > 1
        return [
            f"{len(changed)} image{'s' if many else ''} in {data_dir / IMAGE_DIR} "
            f"differ{'' if many else 's'} from the manifest of {manifest.get('written')}, first "
            f"{changed[0]}: {redo}"
        ]
    return []


def gpu_problems(device):
    """A gpu asked for must exist."""
    if device != "gpu":
        return []
    import torch

    if torch.cuda.is_available():
        return []
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return [
        f"DEVICE=gpu but torch {torch.__version__} ({built}) sees no CUDA GPU: "
        "check nvidia-smi and the driver, reinstall torch for your CUDA "
        "(make setup TORCH_INDEX_URL=...), or run with DEVICE=cpu"
    ]


def cache_key(data_dir):
    """Upstream keys its cache by file name only; key the folder by dataset path and annotations."""
    digest = hashlib.sha256(os.path.realpath(data_dir).encode())
    digest.update((Path(data_dir) / ANNOTATIONS).read_bytes())
    return digest.hexdigest()[:16]


def cache_folder(resolved):
    """The preprocessed images' folder of this dataset under CACHE_DIR."""
    return os.path.join(resolved["CACHE_DIR"], cache_key(resolved["DATA_DIR"]))


def check(environ):
    """The settings resolved, as requested, the image count and warnings.

    Raises SystemExit with every problem found."""
    requested = settings.requested_from(environ)
    resolved, problems = settings_auto.resolve(requested)
    images = 0
    if not problems:
        problems, images = dataset_problems(resolved["DATA_DIR"], int(resolved["COUNT"] or 0))
        problems += model_problems(resolved["MODEL"], resolved["BACKEND"]) + gpu_problems(
            resolved["DEVICE"]
        )
    if problems:
        raise SystemExit("\n".join(f"error: {problem}" for problem in problems))
    found = model_warnings(resolved["MODEL"], resolved["BACKEND"])
    found += dataset_warnings(resolved["DATA_DIR"], int(resolved["COUNT"] or 0))
    if resolved["COUNT"] and int(resolved["COUNT"]) > images:
        found.append(
            f"COUNT={resolved['COUNT']} is more than the {images} images in "
            f"DATA_DIR={resolved['DATA_DIR']}: the run uses all {images}"
        )
        resolved["COUNT"] = str(images)
    return resolved, requested, images, found


def rules_warnings(mode, resolved, images):
    """The settings that keep the run from meeting the v5.1 rules (rules.py); none without
    upstream's checker to read them from."""
    from retinanet import loadgen_log, rules

    try:
        return rules.preflight_warnings(mode, resolved, images)
    except loadgen_log.LogError:
        return []


def model_contract(resolved, images):
    """Safe to load, and the output contract kept (model_check.py): its one line, or SystemExit
    with one line (a model that stalls ends the process: failfast.py)."""
    from retinanet import model_check

    logging.disable(logging.INFO)  # the harness's dataset logs each load
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation
    try:
        return model_check.check(
            resolved["MODEL"],
            resolved["DATA_DIR"],
            resolved["BACKEND"],
            resolved["MODEL_FACTORY"] or None,
            resolved["TRUST_MODEL"] == "1",
            min(int(resolved["CHECK_IMAGES"]), images),
            float(stall_seconds(resolved)),
            settings.eager_model(resolved) or None,
        )
    except model_check.ModelProblem as problem:
        raise SystemExit(model_check.error_line(resolved["MODEL"], problem)) from None
    except model_check.ImageProblem as problem:
        raise SystemExit(f"error: {problem}") from None
