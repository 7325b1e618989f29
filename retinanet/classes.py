"""The 264 MLPerf OpenImages classes, read from the pinned upstream downloader.

Category id i is the i-th name of MLPERF_CLASSES in tools/openimages_mlperf.sh, as
tools/openimages.py assigns them; reading the list from there keeps one source.
"""

import re
import shlex

from retinanet import HARNESS

NUM_CLASSES = 264
DOWNLOADER_SCRIPT = HARNESS / "tools" / "openimages_mlperf.sh"


def mlperf_classes(script=DOWNLOADER_SCRIPT):
    """Return the class names in category-id order."""
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: run 'make setup' to check out upstream")
    match = re.search(r"MLPERF_CLASSES=\((.*?)\)\s*\n", script.read_text(), re.S)
    if not match:
        raise ValueError(f"no MLPERF_CLASSES array in {script}")
    names = shlex.split(match.group(1))
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{script} lists {len(names)} classes, expected {NUM_CLASSES}")
    return names
