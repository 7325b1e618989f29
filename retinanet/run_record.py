"""Write run.json in a run folder: how the run was made, and how it ended.

    start(run_dir, settings, command, ...)   as the harness starts
    finish(run_dir, status, reason)          as the run ends; also writes summary.json

A completed run whose logs cannot be read is recorded as failed, with the reason.
"""

import datetime
import json
from pathlib import Path

from retinanet import (
    ANNOTATIONS,
    IMAGE_DIR,
    PROJECT_ROOT,
    UPSTREAM,
    machine,
    run_folder,
    run_summary,
)
from retinanet.download_model import cached_md5
from retinanet.files import file_digest, write_json
from retinanet.patch_series import (
    PATCH_DIR,
    PatchError,
    applied_count,
    git_checkout,
    patch_digests,
    pinned_commit,
    record_name,
    recorded,
    series,
)
from retinanet.preflight import dataset_warnings
from retinanet.rules import DEMO_DATASET
from retinanet.settings_outputs import rerun_command
from retinanet.verify_dataset import MANIFEST


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def head_commit(repo):
    try:
        return repo.head.commit.hexsha
    except ValueError:  # a repository without commits
        return None


def project_state(root=PROJECT_ROOT):
    """The project's commit, and the files that differ from it (the submodule aside: its
    state is upstream_state's). In a copy without git (a GPU machine's) there is no commit to
    read, and GitPython need not be there."""
    if not git_checkout(root):
        return {"commit": None, "unknown": "not a git checkout", "dirty": None, "changed": []}
    import git

    try:
        repo = git.Repo(root)
    except git.exc.InvalidGitRepositoryError:
        return {"commit": None, "dirty": None, "changed": []}
    submodules = {module.path for module in repo.submodules}
    changed = {diff.a_path for diff in repo.index.diff(None)}
    if head_commit(repo):
        changed |= {diff.a_path for diff in repo.index.diff("HEAD")}
    changed |= set(repo.untracked_files)
    changed = sorted(path for path in changed if path not in submodules)
    return {"commit": head_commit(repo), "dirty": bool(changed), "changed": changed[:50]}


def upstream_state(upstream=UPSTREAM, patch_dir=PATCH_DIR, applied=None):
    """Upstream's commit, the patches of the series with their hashes, and whether the
    checkout is anything but the pinned commit with the whole series applied. Without git,
    the commit is the pin the patch step recorded there, once the record is checked.
    applied: the patches this process has just found applied, not counted again."""
    patches = series(patch_dir)
    state = {"patches": patch_digests(patches)}
    if not git_checkout():
        try:
            pin = recorded(upstream, patches)["pin"]
            state.update(commit=pin, pinned=pin, patches_applied=len(patches), dirty=False)
            state["recorded"] = f"{record_name(upstream)} (not a git checkout)"
        except PatchError as error:
            state.update(commit=None, dirty=True, problem=str(error))
        return state
    import git

    state = {"commit": head_commit(git.Repo(upstream)), **state}
    try:
        state["pinned"] = pinned_commit()
        state["patches_applied"] = (
            applied_count(upstream, state["pinned"], patches) if applied is None else applied
        )
        state["dirty"] = state["patches_applied"] != len(patches)
    except PatchError as error:
        state.update(dirty=True, problem=str(error))
    return state


def file_facts(path):
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "md5": cached_md5(path)}


def dataset_facts(data_dir, images_used):
    annotations = Path(data_dir) / ANNOTATIONS
    facts = {
        "path": str(Path(data_dir).resolve()),
        "images_used": int(images_used) if images_used else None,
    }
    if annotations.is_file():
        coco = json.loads(annotations.read_text())
        facts["images_total"] = len(coco["images"])
        facts["annotations_md5"] = file_digest(annotations)
        facts["generated"] = (coco.get("info") or {}).get("generated_by") == DEMO_DATASET
        facts["manifest"] = manifest_facts(data_dir)
    return facts


def manifest_facts(data_dir):
    """What verify-dataset's manifest says, and whether the dataset still matches it (sizes):
    the v5.1 verdict needs the whole set, verified."""
    path = Path(data_dir) / IMAGE_DIR.parent / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {
        "written": manifest.get("written"),
        "images": manifest.get("images"),
        "max_images": manifest.get("max_images"),
        "matches": not dataset_warnings(data_dir, 0),
    }


def start(run_dir, settings, command, pid, requested, compliance=None, applied=None):
    """settings: every setting as resolved (settings.record), with the mode, images and cache
    folder; pid: the run's process; requested: as given; compliance: the compliance test this
    run is (TEST01); applied: the patches found applied before the run."""
    record = {
        "status": "running",
        "started": now(),
        "pid": pid,
        "rerun": rerun_command(settings["mode"], settings),
        "command": command,
        "settings": settings,
        "requested": requested,
        "project": project_state(),
        "upstream": upstream_state(applied=applied),
        "environment": machine.environment(),
        "versions": machine.versions(),
        "host": machine.host(),
    }
    if compliance:
        record["compliance"] = {"test": compliance}
        record["rerun"] = f"COMPLIANCE_TEST={compliance} {record['rerun']}"
    if settings.get("user_conf") and Path(settings["user_conf"]).is_file():
        record["user_conf"] = {
            "path": settings["user_conf"],
            "text": Path(settings["user_conf"]).read_text(),
        }
    if settings.get("model") and Path(settings["model"]).is_file():
        record["model"] = file_facts(settings["model"])
    if settings.get("data_dir"):
        record["dataset"] = dataset_facts(settings["data_dir"], settings.get("images"))
    write_json(Path(run_dir) / run_folder.RECORD, record)


def workers(run_dir):
    """The Ray workers of a WORKERS or RAY_ADDRESS run (ray_sut.py's workers.json): each one's
    node, device, pid and versions, and the workers lost; None for a run in one process."""
    found = run_folder.workers(run_dir)
    if not found:
        return None
    keep = ("worker", "node", "node_id", "address", "host", "device", "pid", "data_dir")
    keep += ("versions", "lost")
    return {
        "workers": [{k: w.get(k) for k in keep} for w in found["workers"]],
        "ray": {
            "address": found.get("ray_address"),
            "start_seconds": found.get("start_seconds"),
            "lost": found.get("lost", []),
        },
    }


def finish(run_dir, status, reason=None):
    """Record how the run ended, and write its summary.json. Returns the error that turned a
    completed run into a failed one, if any."""
    record = run_folder.read_json(run_dir, run_folder.RECORD) or {}
    record.update(workers(run_dir) or {})
    error = None
    try:
        run_summary.write(run_dir, status, reason)
    except run_summary.LogError as failure:
        error = f"the run's logs cannot be read: {failure}"
        status, reason = "failed", error
        run_summary.write(run_dir, status, reason)
    record.update(status=status, finished=now())
    if reason:
        record["reason"] = reason
    write_json(Path(run_dir) / run_folder.RECORD, record)
    return error
