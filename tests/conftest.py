"""Shared fixtures (the real upstream checkout, a generated dataset and models, make runs into
fresh folders) and hooks: the test tiers (docs/testing.md). What tests import is in
helpers.py."""

import os
import shutil
import subprocess

import pytest
from helpers import run_into, upstream_missing

from retinanet import PROJECT_ROOT, UPSTREAM, patch_series


@pytest.fixture(scope="session")
def upstream():
    reason = upstream_missing()
    if reason:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    return UPSTREAM


@pytest.fixture(scope="session")
def demo(upstream, tmp_path_factory):
    """A 12-image dataset in the downloader's layout, the oracles and the random-weights model."""
    from retinanet import demo_data, demo_models

    root = tmp_path_factory.mktemp("demo")
    coco = demo_data.generate(root / "data", num_images=12, seed=0)
    models = {}
    for name in demo_models.ORACLE_VARIANTS:
        models[name] = demo_models.save_torchscript(
            demo_models.build_oracle(coco, name), root / "models" / name / demo_models.MODEL_FILE
        )
    models["random-weights"] = demo_models.save_torchscript(
        demo_models.build_random_retinanet(),
        root / "models" / "random-weights" / demo_models.MODEL_FILE,
    )
    return {"root": root, "data": root / "data", "coco": coco, "models": models}


@pytest.fixture
def run(tmp_path):
    """make eval/perf into a fresh results and cache folder; returns (process, run folder)."""

    def _run(target, data, model, *settings, check=True, device="cpu"):
        return run_into(tmp_path, target, data, model, *settings, check=check, device=device)

    return _run


@pytest.fixture(scope="session")
def weightless(tmp_path_factory):
    """The state dict of every model in misbehaving_models.py: they have no weights."""
    import torch

    path = tmp_path_factory.mktemp("misbehaving") / "state.pth"
    torch.save({}, path)
    return path


@pytest.fixture
def project_copy(upstream, tmp_path):
    """The project's files in a new git repository, with its own clone of upstream at the pin:
    a place to break things without touching this checkout."""
    copy = tmp_path / "project"
    shutil.copytree(
        PROJECT_ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "vendor",
            "results",
            "cache",
            "demo",
            "data",
            "models",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    pin = patch_series.pinned_commit()
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(
        ["git", "update-index", "--add", "--cacheinfo", f"160000,{pin},vendor/inference"],
        cwd=copy,
        check=True,
    )
    clone = copy / "vendor" / "inference"
    subprocess.run(
        ["git", "clone", "-q", "--no-checkout", str(UPSTREAM), str(clone)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "git",
            "sparse-checkout",
            "set",
            "--cone",
            "vision/classification_and_detection",
            "loadgen",
            "calibration/openimages",
            "tools/submission",
            "compliance/TEST01",
        ],
        cwd=clone,
        check=True,
    )
    subprocess.run(
        ["git", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", pin],
        cwd=clone,
        check=True,
    )
    return copy


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


def pytest_configure(config):
    # TorchScript is the official model's format; its deprecation notice is not our news.
    config.addinivalue_line(
        "filterwarnings", r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"
    )


# The tiers. A test that uses one of these fixtures, directly or through another, needs
# upstream, the harness or a generated model, and is slow; so is one marked slow by hand
# (a server on loopback, a download). Every other test is fast: make test-fast runs them.
SLOW_FIXTURES = {"upstream", "demo", "run", "project_copy", "weightless"}
FAST_TIMEOUT_S = 60  # a fast test that hangs fails in a minute, not in pytest.ini's ten
FAST_LIMIT_S = 5  # a fast test slower than this is named at the end of the run
fast_seconds = {}  # nodeid: seconds, setup and teardown included


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
            continue
        item.add_marker(pytest.mark.fast)
        if not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT_S))


def pytest_runtest_logreport(report):
    if "fast" in report.keywords:
        fast_seconds[report.nodeid] = fast_seconds.get(report.nodeid, 0) + report.duration


def pytest_terminal_summary(terminalreporter):
    over = sorted((s, nodeid) for nodeid, s in fast_seconds.items() if s > FAST_LIMIT_S)
    if over:
        terminalreporter.section(
            f"fast tests slower than {FAST_LIMIT_S} s: make them faster, or mark them slow"
        )
        for seconds, nodeid in reversed(over):
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")
