"""Generate a small OpenImages-MLPerf dataset in the upstream downloader's layout.

    DIR/validation/data/<ImageID>.jpg
    DIR/annotations/openimages-mlperf.json   (COCO style, as tools/openimages.py writes it)

Every image carries its index as a 16-bit code in a strip along its top edge, so the
oracle model (demo_models.py) can recognise it after the harness has resized it to
800x800. Same seed, same bytes.
"""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from retinanet import ANNOTATIONS, IMAGE_DIR
from retinanet.classes import mlperf_classes
from retinanet.rules import DEMO_DATASET

# The code strip: CODE_BITS cells across the top CODE_STRIP_FRACTION of the image.
CODE_BITS = 16
CODE_STRIP_FRACTION = 0.1

# (width, height): landscape, portrait, small, large, wide, tall. None is 800x800,
# so boxes left in original pixels never coincide with the 800 frame.
IMAGE_SIZES = [(1024, 768), (683, 1024), (240, 180), (1600, 1200), (1280, 427), (300, 640)]
# boxes per image, cycled: some images have none, some many
BOX_COUNTS = [3, 1, 0, 12, 2, 30, 5]
GROUP_OF_FRACTION = 0.1
JPEG_QUALITY = 92


def image_code(index):
    """The code painted into image `index`; 0 is never used, so a blank strip reads as unknown."""
    code = index + 1
    if code >= 2**CODE_BITS:
        raise ValueError(f"at most {2**CODE_BITS - 1} images can carry a code")
    return code


def paint_code(img, code):
    height, width = img.shape[:2]
    strip = max(1, round(height * CODE_STRIP_FRACTION))
    for bit in range(CODE_BITS):
        x0 = round(bit * width / CODE_BITS)
        x1 = round((bit + 1) * width / CODE_BITS)
        on = (code >> (CODE_BITS - 1 - bit)) & 1
        img[:strip, x0:x1] = 255 if on else 0


def random_boxes(rng, count, width, height):
    """Boxes as [x, y, w, h] in pixels, at least 8 px a side, inside the image."""
    boxes = []
    for _ in range(count):
        w = rng.uniform(0.08, 0.6) * width
        h = rng.uniform(0.08, 0.6) * height
        w, h = max(w, 8.0), max(h, 8.0)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        boxes.append([x, y, w, h])
    return boxes


def render_image(rng, width, height, boxes, labels, code):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(3, 2))
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        img[..., c] = base[c] + slope[c, 0] * xx / width + slope[c, 1] * yy / height
    img += rng.normal(0, 6, size=img.shape)
    for (x, y, w, h), label in zip(boxes, labels):
        color = np.array([(label * 37) % 256, (label * 91) % 256, (label * 151) % 256], np.float32)
        x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)
        img[y0:y1, x0:x1] = 0.7 * color + 0.3 * img[y0:y1, x0:x1]
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 2)
    img = np.clip(img, 0, 255).astype(np.uint8)
    paint_code(img, code)
    return img


def generate(out_dir, num_images=12, seed=0):
    """Write the dataset into out_dir; return the COCO dict written."""
    out_dir = Path(out_dir)
    classes = mlperf_classes()
    rng = np.random.default_rng(seed)
    image_ids = sorted(rng.bytes(8).hex() for _ in range(num_images))
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / ANNOTATIONS).parent.mkdir(parents=True, exist_ok=True)

    images, annotations = [], []
    for index, image_id in enumerate(image_ids):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        count = BOX_COUNTS[index % len(BOX_COUNTS)]
        boxes = random_boxes(rng, count, width, height)
        labels = [int(label) for label in rng.integers(0, len(classes), size=count)]
        group_of = [int(g) for g in rng.random(count) < GROUP_OF_FRACTION]
        img = render_image(rng, width, height, boxes, labels, image_code(index))
        ok, jpeg = cv2.imencode(
            ".jpg", img[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        assert ok
        (out_dir / IMAGE_DIR / f"{image_id}.jpg").write_bytes(jpeg.tobytes())

        # ids are 1-based and images sorted by ImageID, as tools/openimages.py writes them
        images.append(
            {
                "id": index + 1,
                "file_name": f"{image_id}.jpg",
                "height": height,
                "width": width,
                "license": None,
                "coco_url": None,
            }
        )
        for box, label, crowd in zip(boxes, labels, group_of):
            bbox = [round(v, 4) for v in box]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": crowd,
                    "IsOccluded": 0,
                    "IsInside": 0,
                    "IsDepiction": 0,
                    "IsTruncated": 0,
                    "IsGroupOf": crowd,
                }
            )

    coco = {
        # the downloader's info, and what made it: a run on it is a demo run (rules.py)
        "info": {"dataset": "openimages_mlperf", "version": "v6", "generated_by": DEMO_DATASET},
        "licenses": [],
        "categories": [
            {"id": i, "name": name, "supercategory": None} for i, name in enumerate(classes)
        ],
        "images": images,
        "annotations": annotations,
    }
    (out_dir / ANNOTATIONS).write_text(json.dumps(coco))
    return coco


def load_annotations(data_dir):
    return json.loads((Path(data_dir) / ANNOTATIONS).read_text())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--images", type=int, default=12, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    coco = generate(args.out, args.images, args.seed)
    print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} boxes to {args.out}")


if __name__ == "__main__":
    main()
