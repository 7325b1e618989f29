"""Check a downloaded OpenImages-MLPerf dataset against its annotations, and keep a manifest.

    python -m retinanet.verify_dataset DIR [--set validation|calibration] [--max N]
        [--write-manifest]

Without --set, each set DIR holds is verified.

Checks the COCO file that the upstream downloader wrote against the image files: the 264
MLPerf classes, no duplicated image id or file, every image present, decodable and of the
recorded size, and the expected number of images (24,781 for the whole validation set,
MAX for a subset; for the calibration set, each of the 500 listed images). Then writes
DIR/<set>/manifest.json (image count, total bytes, each file's size and SHA-256), or
compares the files with the manifest already there, so a later run can tell that the
dataset changed. Exits 1 with one line per problem, naming the file and what to do.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from retinanet import ANNOTATIONS, IMAGE_DIR, UPSTREAM
from retinanet.classes import mlperf_classes
from retinanet.files import write_json

FULL_VALIDATION_IMAGES = 24781
CALIBRATION_LIST = UPSTREAM / "calibration" / "openimages" / "openimages_cal_images_list.txt"
SETS = {
    "validation": {"annotations": ANNOTATIONS, "images": IMAGE_DIR, "make": "make dataset"},
    "calibration": {
        "annotations": Path("annotations") / "openimages-calibration-mlperf.json",
        "images": Path("calibration") / "data",
        "make": "make calibration",
    },
}
MANIFEST = "manifest.json"
EXIF_ORIENTATION = 0x0112
SHOWN = 10  # problems listed per kind; the rest are counted


class Problems(list):
    """Error lines: the first SHOWN of each kind, and a count of the rest."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def add(self, kind, line):
        self.counts[kind] += 1
        if self.counts[kind] <= SHOWN:
            self.append(line)

    def summary(self):
        return list(self) + [
            f"error: ... and {n - SHOWN} more {kind}"
            for kind, n in self.counts.items()
            if n > SHOWN
        ]


