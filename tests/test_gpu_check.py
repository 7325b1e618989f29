"""make gpu-check, as far as a CPU can run it in a test, in the tree a GPU machine receives:
no .git, vendor/inference carried with its .git file pointing nowhere, the container's own
Python (ENV_KIND=system, without GitPython). DEVICE=cpu, the demo's data and model, a two-row
sweep on one image, the Server run of the faster row, one table, everything under one folder.
make demo and bench are left out (test_runs.py has them; bench is a benchmark; on this
2-core machine make demo alone took 8 minutes while other tests ran), and so is
torch.compile (test_native_model.py has the one compile test).

Without git, the pin and the applied series come from the record the patch step wrote in
vendor/inference: the fast tests check that setup refuses, in one line, a tree without it or
one whose patches/ or patched files differ from it."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import container, device_tree, make

from retinanet import patch_series
from retinanet.files import file_digest, write_json

RECORD_LINES = [
    "setup: upstream at {pin}, as the patch step recorded it in "
    "vendor/inference/.retinanet-series.json (not a git checkout)",
    "setup: patch series applied (recorded at {pin}, {count} patches; not a git checkout)",
]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_without_git_on_the_cpu_writes_one_table_and_every_run(upstream, tmp_path):
    patch_series.apply()  # the record the copy relies on, as make setup and make test write it
    pin = patch_series.pinned_commit()
    tree = device_tree(tmp_path / "tree", carry=["vendor/inference"])
    assert not (tree / ".git").exists() and (tree / "vendor" / "inference" / ".git").is_file()
    venv, _ = container(tmp_path / "container", without=["gitpython"])
    python = venv / "bin" / "python3"
    assert subprocess.run([python, "-c", "import git"], capture_output=True).returncode == 1
    out = tmp_path / "gpu-check"
    proc = make(
        "gpu-check",
        f"PYTHON={python}",
        "ENV_KIND=system",
        "DEVICE=cpu",
        f"GPU_CHECK_DIR={out}",
        "GPU_CHECK_ARGS=--skip demo bench --rows 'torchscript fp32' 'native fp32' "
        "--count 1 --samples 1 --guard-images 0 --warmup 0",
        cwd=tree,
        prefix=["env", f"PATH={venv}/bin:{os.environ['PATH']}"],
    )
    record = json.loads((out / "gpu-check.json").read_text())
    assert [s["step"] for s in record["steps"]] == [
        "setup",
        "demo data and model",
        "sweep torchscript fp32",
        "sweep native fp32",
        "server",
    ]
    assert all(s["ok"] for s in record["steps"]), record["steps"]
    setup = (out / "setup.log").read_text()
    count = len(patch_series.series())
    said = "\n".join(line.format(pin=pin[:12], count=count) for line in RECORD_LINES)
    assert f"\n{said}\n" in setup
    assert f"\nsetup: environment {python} (system): nothing missing\n" in setup
    rows = {row["name"]: row for row in record["sweep"]}
    for row in rows.values():
        assert row["valid"] and row["samples_per_s"] > 0
        assert (out / "sweep").is_dir() and row["run"].startswith(str(out / "sweep"))
        run = json.loads((Path(row["run"]) / "run.json").read_text())
        # what git would have said: unknown for the project, the record's pin for upstream
        assert run["project"] == {
            "commit": None,
            "unknown": "not a git checkout",
            "dirty": None,
            "changed": [],
        }
        assert run["upstream"]["commit"] == run["upstream"]["pinned"] == pin
        assert run["upstream"]["recorded"] == (
            "vendor/inference/.retinanet-series.json (not a git checkout)"
        )
        assert run["upstream"]["dirty"] is False and run["upstream"]["patches_applied"] == count
        assert run["environment"]["kind"] == "system"
        assert run["environment"]["python"] == str(python)
    assert rows["torchscript fp32"]["vs_first"] == 1.0
    assert record["server"]["run"].startswith(str(out / "sweep"))
    table = (out / "table.md").read_text()
    assert table in proc.stdout
    assert "| torchscript fp32 | " in table and "| native fp32 | " in table
    assert "1,821 samples/s Offline" in table
    assert (out / "demo" / "data").is_dir() and (out / "demo.log").is_file()


def gitless(tmp_path, record=True):
    """The project's files without .git, and a stand-in vendor/inference with one patched
    file and, unless record is False, the record the patch step writes."""
    tree = device_tree(tmp_path / "tree")
    upstream = tree / "vendor" / "inference"
    upstream.mkdir(parents=True)
    (upstream / ".git").write_text("gitdir: ../../.git/modules/vendor/inference\n")
    (upstream / "patched.py").write_text("# as the series left it\n")
    if record:
        patches = patch_series.series(tree / "patches")
        write_json(
            upstream / patch_series.SERIES_RECORD,
            {
                "pin": patch_series.pinned_commit(),
                "patches": patch_series.patch_digests(patches),
                "files": {"patched.py": file_digest(upstream / "patched.py", "sha256")},
            },
        )
    return tree


def setup_sh(tree, *steps):
    return subprocess.run(["./setup.sh", *steps], cwd=tree, capture_output=True, text=True)


def test_without_git_setup_takes_the_record_and_says_so(tmp_path):
    tree = gitless(tmp_path)
    proc = setup_sh(tree, "upstream", "patch")
    assert proc.returncode == 0, proc.stderr
    pin = patch_series.pinned_commit()[:12]
    count = len(patch_series.series())
    assert proc.stdout.splitlines() == [line.format(pin=pin, count=count) for line in RECORD_LINES]
    verify = subprocess.run(
        ["python3", "-m", "retinanet.patch_series", "verify"],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert (
        verify.stdout
        == f"upstream {pin} with {count} patches applied (recorded; not a git checkout)\n"
    )


def test_without_git_patches_that_differ_from_the_record_are_refused_in_one_line(tmp_path):
    tree = gitless(tmp_path)
    changed = patch_series.series(tree / "patches")[4]
    changed.write_text(changed.read_text() + "\n")
    for step in ("upstream", "patch"):
        proc = setup_sh(tree, step)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr == (
            f"error: patches/ is not the series applied to {tree}/vendor/inference at "
            f"{patch_series.pinned_commit()[:12]} ({changed.name} changed), and without git it "
            "cannot be applied again: in a git checkout with these patches/ run 'make patch', "
            "then bring vendor/inference from there\n"
        )


def test_without_git_a_patched_file_changed_since_is_refused_in_one_line(tmp_path):
    tree = gitless(tmp_path)
    (tree / "vendor" / "inference" / "patched.py").write_text("# edited afterwards\n")
    proc = setup_sh(tree, "patch")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {tree}/vendor/inference has changed since the series was applied at "
        f"{patch_series.pinned_commit()[:12]} (patched.py), and without git it cannot be checked "
        "or repaired: in a git checkout run 'make patch', then bring vendor/inference from there\n"
    )


def test_without_git_and_without_the_record_setup_says_what_to_do_in_one_line(tmp_path):
    tree = gitless(tmp_path, record=False)
    proc = setup_sh(tree, "upstream", "patch")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"error: not a git checkout, and {tree}/vendor/inference holds no record of an applied "
        "series (.retinanet-series.json): in a git checkout of the project run 'make patch' (it "
        "writes the record), then bring vendor/inference from there\n"
    )
