"""The project's fast path changes nothing a model sees: inputs equal to the reference
preprocessing, memory bounded by LoadGen's loaded set, no disk cache by default, and an
accuracy guard for settings that are not plain fp32."""

import json
import re

import numpy as np
import pytest
from helpers import DEMO_USER_CONF

from retinanet import accuracy_guard, harness, settings_auto
from retinanet.demo_data import generate
from retinanet.machine import native_bf16


def test_inputs_equal_the_reference_preprocessing(demo, tmp_path):
    reference = harness.openimages(demo["data"], tmp_path / "float32", image_cache="float32")
    on_load = harness.openimages(demo["data"], tmp_path / "none", image_cache="none")
    compact = harness.openimages(demo["data"], tmp_path / "uint8", image_cache="uint8")
    assert reference.get_item_count() == on_load.get_item_count() == 12
    for i in range(12):
        expected = reference.get_item(i)[0]
        assert expected.dtype == np.float32 and expected.shape == (3, 800, 800)
        assert np.array_equal(on_load.get_item(i)[0], expected)  # bit-exact
        first, again = compact.get_item(i)[0], compact.get_item(i)[0]  # written, then read back
        assert np.array_equal(first, again)
        assert np.abs(first - expected).max() <= 0.5 / 255 + 1e-6
    cached = list((tmp_path / "uint8").rglob("*.npy"))
    assert len(cached) == 12 and all(np.load(f).dtype == np.uint8 for f in cached)
    assert (
        sum(f.stat().st_size for f in cached) * 4
        <= sum(f.stat().st_size for f in (tmp_path / "float32").rglob("*.npy")) * 1.01
    )
    assert not list((tmp_path / "none").rglob("*.npy"))


def test_uint8_cache_never_serves_a_changed_image(upstream, tmp_path):
    generate(tmp_path / "data", num_images=3, seed=1)
    cache = tmp_path / "cache"
    before = harness.openimages(tmp_path / "data", cache, image_cache="uint8").get_item(1)[0]
    generate(tmp_path / "data", num_images=3, seed=2)  # same file names, new pixels
    after = harness.openimages(tmp_path / "data", cache, image_cache="uint8").get_item(1)[0]
    fresh = harness.openimages(tmp_path / "data", tmp_path / "ref", image_cache="float32").get_item(
        1
    )[0]
    assert not np.array_equal(before, after)
    assert np.abs(after - fresh).max() <= 0.5 / 255 + 1e-6


def test_run_holds_only_the_loaded_set_and_writes_no_cache(run, demo, tmp_path):
    # LoadGen sizes its loaded set by performance_sample_count_override (64 for retinanet)
    user_conf = tmp_path / "user.conf"
    user_conf.write_text(
        DEMO_USER_CONF.read_text() + "retinanet.Offline.performance_sample_count_override = 4\n"
    )
    proc, run_dir = run(
        "eval",
        demo["data"],
        demo["models"]["oracle"],
        "PRECISION=fp32",
        "CHANNELS_LAST=0",
        f"USER_CONF={user_conf}",
    )
    loads = [
        int(n)
        for n in re.findall(r"preprocessed (\d+) samples in", (run_dir / "harness.log").read_text())
    ]
    assert loads[0] == 1  # the harness's warm-up sample
    assert max(loads[1:]) <= 4 and sum(loads[1:]) == 12, loads
    assert "mAP 100.000% on 12 images" in proc.stdout
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]


def test_agreement_counts_same_label_overlapping_boxes():
    boxes = np.array([[0, 0, 100, 100], [200, 200, 300, 260]], np.float32)
    scores, labels = np.array([0.9, 0.5], np.float32), np.array([3, 7])
    same = [(boxes, scores, labels)]
    assert accuracy_guard.agreement(same, same)["agreement"] == 1.0
    relabelled = [(boxes, scores, np.array([3, 8]))]
    assert accuracy_guard.agreement(same, relabelled)["matched"] == 1
    shifted = [(boxes + np.float32(30), scores - np.float32(0.1), labels)]
    result = accuracy_guard.agreement(same, shifted)
    assert result["matched"] == 0 and result["reference_detections"] == 2


def test_guard_reports_a_faster_setting_against_fp32(run, demo):
    proc, run_dir = run(
        "eval",
        demo["data"],
        demo["models"]["oracle"],
        "PRECISION=bf16",
        "CHANNELS_LAST=1",
        "GUARD_IMAGES=6",
    )
    report = json.loads((run_dir / "guard.json").read_text())
    assert report["images"] == 6 and report["setting"]["precision"] == "bf16"
    assert report["agreement"] == 1.0 and report["map_fp32"] == report["map_setting"] == 100.0
    assert re.search(
        r"^accuracy guard, bf16\+channels_last against fp32 on 6 images: 100\.0% of \d+ fp32 "
        r"detections reproduced",
        proc.stdout,
        re.M,
    )


@pytest.mark.parametrize(
    "requested, expected",
    [
        (
            {"DEVICE": "cpu", "PRECISION": "auto", "BATCH_SIZE": "", "THREADS": "auto"},
            {
                "PRECISION": "bf16" if native_bf16() else "fp32",
                "BATCH_SIZE": "1",
                "THREADS": "1",
                "CHANNELS_LAST": "1",
            },
        ),
        (
            {"DEVICE": "gpu", "PRECISION": "auto", "BATCH_SIZE": "auto"},
            {"PRECISION": "fp16", "BATCH_SIZE": "16"},
        ),
        (
            {"DEVICE": "cpu", "PRECISION": "fp32", "BATCH_SIZE": "4"},
            {"PRECISION": "fp32", "BATCH_SIZE": "4"},
        ),
        (
            {"DEVICE": "cpu", "BACKEND": "onnxruntime"},
            {"PRECISION": "fp32", "BATCH_SIZE": "1", "CHANNELS_LAST": "0"},
        ),
    ],
)
def test_auto_settings_follow_the_device(requested, expected):
    resolved, problems = settings_auto.resolve(requested)
    assert problems == [] and {name: resolved[name] for name in expected} == expected


def test_fp16_on_a_cpu_and_unknown_values_are_refused():
    _, problems = settings_auto.resolve(
        {"DEVICE": "cpu", "PRECISION": "fp16", "IMAGE_CACHE": "disk"}
    )
    assert problems == ["IMAGE_CACHE=disk is not one of: none, uint8, float32"]
    _, problems = settings_auto.resolve({"DEVICE": "cpu", "PRECISION": "fp16"})
    assert problems == ["PRECISION=fp16 is for GPUs: on a CPU use bf16 or fp32"]