def check_image(path, width=None, height=None):
    """(bytes, sha256, problem or None) for one image file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, None, "missing"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            # A JPEG decoded at 1/8 scale still reads every byte of its data: a damaged or
            # truncated file fails here as in a full decode, in a third of the time.
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return len(data), digest, f"does not decode ({error})"
    if orientation in (
        5,
        6,
        7,
        8,
    ):  # cv2.imread, as the downloader and harness use it, rotates these
        size = size[::-1]
    if width is not None and size != (width, height):
        return (
            len(data),
            digest,
            f"is {size[0]}x{size[1]} pixels, the annotations say {width}x{height}",
        )
    return len(data), digest, None


def load_annotations(path, problems, redo):
    try:
        coco = json.loads(path.read_text())
        images, annotations, categories = coco["images"], coco["annotations"], coco["categories"]
        return images, annotations, categories
    except FileNotFoundError:
        problems.add(
            "annotations", f"error: {path} not found: run '{redo}' to download the dataset"
        )
    except (ValueError, KeyError, TypeError) as error:
        problems.add(
            "annotations",
            f"error: {path} is not an OpenImages-MLPerf COCO file ({error}): "
            f"run '{redo}' again to write it anew",
        )
    return None


def check_annotations(path, images, annotations, categories, problems, redo):
    classes = mlperf_classes()
    names = [c.get("name") for c in sorted(categories, key=lambda c: c.get("id", -1))]
    ids = sorted(c.get("id") for c in categories)
    if names != classes or ids != list(range(len(classes))):
        first = next(
            (i for i, (a, b) in enumerate(zip(names, classes)) if a != b),
            min(len(names), len(classes)),
        )
        problems.add(
            "classes",
            f"error: {path} lists {len(categories)} categories, not the {len(classes)} MLPerf "
            f"classes in order (first difference at id {first}): run '{redo}' again",
        )
    for key, kind in (("id", "image id"), ("file_name", "file")):
        for value, n in Counter(image.get(key) for image in images).items():
            if n > 1:
                problems.add(
                    f"duplicated {kind}s",
                    f"error: {path}: {kind} {value} appears {n} times: "
                    f"run '{redo}' again to rewrite the annotations",
                )
    known = {image.get("id") for image in images}
    for ann in annotations:
        if ann.get("image_id") not in known or not 0 <= ann.get("category_id", -1) < len(classes):
            problems.add(
                "annotations",
                f"error: {path}: annotation {ann.get('id')} refers to image "
                f"{ann.get('image_id')}, category {ann.get('category_id')}, which it "
                f"does not list: run '{redo}' again",
            )


def file_problems(root, files, jobs, problems, redo):
    """Check every (relative path, width, height); return {relative path: {bytes, sha256}}."""
    entries = {}
    with ThreadPoolExecutor(jobs) as pool:  # PIL and hashlib release the GIL
        results = pool.map(lambda f: check_image(root / f[0], f[1], f[2]), files)
        for (rel, _, _), (size, digest, problem) in zip(files, results):
            if problem == "missing":
                problems.add(
                    "missing images", f"error: {root / rel}: missing: run '{redo}' to download it"
                )
            elif problem:
                problems.add(
                    "damaged images",
                    f"error: {root / rel} {problem}: delete it and run '{redo}' "
                    "to download it again",
                )
            if digest:
                entries[str(rel)] = {"bytes": size, "sha256": digest}
    return entries


def compare(manifest, current, problems, manifest_path, accept_new_files):
    """Problems for files that differ from the manifest; added or removed files and new
    annotations too unless accept_new_files (a download that just ran changes them)."""
    old, new = manifest.get("files", {}), current["files"]
    written = manifest.get("written", "an earlier run")
    changed = sorted(f for f in old.keys() & new.keys() if old[f] != new[f])
    for rel in changed:
        problems.add(
            "changed files",
            f"error: {rel} changed since the manifest of {written}: delete it and run "
            f"the download again to restore it, or delete {manifest_path} to accept it",
        )
    if accept_new_files:
        return
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    if added or removed or manifest.get("annotations") != current["annotations"]:
        what = [
            f"{images(len(added))} added" if added else "",
            f"{images(len(removed))} removed" if removed else "",
            "annotations changed" if manifest.get("annotations") != current["annotations"] else "",
        ]
        problems.add(
            "changed set",
            f"error: the dataset changed since the manifest of {written} "
            f"({', '.join(w for w in what if w)}): if that is intended, delete "
            f"{manifest_path} and verify again",
        )


def check_count(images, annotations_path, max_images, full_images, problems, redo):
    """A validation set holds the whole set, or MAX images of it."""
    expected = min(max_images, full_images) if max_images else full_images
    if len(images) == expected:
        return
    fix = (
        f"run '{redo}' to complete it, or verify a subset with MAX={len(images)}"
        if not max_images
        else f"run '{redo} MAX={max_images}' again"
    )
    what = (
        f"MAX={max_images} asks for {expected}"
        if max_images
        else f"the whole MLPerf validation set has {full_images:,}"
    )
    problems.add("count", f"error: {annotations_path} lists {len(images):,} images, {what}: {fix}")


def calibration_files(files, spec, annotations_path, problems, redo):
    """The calibration set is upstream's list: an image listed in the annotations that is not
    on it is a problem, and each one on it must be on disk."""
    listed = [Path(line.strip()).stem for line in CALIBRATION_LIST.read_text().split()]
    in_json = {Path(f[0]).stem for f in files}
    for stem in sorted(in_json - set(listed)):
        problems.add(
            "not calibration",
            f"error: {annotations_path} lists {stem}.jpg, which is not in the MLPerf "
            f"calibration list {CALIBRATION_LIST}: run '{redo}' again",
        )
    return files + [
        (spec["images"] / f"{stem}.jpg", None, None) for stem in listed if stem not in in_json
    ]


def manifest_of(which, spec, annotations_path, max_images, entries):
    """What a manifest records of the set as it is now."""
    annotations_bytes = annotations_path.read_bytes()
    return {
        "set": which,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "annotations": {
            "file": str(spec["annotations"]),
            "bytes": len(annotations_bytes),
            "sha256": hashlib.sha256(annotations_bytes).hexdigest(),
        },
        "max_images": max_images if which == "validation" else None,
        "images": len(entries),
        "total_bytes": sum(entry["bytes"] for entry in entries.values()),
        "files": entries,
    }


def summary_line(root, which, current, categories, annotations, seconds):
    total = current["total_bytes"]
    rate = f"{total / 1e6 / seconds:.0f} MB/s" if seconds > 0 else "-"
    line = (
        f"verify-dataset: {root} ({which}): {current['images']:,} images "
        f"({size_text(total)}), {len(categories)} classes, "
        f"{len(annotations):,} boxes: every image present, decodable and of the recorded size "
        f"(read in {seconds:.1f} s, {rate})"
    )
    unfinished = list((root / SETS[which]["images"]).glob("*.part"))
    if unfinished:
        line += (
            f"; {len(unfinished)} unfinished downloads (*.part) are left over, "
            "the next download replaces them"
        )
    return line


def verify(
    root,
    which="validation",
    max_images=None,
    full_images=FULL_VALIDATION_IMAGES,
    write_manifest=False,
    jobs=None,
):
    """Return (problems, summary line)."""
    root = Path(root)
    spec = SETS[which]
    redo = f"{spec['make']} DIR={root}"
    problems = Problems()
    if not root.is_dir():
        problems.add(
            "dir", f"error: DIR={root} does not exist: run '{redo}' to download the dataset"
        )
        return problems, None
    annotations_path = root / spec["annotations"]
    loaded = load_annotations(annotations_path, problems, redo)
    if loaded is None:
        return problems, None
    images, annotations, categories = loaded
    check_annotations(annotations_path, images, annotations, categories, problems, redo)

    manifest_path = root / spec["images"].parent / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    files = [
        (spec["images"] / image["file_name"], image.get("width"), image.get("height"))
        for image in images
    ]
    if which == "validation":
        max_images = max_images or (manifest or {}).get("max_images")
        check_count(images, annotations_path, max_images, full_images, problems, redo)
    else:
        files = calibration_files(files, spec, annotations_path, problems, redo)

    started = time.monotonic()
    entries = file_problems(root, files, jobs or os.cpu_count() or 1, problems, redo)
    seconds = time.monotonic() - started
    current = manifest_of(which, spec, annotations_path, max_images, entries)
    if manifest is not None:
        compare(manifest, current, problems, manifest_path, accept_new_files=write_manifest)
    if problems:
        return problems, None
    line = summary_line(root, which, current, categories, annotations, seconds)
    if manifest is None or write_manifest:
        write_json(manifest_path, current, indent=1)
        line += f"; manifest written: {manifest_path}"
    else:
        line += f"; unchanged since the manifest of {manifest['written']}"
    return problems, line


def images(n):
    return f"{n:,} image" + ("s" if n != 1 else "")


def size_text(total):
    return f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / 1e6:.1f} MB"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", help="the folder 'make dataset DIR=...' wrote")
    parser.add_argument(
        "--set", dest="which", choices=sorted(SETS), help="default: each set DIR holds"
    )
    parser.add_argument(
        "--max", type=int, default=None, help="the dataset is a subset of this many images"
    )
    parser.add_argument(
        "--full-images",
        type=int,
        default=FULL_VALIDATION_IMAGES,
        help="images in the whole validation set (default: %(default)s)",
    )
    parser.add_argument(
        "--write-manifest",
        action="store_true",
        help="after a download: write the manifest anew (files that changed are still refused)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="threads reading images (default: one per core)"
    )
    args = parser.parse_args()
    root = Path(args.dir)
    sets = (
        [args.which]
        if args.which
        else [
            which
            for which, spec in SETS.items()
            if (root / spec["annotations"]).exists() or (root / spec["images"]).exists()
        ]
        or ["validation"]
    )
    failed = False
    for which in sets:
        problems, line = verify(
            root, which, args.max, args.full_images, args.write_manifest, args.jobs
        )
        for problem in problems.summary():
            print(problem, file=sys.stderr)
        if line:
            print(line)
        failed = failed or bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
