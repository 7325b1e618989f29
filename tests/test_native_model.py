"""MODEL_IMPL=native: the TorchScript archive's weights in the project's eager model of the
same architecture (retinanet/native_model.py). They load strictly, from today's key layout
(the demo's archive) and from the official archive's older one, and give the TorchScript's
detections, directly and through the real harness."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import DEMO_USER_CONF, TESTS
from test_hardware_branches import ONE_IMAGE, completed, detections_in, plausible

from retinanet import harness, native_model, settings_auto, settings_outputs
from retinanet.accuracy_guard import agreement, detect
from retinanet.settings import NATIVE_MODEL, NATIVE_MODEL_NNPACK

# fp32, the same kernels in the same order: equal but for float noise
BOX_TOLERANCE = 1e-3  # pixels, in the 800x800 frame
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def first_image(demo, tmp_path_factory):
    ds = harness.openimages(demo["data"], tmp_path_factory.mktemp("cache"), 1)
    return [ds.get_item(0)[0]]


@pytest.fixture(scope="module")
def torchscript_detections(demo, first_image):
    """The demo's real-architecture archive, run as TorchScript by the harness's backend."""
    return detect(demo["models"]["random-weights"], first_image, precision="fp32")


def xyxy_detections(rows):
    """(boxes xyxy in the 800 frame, scores, labels), as the model returns them, from the
    accuracy log's rows [id, ymin, xmin, ymax, xmax, score, label] (fractions)."""
    return rows[:, [2, 1, 4, 3]] * np.float32(800), rows[:, 5], rows[:, 6].astype(np.int64)


def old_layout(state):
    """A state dict in the official archive's layout: no wrapper prefix, FPN blocks as plain
    Conv2d, the heads' conv a Sequential of Conv2d and ReLU (Conv2d at even places)."""
    old = {}
    for key, value in state.items():
        key = key.removeprefix("detector.")
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)
        key = re.sub(
            r"^(head\.\w+_head\.conv)\.(\d+)\.0\.",
            lambda m: f"{m.group(1)}.{2 * int(m.group(2))}.",
            key,
        )
        old[key] = value
    return old


@pytest.mark.timeout(300)
def test_archive_loads_strictly_and_detects_as_the_torchscript(
    demo, first_image, torchscript_detections
):
    archive = torch.jit.load(str(demo["models"]["random-weights"]))
    model = native_model.from_archive(demo["models"]["random-weights"])
    # strict: every key of the archive found a place, and every parameter a value
    mapped = native_model.model_keys(archive.state_dict(), model)
    assert set(mapped) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    assert isinstance(model.backbone.body.bn1, native_model.FrozenBatchNorm2d)
    assert model.per_level == [100 * 100 * 9, 50 * 50 * 9, 25 * 25 * 9, 13 * 13 * 9, 7 * 7 * 9]

    native = detect(
        demo["models"]["random-weights"],
        first_image,
        {"eager_model": NATIVE_MODEL},
        precision="fp32",
    )
    (ts_boxes, ts_scores, ts_labels), (boxes, scores, labels) = torchscript_detections[0], native[0]
    print(f"\nnative against TorchScript, 1 image: {len(scores)} and {len(ts_scores)} detections")
    assert len(ts_scores) > 0 and len(scores) == len(ts_scores)
    assert (labels == ts_labels).all()
    assert abs(boxes - ts_boxes).max() <= BOX_TOLERANCE
    assert abs(scores - ts_scores).max() <= SCORE_TOLERANCE


