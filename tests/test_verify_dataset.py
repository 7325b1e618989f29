"""`make verify-dataset`: a dataset in the downloader's layout checked against its COCO file
and its manifest. Each damage is made on a copy of the generated demo dataset, and each must
be named with its file and what to do."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from helpers import make

from retinanet import ANNOTATIONS, IMAGE_DIR, preflight

MANIFEST = "validation/manifest.json"


@pytest.fixture
def data(demo, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(demo["data"], copy)
    return copy


def verify(data, *settings, full=12):
    proc = make("verify-dataset", f"DIR={data}", f"FULL_IMAGES={full}", *settings, check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    return proc, errors


def image(data, index):
    return sorted((data / IMAGE_DIR).iterdir())[index]


def test_good_dataset_passes_and_gets_a_manifest(data):
    proc, errors = verify(data)
    assert proc.returncode == 0 and errors == []
    assert f"verify-dataset: {data} (validation): 12 images" in proc.stdout
    assert "every image present, decodable and of the recorded size" in proc.stdout
    manifest = json.loads((data / MANIFEST).read_text())
    files = sorted((data / IMAGE_DIR).iterdir())
    assert manifest["images"] == 12 and manifest["total_bytes"] == sum(
        p.stat().st_size for p in files
    )
    assert sorted(manifest["files"]) == [f"validation/data/{p.name}" for p in files]
    assert len(manifest["files"][f"validation/data/{files[0].name}"]["sha256"]) == 64

    again, _ = verify(data)
    assert again.returncode == 0 and "unchanged since the manifest of" in again.stdout
    assert json.loads((data / MANIFEST).read_text()) == manifest


def test_missing_image_is_named(data):
    victim = image(data, 4)
    victim.unlink()
    proc, errors = verify(data)
    assert proc.returncode != 0
    assert errors == [f"error: {victim}: missing: run 'make dataset DIR={data}' to download it"]
    assert not (data / MANIFEST).exists()


def test_truncated_and_garbled_images_are_named(data):
    truncated, garbled = image(data, 1), image(data, 3)
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    blob = bytearray(garbled.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 2000] = np.random.default_rng(0).bytes(
        2000
    )  # noise in the scan data
    garbled.write_bytes(bytes(blob))
    proc, errors = verify(data)
    assert proc.returncode != 0 and len(errors) == 2
    assert errors[0].startswith(f"error: {truncated} does not decode (image file is truncated")
    assert errors[1].startswith(f"error: {garbled} does not decode (")
    assert all(
        e.endswith(f": delete it and run 'make dataset DIR={data}' to download it again")
        for e in errors
    )


def test_image_of_another_size_is_named(data, demo):
    victim = image(data, 0)
    record = next(i for i in demo["coco"]["images"] if i["file_name"] == victim.name)
    pixels = cv2.imread(str(victim))
    cv2.imwrite(
        str(victim),
        cv2.resize(pixels, (record["width"] // 2, record["height"] // 2)),
    )
    proc, errors = verify(data)
    assert errors == [
        f"error: {victim} is {record['width'] // 2}x{record['height'] // 2} pixels, the "
        f"annotations say {record['width']}x{record['height']}: delete it and run 'make dataset "
        f"DIR={data}' to download it again"
    ]


def test_duplicated_ids_wrong_classes_and_wrong_count(data):
    coco = json.loads((data / ANNOTATIONS).read_text())
    coco["images"].append(dict(coco["images"][2]))
    coco["categories"][7]["name"] = "Unicorn"
    (data / ANNOTATIONS).write_text(json.dumps(coco))
    proc, errors = verify(data, full=24781)
    path, name, ident = data / ANNOTATIONS, coco["images"][2]["file_name"], coco["images"][2]["id"]
    assert errors == [
        f"error: {path} lists 264 categories, not the 264 MLPerf classes in order (first "
        f"difference at id 7): run 'make dataset DIR={data}' again",
        f"error: {path}: image id {ident} appears 2 times: run 'make dataset DIR={data}' again to "
        "rewrite the annotations",
        f"error: {path}: file {name} appears 2 times: run 'make dataset DIR={data}' again to "
        "rewrite the annotations",
        f"error: {path} lists 13 images, the whole MLPerf validation set has 24,781: run 'make "
        f"dataset DIR={data}' to complete it, or verify a subset with MAX=13",
    ]


def test_many_problems_are_counted_not_all_listed(data):
    for path in (data / IMAGE_DIR).iterdir():
        path.unlink()
    proc, errors = verify(data)
    assert len(errors) == 11 and errors[-1] == "error: ... and 2 more missing images"


def test_changed_image_is_caught_by_the_manifest(data):
    assert verify(data)[0].returncode == 0
    victim = image(data, 5)
    pixels = cv2.imread(str(victim))
    cv2.imwrite(
        str(victim), pixels, [cv2.IMWRITE_JPEG_QUALITY, 40]
    )  # still decodes, same size, other bytes
    written = json.loads((data / MANIFEST).read_text())["written"]
    proc, errors = verify(data)
    assert errors == [
        f"error: validation/data/{victim.name} changed since the manifest of {written}: delete it "
        f"and run the download again to restore it, or delete {data / MANIFEST} to accept it"
    ]


def test_run_warns_when_the_dataset_differs_from_its_manifest(data, demo, tmp_path):
    assert verify(data)[0].returncode == 0
    victim = image(data, 5)
    cv2.imwrite(str(victim), cv2.imread(str(victim)), [cv2.IMWRITE_JPEG_QUALITY, 40])
    env = dict(os.environ, DATA_DIR=str(data), MODEL=str(demo["models"]["oracle"]), DEVICE="cpu")
    warnings = [f"warning: {line}" for line in preflight.check(env)[3]]  # what a run prints
    assert warnings[0].startswith(
        f"warning: MODEL={demo['models']['oracle']} is not the official "
        "resnext50_32x4d_fpn.pth (MD5 "
    )
    assert warnings[1].startswith(
        f"warning: 1 image in {data / IMAGE_DIR} differs from the manifest of "
    )
    assert warnings[1].endswith(
        f"first {victim.name}: run 'make verify-dataset DIR={data}' to see what changed"
    )


def test_removed_image_changes_the_set(data):
    assert verify(data)[0].returncode == 0
    coco = json.loads((data / ANNOTATIONS).read_text())
    coco["images"] = coco["images"][:-1]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] <= len(coco["images"])]
    (data / ANNOTATIONS).write_text(json.dumps(coco))
    proc, errors = verify(data, "MAX=11")
    written = json.loads((data / MANIFEST).read_text())["written"]
    assert errors == [
        f"error: the dataset changed since the manifest of {written} (1 image removed, annotations "
        f"changed): if that is intended, delete {data / MANIFEST} and verify again"
    ]


def test_exif_rotated_photo_is_checked_at_the_size_cv2_reads(tmp_path):
    """Camera photos carry an EXIF orientation; the downloader records, and the harness
    reads, what cv2.imread returns: the rotated size."""
    from PIL import Image

    from retinanet.verify_dataset import check_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(path, exif=exif)
    height, width = cv2.imread(str(path)).shape[:2]
    assert (width, height) == (100, 200)
    assert check_image(path, width, height)[2] is None
    assert check_image(path, 200, 100)[2] == "is 100x200 pixels, the annotations say 200x100"
