"""The retinanet overlay's own Python: demo data and models, patch series, run checks."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = PROJECT_ROOT / "vendor" / "inference"
HARNESS = UPSTREAM / "vision" / "classification_and_detection"

# The dataset layout tools/openimages_mlperf.sh writes, relative to its --dataset-path.
ANNOTATIONS = Path("annotations") / "openimages-mlperf.json"
IMAGE_DIR = Path("validation") / "data"
