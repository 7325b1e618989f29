"""`make dataset` and `make calibration`: the patched upstream downloader, run as a user runs
it, against an S3-compatible server (moto) and an HTTP server on loopback that hold a small
OpenImages in the real formats. Full download, MAX subset, a run killed mid-way and
resumed, a CSV cut off or truncated, a missing object, a corrupt JPEG, then the result
through verify-dataset and `make eval`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from fake_openimages import CLASSES_CSV, OTHER_CLASSES, TRAIN_CSV, VALIDATION_CSV, FakeOpenImages
from helpers import PYTHON, make
from loopback import FileServer, S3Server, SlowProxy

from retinanet import ANNOTATIONS, IMAGE_DIR, PROJECT_ROOT
from retinanet.demo_models import build_oracle, save_torchscript

BUCKET = "open-images-dataset"


@pytest.fixture(scope="module")
def remote(upstream):
    """The fake OpenImages on its two servers; tests that break something make their own."""
    fake = FakeOpenImages(mlperf_images=20, other_images=4, seed=1)
    with S3Server() as s3, FileServer(fake.files) as http:
        s3.bucket(BUCKET, fake.objects)
        yield {"fake": fake, "s3": s3, "http": http}


def endpoints(remote, http=None, s3=None, bucket=BUCKET):
    return [
        f"OPENIMAGES_CSV_URL={http or remote['http'].url}",
        f"OPENIMAGES_S3_ENDPOINT={s3 or remote['s3'].url}",
        f"OPENIMAGES_BUCKET={bucket}",
    ]


def dataset(remote, data, *settings, check=True, **kw):
    return make(
        "dataset",
        f"DIR={data}",
        f"FULL_IMAGES={len(remote['fake'].expected)}",
        *endpoints(remote, **kw),
        *settings,
        check=check,
    )


def error_lines(proc):
    return [line for line in proc.stdout.splitlines() if line.startswith("error:")]


def image_files(data):
    return sorted(p.name for p in (data / IMAGE_DIR).iterdir())


def leftovers(data):
    return sorted(str(p.relative_to(data)) for p in data.rglob("*.part"))


def test_full_download_matches_the_remote(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    proc = dataset(remote, data)
    assert "0 of 20 images are already in" in proc.stdout and "downloading 20" in proc.stdout
    assert "Downloading images: 100%" in proc.stdout and "Reading image sizes: 100%" in proc.stdout
    assert f"verify-dataset: {data} (validation): 20 images" in proc.stdout
    assert f"manifest written: {data / 'validation' / 'manifest.json'}" in proc.stdout

    # only the MLPerf images, byte for byte, and nothing half-written
    assert image_files(data) == [f"{i}.jpg" for i in fake.mlperf_ids]
    for name in image_files(data):
        assert (data / IMAGE_DIR / name).read_bytes() == fake.objects[f"validation/{name}"]
    assert (data / "annotations" / "validation-annotations-bbox.csv").read_bytes() == fake.files[
        VALIDATION_CSV
    ]
    assert leftovers(data) == []

    coco = json.loads((data / ANNOTATIONS).read_text())
    assert len(coco["categories"]) == 264
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (k + 1, f"{e['image_id']}.jpg", e["width"], e["height"])
        for k, e in enumerate(fake.expected)
    ]
    for image, expected in zip(coco["images"], fake.expected):
        got = sorted(
            (a["category_id"], tuple(a["bbox"]), bool(a["iscrowd"]))
            for a in coco["annotations"]
            if a["image_id"] == image["id"]
        )
        assert [(c, g) for c, _, g in got] == [(c, g) for c, _, g in expected["boxes"]]
        for (_, box, _), (_, want, _) in zip(got, expected["boxes"]):
            assert box == pytest.approx(want, abs=1e-6)  # relative coordinates back to pixels


def test_rerun_downloads_nothing_and_keeps_the_files(remote, tmp_path):
    data = tmp_path / "data"
    dataset(remote, data)
    before = {p.name: p.stat().st_mtime_ns for p in (data / IMAGE_DIR).iterdir()}
    csv_gets = len(remote["http"].requests())
    # as a user runs it: the Makefile's own PYTHON (a relative .venv/bin/python)
    proc = subprocess.run(
        ["make", "dataset", f"DIR={data}", "FULL_IMAGES=20", *endpoints(remote)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "20 of 20 images are already in" in proc.stdout and "downloading 0" in proc.stdout
    assert len(remote["http"].requests()) == csv_gets, "a CSV already there was downloaded again"
    assert {p.name: p.stat().st_mtime_ns for p in (data / IMAGE_DIR).iterdir()} == before
    assert "verify-dataset" in proc.stdout and "20 images" in proc.stdout


def test_max_picks_distinct_images(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    proc = dataset(remote, data, "MAX=7")
    coco = json.loads((data / ANNOTATIONS).read_text())
    names = [image["file_name"] for image in coco["images"]]
    assert len(names) == len(set(names)) == 7 and len({i["id"] for i in coco["images"]}) == 7
    assert image_files(data) == sorted(names)
    assert set(names) <= {f"{i}.jpg" for i in fake.mlperf_ids}
    boxes = {e["image_id"]: len(e["boxes"]) for e in fake.expected}
    assert len(coco["annotations"]) == sum(
        boxes[name[:-4]] for name in names
    )  # no duplicated boxes
    assert "(validation): 7 images" in proc.stdout
    # the manifest remembers MAX, so verifying later needs no MAX
    assert "unchanged since the manifest" in make("verify-dataset", f"DIR={data}").stdout


def test_killed_mid_download_resumes_with_only_the_missing_images(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    with SlowProxy(remote["s3"].url, pause=0.5) as proxy:
        cmd = [
            "make",
            "dataset",
            f"PYTHON={PYTHON}",
            f"DIR={data}",
            "FULL_IMAGES=20",
            *endpoints(remote, s3=proxy.url),
        ]
        run = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.poll() is None:
            if (data / IMAGE_DIR).is_dir() and len(list((data / IMAGE_DIR).glob("*.jpg"))) >= 4:
                break
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)  # as a power cut or an OOM kill would
        run.wait(timeout=30)
    kept = sorted(p.name for p in (data / IMAGE_DIR).glob("*.jpg"))
    assert 4 <= len(kept) < 20, "the run was not stopped mid-way"
    assert leftovers(data), "no download was under way when killed"
    for name in kept:  # a final name is only ever a whole file
        assert (data / IMAGE_DIR / name).read_bytes() == fake.objects[f"validation/{name}"]
    assert not (data / ANNOTATIONS).exists()
    stamps = {name: (data / IMAGE_DIR / name).stat().st_mtime_ns for name in kept}

    with SlowProxy(remote["s3"].url, pause=0) as proxy:
        proc = dataset(remote, data, s3=proxy.url)
        fetched = {path.split("/", 2)[2] for method, path, _ in proxy.log if method == "GET"}
    assert f"{len(kept)} of 20 images are already in" in proc.stdout
    assert fetched == {f"validation/{i}.jpg" for i in fake.mlperf_ids} - {
        f"validation/{n}" for n in kept
    }
    assert {name: (data / IMAGE_DIR / name).stat().st_mtime_ns for name in kept} == stamps
    assert leftovers(data) == []
    assert "(validation): 20 images" in proc.stdout


def test_csv_cut_off_is_resumed_where_it_stopped(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    with FileServer(fake.files) as http:
        http.cut[VALIDATION_CSV] = (
            8192,
            1,
        )  # a multiple of the 8 KB read: urllib3 drops a partial read
        proc = dataset(remote, data, http=http.url, check=False)
        total = len(fake.files[VALIDATION_CSV])
        assert proc.returncode != 0
        part = data / "annotations" / "validation-annotations-bbox.csv.part"
        assert error_lines(proc) == [
            f"error: the download of {http.url}{VALIDATION_CSV} broke off after 8192 of {total} "
            f"bytes: run again to resume it ({part} holds what came)"
        ]
        assert not (data / "annotations" / "validation-annotations-bbox.csv").exists()
        assert part.read_bytes() == fake.files[VALIDATION_CSV][:8192]

        proc = dataset(remote, data, http=http.url)
        assert http.requests()[-2:] == [
            ("GET", VALIDATION_CSV, "bytes=8192-"),
            ("GET", CLASSES_CSV, "bytes=0-"),
        ]
    assert (data / "annotations" / "validation-annotations-bbox.csv").read_bytes() == fake.files[
        VALIDATION_CSV
    ]
    assert leftovers(data) == [] and "(validation): 20 images" in proc.stdout


def test_truncated_csv_is_refused_and_not_kept(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    whole = fake.files[VALIDATION_CSV]
    cut = whole[
        : whole.rindex(b"\n", 0, len(whole) // 2) + 30
    ]  # ends mid-row, served as a whole file
    line = cut.count(b"\n") + 1
    with FileServer({**fake.files, VALIDATION_CSV: cut}) as http:
        proc = dataset(remote, data, http=http.url, check=False)
    assert proc.returncode != 0
    assert error_lines(proc) == [
        f"error: {http.url}{VALIDATION_CSV} sent a file that is not a whole "
        f"validation-annotations-bbox.csv (line {line} is incomplete); it was not kept: run again, "
        "or set OPENIMAGES_CSV_URL to another mirror"
    ]
    assert sorted(p.name for p in (data / "annotations").iterdir()) == []

    # a half CSV an older downloader left under the final name: named, kept, not used
    (data / "annotations" / "validation-annotations-bbox.csv").write_bytes(cut)
    proc = dataset(remote, data, check=False)
    assert error_lines(proc) == [
        f"error: {data / 'annotations' / 'validation-annotations-bbox.csv'} is damaged (line "
        f"{line} is incomplete): delete it and run again to download it anew"
    ]
    assert (data / "annotations" / "validation-annotations-bbox.csv").read_bytes() == cut
    assert not (data / IMAGE_DIR).exists() or image_files(data) == []


def test_missing_object_is_named_and_the_rest_kept(remote, tmp_path):
    fake, data, s3 = remote["fake"], tmp_path / "data", remote["s3"]
    gone = f"validation/{fake.mlperf_ids[5]}.jpg"
    bucket = s3.bucket("missing-one", {k: v for k, v in fake.objects.items() if k != gone})
    proc = dataset(remote, data, bucket=bucket, check=False)
    assert proc.returncode != 0
    where = f"bucket missing-one at {s3.url}"
    assert f"{gone}: not found in {where} (HTTP 404)" in proc.stdout
    assert error_lines(proc) == [
        "error: 1 of 20 images could not be downloaded (listed above), so openimages-mlperf.json "
        f"was not written; the 19 others are in {data / IMAGE_DIR}. Run again to retry only what "
        f"is missing; an image not found again is missing from {where}"
    ]
    assert (
        len(image_files(data)) == 19 and leftovers(data) == [] and not (data / ANNOTATIONS).exists()
    )

    s3.client.put_object(Bucket=bucket, Key=gone, Body=fake.objects[gone], ACL="public-read")
    proc = dataset(remote, data, bucket=bucket)
    assert (
        "19 of 20 images are already in" in proc.stdout and "(validation): 20 images" in proc.stdout
    )


def test_corrupt_jpeg_is_refused_and_not_kept(remote, tmp_path):
    fake, data, s3 = remote["fake"], tmp_path / "data", remote["s3"]
    page, half = (f"validation/{fake.mlperf_ids[k]}.jpg" for k in (2, 9))
    damaged = {
        page: b"<html><body>503 Service Unavailable</body></html>\n",
        half: fake.objects[half][:300],
    }
    bucket = s3.bucket("corrupt", {**fake.objects, **damaged})
    proc = dataset(remote, data, bucket=bucket, check=False)
    assert proc.returncode != 0
    for key, body in damaged.items():
        assert (
            f"{key}: the server sent {len(body)} bytes that do not decode as an image"
            in proc.stdout
        )
    assert error_lines(proc)[0].startswith(
        "error: 2 of 20 images could not be downloaded (listed above)"
    )
    assert len(image_files(data)) == 18 and leftovers(data) == []


def test_class_missing_from_the_class_list_is_named(remote, tmp_path):
    fake, data = remote["fake"], tmp_path / "data"
    classes = b"\n".join(
        row for row in fake.files[CLASSES_CSV].split(b"\n") if not row.endswith(b",Zucchini")
    )
    with FileServer({**fake.files, CLASSES_CSV: classes}) as http:
        proc = dataset(remote, data, http=http.url, check=False)
    assert error_lines(proc) == [
        "error: class-descriptions-boxable.csv has no class 'Zucchini' (1 of the 264 classes "
        f"asked for are missing): is {http.url}{CLASSES_CSV} the OpenImages boxable class list?"
    ]
    assert OTHER_CLASSES[0].encode() in classes


def test_unreachable_servers_are_named(remote, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = dataset(remote, tmp_path / "data", http=closed, check=False)
    assert error_lines(proc) == [
        f"error: cannot reach {closed}{VALIDATION_CSV} (ConnectionError): check the network, or "
        "set OPENIMAGES_CSV_URL to a mirror"
    ]
    # the images' endpoint: one line, not one failure per image after every retry
    proc = dataset(remote, tmp_path / "data", s3=closed, check=False)
    assert error_lines(proc) == [
        f"error: cannot connect to bucket {BUCKET} at {closed}: check the network, or set "
        "OPENIMAGES_S3_ENDPOINT to a mirror; the images already downloaded are kept in "
        f"{tmp_path / 'data' / IMAGE_DIR}, run again to continue"
    ]


@pytest.fixture
def small_disk(tmp_path):
    """A 700 KB file system: room for the CSVs and about half the images."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        reason = f"cannot mount a small tmpfs here to fill ({proc.stderr.strip()}): needs root"
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_stops_the_download_and_keeps_what_came(remote, small_disk):
    fake, data = remote["fake"], small_disk / "data"
    proc = dataset(remote, data, check=False)
    assert proc.returncode != 0
    assert (
        f"warning: 20 images to download take about 10 MB; {data / IMAGE_DIR} has " in proc.stdout
    )
    kept = image_files(data)
    assert 0 < len(kept) < 20
    assert error_lines(proc) == [
        f"error: the disk holding {data / IMAGE_DIR} is full: {len(kept)} of 20 images were "
        f"downloaded and are kept; free about {(20 - len(kept)) * 0.5:.0f} MB, then run again to "
        "download the rest"
    ]
    for name in kept:
        assert (data / IMAGE_DIR / name).read_bytes() == fake.objects[f"validation/{name}"]
    assert leftovers(data) == [] and not (data / ANNOTATIONS).exists()


