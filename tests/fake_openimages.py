"""A small OpenImages in the real file formats, for the upstream downloader to fetch from
servers on loopback.

- v5/validation-annotations-bbox.csv: the real header, coordinates relative 0..1
- v5/class-descriptions-boxable.csv: no header, `/m/<id>,<DisplayName>` rows: the 264 MLPerf
  names (with made-up ids) and a few classes that are not MLPerf's
- v6/oidv6-train-annotations-bbox.csv: the same for the calibration images
- S3 objects validation/<ImageID>.jpg and train/<ImageID>.jpg

Images are rendered by demo_data.py, each MLPerf image with the code of its place in the
downloader's output (sorted by ImageID), so the demo oracle built from the downloaded
annotations scores 100% only if the downloader placed every box right.
"""

import csv
import io

import cv2
import numpy as np

from retinanet import PROJECT_ROOT
from retinanet.classes import mlperf_classes
from retinanet.demo_data import random_boxes, render_image

BBOX_HEADER = [
    "ImageID",
    "Source",
    "LabelName",
    "Confidence",
    "XMin",
    "XMax",
    "YMin",
    "YMax",
    "IsOccluded",
    "IsTruncated",
    "IsGroupOf",
    "IsDepiction",
    "IsInside",
]
OTHER_CLASSES = ["Accordion", "Alpaca", "Ambulance", "Ant"]  # boxable, but not MLPerf classes
SIZES = [(1024, 768), (683, 1024), (240, 180), (1280, 427), (300, 640)]
VALIDATION_CSV = "/v5/validation-annotations-bbox.csv"
CLASSES_CSV = "/v5/class-descriptions-boxable.csv"
TRAIN_CSV = "/v6/oidv6-train-annotations-bbox.csv"
CALIBRATION_LIST = (
    PROJECT_ROOT
    / "vendor"
    / "inference"
    / "calibration"
    / "openimages"
    / "openimages_cal_images_list.txt"
)


def jpeg(img):
    ok, data = cv2.imencode(".jpg", img[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def csv_bytes(rows, header=None):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def bbox_row(image_id, label_name, box, width, height, group_of):
    x, y, w, h = box
    return [
        image_id,
        "xclick",
        label_name,
        1,
        x / width,
        (x + w) / width,
        y / height,
        (y + h) / height,
        0,
        0,
        int(group_of),
        0,
        0,
    ]


class FakeOpenImages:
    """What the servers hold (`files` for HTTP, `objects` for S3) and what the downloader
    should make of it (`expected`: the MLPerf images in output order with their boxes)."""

    def __init__(self, mlperf_images=20, other_images=4, seed=1, calibration=False):
        rng = np.random.default_rng(seed)
        classes = mlperf_classes()
        self.label_names = [f"/m/0x{i:04d}" for i in range(len(classes))]
        other_names = [f"/m/0y{i:04d}" for i in range(len(OTHER_CLASSES))]
        class_rows = list(zip(self.label_names, classes)) + list(zip(other_names, OTHER_CLASSES))
        rng.shuffle(class_rows)
        self.files = {CLASSES_CSV: csv_bytes(class_rows)}
        self.objects = {}

        ids = sorted({rng.bytes(8).hex() for _ in range(mlperf_images + other_images)})
        mlperf_ids = sorted(rng.choice(ids, size=mlperf_images, replace=False).tolist())
        rows, self.expected = [], []
        for index, image_id in enumerate(ids):
            width, height = SIZES[index % len(SIZES)]
            is_mlperf = image_id in mlperf_ids
            count = int(rng.integers(1, 6))
            boxes = random_boxes(rng, count, width, height)
            labels = [int(label) for label in rng.integers(0, len(classes), size=count)]
            group_of = [bool(g) for g in rng.random(count) < 0.15]
            others = random_boxes(rng, int(rng.integers(0, 3)), width, height)
            code = mlperf_ids.index(image_id) + 1 if is_mlperf else 0
            img = render_image(rng, width, height, boxes + others, labels + [0] * len(others), code)
            self.objects[f"validation/{image_id}.jpg"] = jpeg(img)
            image_rows = [
                bbox_row(image_id, other_names[k % len(other_names)], box, width, height, False)
                for k, box in enumerate(others)
            ]
            if is_mlperf:
                image_rows += [
                    bbox_row(image_id, self.label_names[label], box, width, height, g)
                    for box, label, g in zip(boxes, labels, group_of)
                ]
                self.expected.append(
                    {
                        "image_id": image_id,
                        "width": width,
                        "height": height,
                        "boxes": sorted(zip(labels, map(tuple, boxes), group_of)),
                    }
                )
            elif not others:
                image_rows.append(
                    bbox_row(image_id, other_names[0], boxes[0], width, height, False)
                )
            rows += image_rows
        rng.shuffle(rows)
        self.files[VALIDATION_CSV] = csv_bytes(rows, BBOX_HEADER)

        if calibration:
            self.calibration_ids = [
                line.split(".")[0] for line in CALIBRATION_LIST.read_text().split()
            ]
            train_rows = []
            for k, image_id in enumerate(self.calibration_ids):
                width, height = 64 + k % 3 * 16, 48 + k % 2 * 16
                box = random_boxes(rng, 1, width, height)[0]
                label = int(rng.integers(0, len(classes)))
                self.objects[f"train/{image_id}.jpg"] = jpeg(
                    render_image(rng, width, height, [box], [label], 0)
                )
                train_rows.append(
                    bbox_row(image_id, self.label_names[label], box, width, height, False)
                )
            train_rows.append(
                bbox_row("00000000deadbeef", other_names[0], (1, 1, 8, 8), 64, 48, False)
            )
            self.files[TRAIN_CSV] = csv_bytes(train_rows, BBOX_HEADER)

    @property
    def mlperf_ids(self):
        return [image["image_id"] for image in self.expected]
