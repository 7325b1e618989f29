"""The retinanet overlay's own Python: demo data and models, patch series, run checks."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = PROJECT_ROOT / "vendor" / "inference"
HARNESS = UPSTREAM / "vision" / "classification_and_detection"

# The dataset layout tools/openimages_mlperf.sh writes, relative to its --dataset-path.
ANNOTATIONS = Path("annotations") / "openimages-mlperf.json"
IMAGE_DIR = Path("validation") / "data"

# The model's input frame: the harness's openimages-800-retinanet profile.
INPUT_SIZE = 800

# The official models, by format: zenodo records named in the upstream README
# (vision/classification_and_detection).
OFFICIAL_MODELS = {
    "pytorch": {
        "file": "resnext50_32x4d_fpn.pth",
        "record": "6617981",
        "md5": "a55f6bec3464f605ce8d686da8ac1533",
    },
    "onnx": {
        "file": "resnext50_32x4d_fpn.onnx",
        "record": "6617879",
        "md5": "4544f4e56e0a4684215831cc937ea45c",
    },
}
