"""The reference harness's own Python, for the project's tools (model check, accuracy
guard, tests): its modules, and the OpenImages dataset as main.py builds it for RetinaNet."""

import importlib
import sys

from retinanet import HARNESS, INPUT_SIZE


def module(name):
    """A module of the harness's python/ folder: backend_pytorch_native, dataset, failfast..."""
    folder = str(HARNESS / "python")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def openimages(data_dir, cache_dir, count=None, backend="pytorch", image_cache="none"):
    """The first count images of DATA_DIR, preprocessed by the harness's code for backend."""
    name = (
        "openimages-800-retinanet-onnx" if backend == "onnxruntime" else "openimages-800-retinanet"
    )
    return module("openimages").OpenImages(
        data_path=str(data_dir),
        image_list=None,
        name=name,
        image_format="NCHW",
        pre_process=module("dataset").pre_process_openimages_retinanet,
        count=count,
        cache_dir=str(cache_dir),
        image_size=[INPUT_SIZE, INPUT_SIZE, 3],
        image_cache=image_cache,
    )
