"""The generated dataset: the downloader's layout and format, the real classes, determinism."""

import hashlib
import json

import cv2
from pycocotools.coco import COCO

from retinanet import ANNOTATIONS, IMAGE_DIR
from retinanet.classes import mlperf_classes
from retinanet.demo_data import generate


def digest_tree(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(upstream, tmp_path):
    generate(tmp_path / "a", num_images=7, seed=3)
    generate(tmp_path / "b", num_images=7, seed=3)
    generate(tmp_path / "c", num_images=7, seed=4)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_layout_format_and_classes(upstream, demo):
    data = demo["data"]
    coco = json.loads((data / ANNOTATIONS).read_text())
    assert set(coco) == {"info", "licenses", "categories", "images", "annotations"}
    assert [c["name"] for c in coco["categories"]] == mlperf_classes()
    assert [c["id"] for c in coco["categories"]] == list(range(264))
    assert (
        coco["categories"][0]["name"] == "Airplane" and coco["categories"][-1]["name"] == "Zucchini"
    )

    images = coco["images"]
    assert [i["id"] for i in images] == list(range(1, len(images) + 1))
    assert [i["file_name"] for i in images] == sorted(i["file_name"] for i in images)
    shapes = set()
    for image in images:
        pixels = cv2.imread(str(data / IMAGE_DIR / image["file_name"]))
        assert pixels.shape[:2] == (image["height"], image["width"])
        shapes.add("portrait" if image["height"] > image["width"] else "landscape")
        assert (image["width"], image["height"]) != (800, 800)
    assert shapes == {"portrait", "landscape"}
    assert (
        min(i["width"] * i["height"] for i in images)
        < 300 * 300
        < 1200 * 1200
        < max(i["width"] * i["height"] for i in images)
    )

    per_image = {i["id"]: 0 for i in images}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
        x, y, w, h = ann["bbox"]
        image = images[ann["image_id"] - 1]
        assert (
            0 <= x and 0 <= y and x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
        )
        assert ann["area"] == w * h and ann["iscrowd"] == ann["IsGroupOf"] in (0, 1)
    assert 0 in per_image.values() and max(per_image.values()) >= 20
    assert any(ann["iscrowd"] for ann in coco["annotations"])

    truth = COCO(str(data / ANNOTATIONS))
    assert len(truth.getImgIds()) == len(images) and len(truth.getCatIds()) == 264