@pytest.mark.timeout(120)
def test_the_official_key_layout_loads_strictly(demo):
    archive_state = torch.jit.load(str(demo["models"]["random-weights"])).state_dict()
    old = old_layout(archive_state)
    assert "backbone.fpn.inner_blocks.0.weight" in old
    assert "head.classification_head.conv.6.weight" in old
    model = native_model.from_state_dict(old)
    for key, value in native_model.from_state_dict(archive_state).state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    # strict: a key the archive lacks, or one the model does not have, is named
    missing = dict(old)
    del missing["head.regression_head.bbox_reg.bias"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*"head\.regression_head\.bbox_reg'):
        native_model.from_state_dict(missing)
    extra = {
        **old,
        "backbone.fpn.extra_blocks.p8.weight": old["backbone.fpn.extra_blocks.p7.weight"],
    }
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*extra_blocks\.p8"):
        native_model.from_state_dict(extra)


def test_native_through_the_harness_gives_the_torchscript_detections(
    run, demo, torchscript_detections
):
    proc, run_dir = run(
        "eval",
        demo["data"],
        demo["models"]["random-weights"],
        "MODEL_IMPL=native",
        "NNPACK=0",
        "PRECISION=fp32",
        "CHANNELS_LAST=0",
        "CHECK_IMAGES=1",
        *ONE_IMAGE,
    )
    record = completed(run_dir)
    assert record["settings"]["model_impl"] == "native" and record["settings"]["nnpack"] == "0"
    assert "--eager-model" in record["command"]
    rows = detections_in(run_dir)[0]
    plausible(rows)
    match = agreement(torchscript_detections, [xyxy_detections(rows)])
    assert match["agreement"] == 1.0 and match["mean_abs_score_difference"] < 1e-5, match


def test_native_refuses_what_is_torchscript_only(run, demo):
    proc, run_dir = run(
        "perf",
        demo["data"],
        demo["models"]["random-weights"],
        "MODEL_IMPL=native",
        "FREEZE=1",
        check=False,
    )
    assert proc.returncode != 0 and run_dir is None
    assert (
        "error: FREEZE=1 is for TorchScript (MODEL_IMPL=torchscript); the native model has "
        "COMPILE=1" in proc.stdout
    )


def test_guard_arguments_carry_the_native_model_compile_and_nnpack():
    native_cpu = {"MODEL_IMPL": "native", "PRECISION": "fp32", "DEVICE": "cpu"}
    resolved, problems = settings_auto.resolve({**native_cpu, "COMPILE": "1", "NNPACK": "0"})
    assert problems == []
    args = settings_outputs.guard_args("accuracy", resolved, 8)
    assert args[args.index("--eager-model") + 1] == NATIVE_MODEL and "--compile" in args
    assert settings_outputs.guard_args("performance", resolved, 8) == []
    resolved["COMPILE"] = "0"  # plain fp32: nothing to guard
    assert settings_outputs.guard_args("accuracy", resolved, 8) == []

    # NNPACK: on by default for the native model in fp32 on a CPU, in NCHW; guarded against
    # the archive run as TorchScript
    resolved, problems = settings_auto.resolve(native_cpu)
    assert problems == [] and (resolved["NNPACK"], resolved["CHANNELS_LAST"]) == ("1", "0")
    args = settings_outputs.harness_args(resolved)
    assert args[args.index("--eager-model") + 1] == NATIVE_MODEL_NNPACK
    args = settings_outputs.guard_args("accuracy", resolved, 8)
    assert args[args.index("--eager-model") + 1] == NATIVE_MODEL_NNPACK
    assert "--reference-archive" in args
    for other in ({"PRECISION": "bf16"}, {"MODEL_IMPL": "torchscript"}):
        resolved, problems = settings_auto.resolve({**native_cpu, **other})
        assert problems == [] and resolved["NNPACK"] == "0"
    for other, problem in [
        ({"PRECISION": "bf16"}, "NNPACK=1 runs fp32 convolutions on a CPU: DEVICE=cpu"),
        ({"MODEL_IMPL": "torchscript"}, "NNPACK=1 is the native model's: MODEL_IMPL=native"),
    ]:
        _, problems = settings_auto.resolve({**native_cpu, **other, "NNPACK": "1"})
        assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.timeout(300)
def test_nnpack_runs_the_fpn_and_head_convolutions(demo, first_image, torchscript_detections):
    """NNPACK=1: every 3x3 convolution of the FPN and the heads goes through NNPACK (the
    profiler counts its calls), and the detections are fp32's but for rounding: Winograd
    sums in another order."""
    model = native_model.from_archive_nnpack(demo["models"]["random-weights"])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    nnpack = [m for m in convs if isinstance(m, native_model.NNPACKConv2d)]
    # FPN: 3 outputs and P6, P7; each head: 4 convs and its last, on each of 5 levels
    assert len(nnpack) == 3 + 2 + 2 * 5
    assert all(m.kernel_size == (3, 3) for m in nnpack)
    assert not any(isinstance(m, native_model.NNPACKConv2d) for m in model.backbone.body.modules())
    # the backbone's batch norms folded into its convolutions, the backbone in channels_last
    body = list(model.backbone.body.modules())
    assert not any(isinstance(m, native_model.FrozenBatchNorm2d) for m in body)
    assert all(m.bias is not None for m in body if isinstance(m, torch.nn.Conv2d))
    assert model.backbone_memory_format == torch.channels_last and model.fast_top_k
    with torch.inference_mode(), torch.profiler.profile() as profile:
        results = model(torch.as_tensor(first_image[0])[None])
    calls = {event.key: event.count for event in profile.key_averages()}
    assert calls.get("aten::_nnpack_spatial_convolution") == 3 + 2 + 2 * 5 * 5, calls

    keep = results[0]["scores"] >= 0.05
    candidate = [tuple(results[0][k][keep].numpy() for k in ("boxes", "scores", "labels"))]
    (_, ts_scores, _), (_, scores, _) = torchscript_detections[0], candidate[0]
    match = agreement(torchscript_detections, candidate)
    print(f"\nnative+NNPACK against TorchScript fp32, 1 image: {match}")
    # near-ties of the random weights move across the cut-off (see the compile test below)
    assert len(scores) == len(ts_scores)
    assert abs(np.sort(scores) - np.sort(ts_scores)).max() < SCORE_TOLERANCE * 10
    assert match["agreement"] >= 0.7 and match["mean_abs_score_difference"] < 1e-5


@pytest.mark.timeout(60)
def test_sliced_top_k_finds_the_top_k():
    """The fast form's top-k, a top-k of each slice and then of their winners, gives
    torch.topk's candidates: the same values and places where no two logits are equal."""
    generator = torch.Generator().manual_seed(0)
    for count, classes in ((90000, 264), (441, 264), (9, 20)):
        logits = torch.randn(2, count, classes, generator=generator)
        top, places = native_model.top_candidates(logits, 9)
        expected, expected_places = logits.flatten(1).topk(
            min(native_model.CANDIDATES_PER_LEVEL, count * classes), dim=1
        )
        assert torch.equal(top, expected) and torch.equal(places, expected_places), count


@pytest.mark.timeout(300)
def test_auto_takes_the_native_model_where_it_fits(demo, weightless):
    """MODEL_IMPL=auto: native in fp32 on a CPU for an archive of this architecture;
    TorchScript for any other archive, in another precision, or for what only it does."""
    archive = {"MODEL": str(demo["models"]["random-weights"]), "DEVICE": "cpu"}
    resolved, problems = settings_auto.resolve({**archive, "PRECISION": "fp32"})
    assert problems == [] and resolved["MODEL_IMPL"] == "native" and resolved["NNPACK"] == "1"
    for other in (
        {"MODEL": str(demo["models"]["oracle"])},  # TorchScript of another architecture
        {"MODEL": str(weightless)},  # not TorchScript at all
        {"PRECISION": "bf16"},
        {"FREEZE": "1"},
    ):
        resolved, problems = settings_auto.resolve({**archive, "PRECISION": "fp32", **other})
        assert problems == [] and resolved["MODEL_IMPL"] == "torchscript", other
        assert resolved["NNPACK"] == "0"
        cores = str(torch.get_num_threads())
        assert (resolved["THREADS"], resolved["INTRA_THREADS"]) == ("1", cores), other


@pytest.mark.timeout(300)
def test_nnpack_workers_share_the_cores(demo):
    """With NNPACK, one worker thread per core of one intra-op thread each, in the throughput
    scenarios; one worker of all cores in SingleStream, and under Ray, which shares the cores
    out itself (INTRA_THREADS empty)."""
    cores = torch.get_num_threads()
    fast = {"MODEL": str(demo["models"]["random-weights"]), "DEVICE": "cpu", "PRECISION": "fp32"}
    for scenario in ("Offline", "Server", "MultiStream"):
        resolved, problems = settings_auto.resolve({**fast, "SCENARIO": scenario})
        assert problems == [] and resolved["NNPACK"] == "1"
        assert resolved["THREADS"] == str(cores), scenario  # 24 GB: memory does not cap it
        assert resolved["INTRA_THREADS"] == "1", scenario
    for other, intra in (
        ({"SCENARIO": "SingleStream"}, str(cores)),
        ({"NNPACK": "0"}, str(cores)),
        ({"WORKERS": "2"}, ""),
    ):
        resolved, problems = settings_auto.resolve({**fast, **other})
        assert problems == [] and (resolved["THREADS"], resolved["INTRA_THREADS"]) == ("1", intra)
    resolved, problems = settings_auto.resolve({**fast, "THREADS": "2", "INTRA_THREADS": ""})
    assert problems == [] and resolved["INTRA_THREADS"] == str(max(1, cores // 2))
    resolved, problems = settings_auto.resolve({**fast, "INTRA_THREADS": "3"})
    assert problems == [] and resolved["INTRA_THREADS"] == "3"


def test_nnpack_by_default_through_the_harness_with_the_guard(run, demo):
    """The defaults in fp32 on a CPU: the native model with NNPACK, in NCHW, one worker thread
    per core; the accuracy guard compares it with the archive run as TorchScript."""
    proc, run_dir = run(
        "eval",
        demo["data"],
        demo["models"]["random-weights"],
        "PRECISION=fp32",
        "CHECK_IMAGES=1",
        "GUARD_IMAGES=1",
        "COUNT=2",
        "WARMUP=0",
    )
    record = completed(run_dir)
    assert record["settings"]["model_impl"] == "native"
    assert (record["settings"]["nnpack"], record["settings"]["channels_last"]) == ("1", "0")
    cores = torch.get_num_threads()
    assert record["settings"]["threads"] == str(cores)
    assert record["settings"]["intra_threads"] == "1"
    assert NATIVE_MODEL_NNPACK in record["command"]
    logged = detections_in(run_dir)
    assert sorted(logged) == [0, 1]
    for rows in logged.values():
        plausible(rows)
    guard = json.loads((run_dir / "guard.json").read_text())
    assert guard["reference_detections"] > 0
    assert guard["agreement"] >= 0.7 and guard["mean_abs_score_difference"] < 1e-5
    assert (
        "accuracy guard, native fp32+nnpack against the TorchScript archive in fp32 on 1 images"
        in proc.stdout
    )


@pytest.mark.timeout(900)
def test_compile_through_the_harness_with_the_accuracy_guard(run, demo, torchscript_detections):
    """The one torch.compile test (a minute or more to compile on 2 cores, twice: the run and
    the guard): the compiled native model through make eval, with NNPACK's op inside the
    compiled graph as on any CPU in fp32, its detections those of the TorchScript but for
    near-ties, the guard's too."""
    proc, run_dir = run(
        "eval",
        demo["data"],
        demo["models"]["random-weights"],
        "MODEL_IMPL=native",
        "COMPILE=1",
        "PRECISION=fp32",
        "CHECK_IMAGES=0",
        "GUARD_IMAGES=1",
        "STALL_TIMEOUT=600",
        *ONE_IMAGE,
    )
    record = completed(run_dir)
    assert record["settings"]["compile"] == "1" and "--compile" in record["command"]
    assert record["settings"]["nnpack"] == "1"
    rows = detections_in(run_dir)[0]
    plausible(rows)
    # Compiled kernels (and channels_last alone) sum in another order: scores move by about
    # 1e-7. The random weights score millions of candidates within 1e-4 of each other (the
    # 300 kept span 0.10033-0.10046, with ties), so that moves near-ties across the cut-off
    # and through NMS: measured, 77% of the boxes match (eager channels_last alone: 80%).
    # The scores themselves, sorted, must agree.
    (_, ts_scores, _), (_, scores, _) = torchscript_detections[0], xyxy_detections(rows)
    assert len(scores) == len(ts_scores)
    assert abs(np.sort(scores) - np.sort(ts_scores)).max() < SCORE_TOLERANCE * 10
    match = agreement(torchscript_detections, [xyxy_detections(rows)])
    print(f"\nnative+compile+NNPACK against TorchScript fp32, 1 image: {match}")
    assert match["agreement"] >= 0.7 and match["mean_abs_score_difference"] < 1e-5
    guard = json.loads((run_dir / "guard.json").read_text())
    assert guard["setting"]["compile"] is True and guard["reference_detections"] > 0
    assert guard["agreement"] >= 0.7 and guard["mean_abs_score_difference"] < 1e-5
    assert (
        "accuracy guard, native fp32+compile+nnpack against the TorchScript archive in fp32 on "
        "1 images" in proc.stdout
    )


def test_compile_warms_up_the_run_s_batch_shapes(run, demo, weightless, tmp_path):
    """COMPILE=1 through the harness without the cost of a compilation: a model whose
    compile_static() only marks the log. The warm-up gives it a full batch and a single image
    in turn, so that a real compilation for either shape happens before LoadGen starts."""
    log = tmp_path / "shapes.log"
    _, run_dir = run(
        "perf",
        demo["data"],
        weightless,
        "MODEL_FACTORY=misbehaving_models:shape_recorder",
        f"PYTHONPATH={TESTS}",
        f"MISBEHAVIOUR_LOG={log}",
        "COMPILE=1",
        "BATCH_SIZE=4",
        "WARMUP=3",
        "COUNT=8",
        "CHECK_IMAGES=0",
        f"USER_CONF={DEMO_USER_CONF}",
    )
    assert completed(run_dir)["settings"]["compile"] == "1"
    calls = log.read_text().split()
    assert calls[:4] == ["compiled", "4", "1", "4"], calls
    assert all(int(size) <= 4 for size in calls[4:])
