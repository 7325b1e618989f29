"""The patch series against the real pinned upstream: lint, apply, idempotence, half-applied
series, local edits, and a patch that no longer applies."""

import json
import shutil
import subprocess

import pytest
from helpers import git_state, make, patch_series_in

from retinanet import patch_series
from retinanet.patch_series import PatchError

N = len(patch_series.series())  # patches in the series
PIN = patch_series.pinned_commit()[:12]


def test_make_check_patches_passes(upstream):
    proc = make("check-patches")
    assert f"{N} patches: headers complete, apply and revert cleanly on {PIN}" in proc.stdout


def test_series_is_numbered_and_documented():
    patches = patch_series.series()
    assert [p.name[:4] for p in patches] == [f"{i:04d}" for i in range(1, len(patches) + 1)]
    assert patch_series.header_problems(patches) == []
    for patch in patches:
        assert "\nUpstream-Status: " in patch.read_text()


def test_lint_names_what_is_missing(tmp_path):
    patches = patch_series.series()
    shutil.copy(patches[0], tmp_path / "0001-first.patch")
    text = patches[2].read_text().replace("Upstream-Status: Pending\n", "")
    (tmp_path / "0003-gap.patch").write_text(text)
    problems = patch_series.header_problems(patch_series.series(tmp_path))
    assert problems == [
        "0003-gap.patch: numbering has a gap or repeat, expected 0002-",
        "0003-gap.patch: no valid 'Upstream-Status:' trailer "
        "(Pending, Accepted, Denied, Backport [..], Submitted [..], Inappropriate [..])",
    ]


def test_patch_that_no_longer_applies_is_named_with_its_file(upstream, tmp_path):
    patches = patch_series.series()
    for patch in patches:
        shutil.copy(patch, tmp_path / patch.name)
    broken = tmp_path / patches[2].name
    broken.write_text(
        broken.read_text().replace(
            "        self.use_label_map = use_label_map\n",
            "        self.use_label_map = label_map_in_use\n",
        )
    )
    with pytest.raises(PatchError) as error:
        patch_series.check(upstream, patch_series.series(tmp_path))
    assert str(error.value).startswith(
        f"{patches[2].name} does not apply to {PIN}: "
        "vision/classification_and_detection/python/openimages.py"
    )


def test_apply_is_idempotent_and_revert_restores_upstream(project_copy):
    upstream = project_copy / "vendor" / "inference"
    pristine = git_state(upstream)

    first = patch_series_in(project_copy, "apply")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied 0") == N
    patched = git_state(upstream)
    assert patched != pristine
    # the record a copy without git checks instead: out of git status, true to the tree
    record = json.loads((upstream / patch_series.SERIES_RECORD).read_text())
    assert "??" not in patched[0]
    assert record["pin"] == patch_series.pinned_commit()
    assert record["patches"] == patch_series.patch_digests(patch_series.series())
    changed = subprocess.run(
        ["git", "diff", "--name-only", record["pin"]],
        cwd=upstream,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(record["files"]) == sorted(changed)
    assert "vision/classification_and_detection/python/failfast.py" in record["files"]

    again = patch_series_in(project_copy, "apply")
    assert again.returncode == 0 and again.stdout == f"patch series already applied ({N} patches)\n"
    assert git_state(upstream) == patched

    reverted = patch_series_in(project_copy, "revert")
    assert reverted.returncode == 0 and reverted.stdout.count("reverted 0") == N
    assert git_state(upstream) == pristine
    assert not (upstream / patch_series.SERIES_RECORD).exists()


def test_half_applied_series_is_reported_then_finished(project_copy):
    upstream = project_copy / "vendor" / "inference"
    first_two = sorted((project_copy / "patches").glob("*.patch"))[:2]
    for patch in first_two:
        subprocess.run(["git", "apply", "--index", str(patch)], cwd=upstream, check=True)

    verify = patch_series_in(project_copy, "verify")
    assert verify.returncode == 1
    assert (
        f"holds 2 of the {N} patches (next: 0003-images-in-validation-data.patch); "
        "run 'make patch'" in verify.stderr
    )

    finish = patch_series_in(project_copy, "apply")
    assert finish.returncode == 0
    assert finish.stdout.splitlines()[0] == "applied 0003-images-in-validation-data.patch"
    assert patch_series_in(project_copy, "verify").returncode == 0


def test_local_edits_are_refused_and_kept(project_copy):
    upstream = project_copy / "vendor" / "inference"
    edited = upstream / "vision" / "classification_and_detection" / "run_local.sh"
    edited.write_text(edited.read_text() + "# my tuning\n")
    before = git_state(upstream)

    for action in ("apply", "revert"):
        proc = patch_series_in(project_copy, action)
        assert proc.returncode == 1
        assert (
            "has local edits that are not the patch series "
            "(vision/classification_and_detection/run_local.sh)" in proc.stderr
        )
    assert git_state(upstream) == before
    assert edited.read_text().endswith("# my tuning\n")


def test_checkout_at_another_commit_is_refused(project_copy):
    upstream = project_copy / "vendor" / "inference"
    subprocess.run(["git", "checkout", "-q", "--detach", "HEAD~1"], cwd=upstream, check=True)
    proc = patch_series_in(project_copy, "apply")
    assert proc.returncode == 1
    assert f"not at the pinned {PIN}" in proc.stderr


def test_project_checkout_is_fully_patched(upstream):
    """What every run depends on: this checkout holds the whole series and nothing else."""
    patch_series.verify(upstream)