def test_downloaded_dataset_runs_through_eval_at_100_percent(remote, tmp_path, run):
    """The oracle built from the downloaded annotations finds every box of the rendered
    images only if the downloader converted every box right."""
    data = tmp_path / "data"
    dataset(remote, data)
    coco = json.loads((data / ANNOTATIONS).read_text())
    model = save_torchscript(build_oracle(coco), tmp_path / "oracle" / "resnext50_32x4d_fpn.pth")
    proc, run_dir = run("eval", data, model, "BATCH_SIZE=4")
    assert "mAP 100.000% on 20 images: meets the MLPerf target" in proc.stdout
    warning = [line for line in proc.stdout.splitlines() if line.startswith("warning: MODEL=")]
    assert len(warning) == 1 and "is not the official resnext50_32x4d_fpn.pth" in warning[0]
    assert "a55f6bec3464f605ce8d686da8ac1533" in warning[0]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_calibration_set(remote, tmp_path):
    fake = FakeOpenImages(mlperf_images=2, other_images=0, seed=2, calibration=True)
    data = tmp_path / "data"
    with S3Server() as s3, FileServer(fake.files) as http:
        s3.bucket(BUCKET, {k: v for k, v in fake.objects.items() if k.startswith("train/")})
        settings = [
            f"DIR={data}",
            f"OPENIMAGES_CSV_URL={http.url}",
            f"OPENIMAGES_S3_ENDPOINT={s3.url}",
        ]
        proc = make("calibration", *settings)
        assert "0 of 500 images are already in" in proc.stdout
        assert f"verify-dataset: {data} (calibration): 500 images" in proc.stdout
        coco = json.loads((data / "annotations" / "openimages-calibration-mlperf.json").read_text())
        assert sorted(i["file_name"][:-4] for i in coco["images"]) == sorted(fake.calibration_ids)
        assert len(coco["annotations"]) == 500 and len(coco["categories"]) == 264
        assert sorted(p.name for p in (data / "calibration" / "data").iterdir()) == sorted(
            f"{i}.jpg" for i in fake.calibration_ids
        )
        assert (
            data / "annotations" / "oidv6-train-annotations-bbox.csv"
        ).read_bytes() == fake.files[TRAIN_CSV]
        again = make("calibration", *settings)
        assert "500 of 500 images are already in" in again.stdout
    assert "(calibration): 500 images" in make("verify-dataset", f"DIR={data}").stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
