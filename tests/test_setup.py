"""setup.sh and the environment: idempotence, one pin, no drift between the env files,
and a clear message when upstream cannot be cloned."""

import importlib.metadata
import os
import re
import subprocess

import pytest
import yaml
from helpers import git_state

from retinanet import PROJECT_ROOT, UPSTREAM, patch_series

N = len(patch_series.series())  # patches in the series
PIN = patch_series.pinned_commit()


def requirement_names():
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return {
        re.split(r"[=<>~!]", line)[0].strip().lower()
        for line in lines
        if line and not line.startswith("#")
    }


def normalized(name):  # PEP 503
    return re.sub(r"[-_.]+", "-", name).lower()


def test_conda_env_reads_requirements_txt_only():
    env = yaml.safe_load((PROJECT_ROOT / "retinanet.yaml").read_text())
    assert env["name"] == "retinanet"
    pip_sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    assert pip_sections == [["-r requirements.txt"]]
    conda_names = {
        re.split(r"[=<>]", dep)[0] for dep in env["dependencies"] if isinstance(dep, str)
    }
    assert conda_names == {"python", "pip"}, "Python packages belong in requirements.txt"


def test_requirements_are_pinned_and_installed():
    lines = [
        line
        for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    installed = {
        normalized(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    for line in lines:
        name, version = line.split("==")
        name = normalized(name)
        if name == "onnxruntime" and "onnxruntime-gpu" in installed:  # setup's choice on a GPU host
            name = "onnxruntime-gpu"
        assert installed.get(name) == version, line
    assert not {"onnxruntime", "onnxruntime-gpu"} <= installed.keys(), (
        "both write onnxruntime/: one must go"
    )
    assert "mlcommons-loadgen" not in requirement_names(), (
        "LoadGen's version comes from the pinned upstream"
    )


def test_loadgen_matches_the_pinned_upstream(upstream):
    assert (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=UPSTREAM, capture_output=True, text=True
        ).stdout.strip()
        == PIN
    )
    pinned_version = subprocess.run(
        ["git", "show", f"{PIN}:loadgen/VERSION.txt"],
        cwd=UPSTREAM,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert pinned_version == "5.1.1"
    assert importlib.metadata.version("mlcommons-loadgen") == pinned_version
    tags = subprocess.run(
        ["git", "tag", "--points-at", PIN], cwd=UPSTREAM, capture_output=True, text=True
    ).stdout
    assert "v5.1.1" in tags.split()


def test_setup_twice_changes_nothing(upstream):
    first = subprocess.run(["./setup.sh"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    project, vendor = git_state(PROJECT_ROOT), git_state(UPSTREAM)
    stamp = (PROJECT_ROOT / ".venv" / ".retinanet-requirements").stat().st_mtime_ns

    second = subprocess.run(["./setup.sh"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"setup: upstream at {PIN[:12]}: up to date",
        f"setup: patch series already applied ({N} patches)",
        "setup: environment .venv: up to date",
        "setup: LoadGen 5.1.1: imports",
    ]
    assert git_state(PROJECT_ROOT) == project and git_state(UPSTREAM) == vendor
    assert (PROJECT_ROOT / ".venv" / ".retinanet-requirements").stat().st_mtime_ns == stamp


def test_setup_refuses_an_unknown_onnxruntime_package():
    proc = subprocess.run(
        ["./setup.sh", "env"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ONNXRUNTIME": "onnxruntime-rocm"},
    )
    assert proc.returncode == 1
    assert (
        proc.stderr == "setup: error: ONNXRUNTIME=onnxruntime-rocm is not one of: "
        "onnxruntime, onnxruntime-gpu\n"
    )


def test_setup_clones_sparse_at_the_pin_and_patches(project_copy):
    """A fresh clone through setup.sh, as on a user's machine (the URL may be a mirror)."""
    upstream = project_copy / "vendor" / "inference"
    subprocess.run(["rm", "-rf", str(upstream)], check=True)
    proc = subprocess.run(
        ["./setup.sh", "upstream", "patch"], cwd=project_copy, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert f"setup: upstream at {PIN[:12]}" in proc.stdout
    assert proc.stdout.count("setup: applied 0") == N
    listing = subprocess.run(
        ["git", "sparse-checkout", "list"], cwd=upstream, capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing == [
        "calibration/openimages",
        "compliance/TEST01",
        "loadgen",
        "tools/submission",
        "vision/classification_and_detection",
    ]
    assert not (upstream / "text_to_image").exists()
    status = subprocess.run(
        ["git", "submodule", "status"], cwd=project_copy, capture_output=True, text=True
    ).stdout
    assert status.split()[:2] == [PIN, "vendor/inference"]


def test_setup_without_upstream_says_how_to_use_a_mirror(project_copy):
    subprocess.run(["rm", "-rf", str(project_copy / "vendor" / "inference")], check=True)
    (project_copy / ".gitmodules").write_text(
        '[submodule "vendor/inference"]\n\tpath = vendor/inference\n\turl = file:///nonexistent/inference.git\n'
    )
    proc = subprocess.run(
        ["./setup.sh", "upstream"], cwd=project_copy, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert (
        "setup: error: could not clone file:///nonexistent/inference.git. Without a network, "
        "point git at a local mirror:" in proc.stderr
    )
    assert (
        "git config --global url.<mirror path>.insteadOf file:///nonexistent/inference.git"
        in proc.stderr
    )
    assert not (project_copy / "vendor" / "inference").exists()


def test_setup_refuses_upstream_with_foreign_edits(project_copy):
    edited = (
        project_copy
        / "vendor"
        / "inference"
        / "vision"
        / "classification_and_detection"
        / "user.conf"
    )
    edited.write_text("*.Offline.target_qps = 99\n")
    proc = subprocess.run(
        ["./setup.sh", "upstream", "patch"], cwd=project_copy, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert (
        "has local edits that are not the patch series "
        "(vision/classification_and_detection/user.conf)" in proc.stderr
    )
    assert edited.read_text() == "*.Offline.target_qps = 99\n"


@pytest.mark.timeout(120)
def test_setup_upstream_adds_the_submission_tools_to_an_older_checkout(project_copy):
    """A checkout made before the submission flow lacks tools/submission and compliance/:
    ./setup.sh upstream adds them, and says up to date the next time."""
    upstream = project_copy / "vendor" / "inference"
    subprocess.run(
        [
            "git",
            "sparse-checkout",
            "set",
            "--cone",
            "vision/classification_and_detection",
            "loadgen",
            "calibration/openimages",
        ],
        cwd=upstream,
        check=True,
    )
    assert not (upstream / "tools" / "submission").exists()
    for _ in range(2):
        proc = subprocess.run(
            ["./setup.sh", "upstream"], cwd=project_copy, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"setup: upstream at {PIN[:12]}: up to date\n"
    assert (upstream / "tools" / "submission" / "submission_checker.py").is_file()
    assert (upstream / "compliance" / "TEST01" / "retinanet" / "audit.config").is_file()
