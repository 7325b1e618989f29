"""Find run folders under a results folder and read them: run.json, summary.json, and
whether a run that says "running" still is. Only reads: a run's folder is its own."""

import fnmatch
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from retinanet import run_summary
from retinanet.run_folder import RECORD, SUMMARY


class RunError(Exception):
    pass


@dataclass
class Run:
    path: Path
    record: dict
    summary: dict = field(default_factory=dict)
    status: str = "running"
    reason: str = ""

    @property
    def name(self):
        return self.path.name

    @property
    def settings(self):
        return self.record.get("settings", {})

    @property
    def mode(self):
        return self.settings.get("mode", "?")

    @property
    def scenario(self):
        return self.summary.get("scenario") or self.settings.get("scenario", "?")

    @property
    def performance(self):
        return self.status == "completed" and self.mode == "performance"

    @property
    def accuracy(self):
        return self.summary.get("accuracy") if self.status == "completed" else None


def process_alive(record):
    """Whether the process of a 'running' record is still running it: retinanet.run, or
    run_eval.sh for runs before it; True when this host cannot tell (another machine, or no
    pid recorded)."""
    pid, host = record.get("pid"), record.get("host", {}).get("name")
    if not pid or host != platform.node():
        return True
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"retinanet.run" in args or any(arg.endswith(b"run_eval.sh") for arg in args)


def load(path):
    path = Path(path)
    try:
        record = json.loads((path / RECORD).read_text())
    except OSError as error:
        raise RunError(f"{path} is not a run folder: no readable {RECORD} ({error})") from None
    except ValueError as error:
        raise RunError(f"{path / RECORD} cannot be read ({error})") from None
    run = Run(path, record, status=record.get("status", "running"), reason=record.get("reason", ""))
    if run.status == "running" and not process_alive(record):
        run.status = "failed"
        run.reason = (
            f"stopped without finishing: process {record['pid']} is gone "
            "(killed, or the machine went down)"
        )
    summary_path = path / SUMMARY
    if summary_path.is_file():
        run.summary = json.loads(summary_path.read_text())
    elif run.status != "running":
        # read what the run left, as finish would have written it
        run.summary = run_summary.summarize(path, "failed", run.reason)
    return run


def find(results_dir, patterns=()):
    """The runs under results_dir, oldest first; patterns (folder names or shell patterns)
    pick a subset."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise RunError(
            f"RESULTS_DIR={results_dir} does not exist: no runs yet ('make eval' or 'make perf')"
        )
    folders = sorted(p for p in results_dir.iterdir() if (p / RECORD).is_file())
    if patterns:
        picked = [
            p
            for p in folders
            if any(fnmatch.fnmatch(p.name, pat) or p.name == pat for pat in patterns)
        ]
        missing = [
            pat for pat in patterns if not any(fnmatch.fnmatch(p.name, pat) for p in folders)
        ]
        if missing:
            raise RunError(f"no run in {results_dir} matches {', '.join(missing)}")
        folders = picked
    if not folders:
        raise RunError(f"no run folders (with {RECORD}) in {results_dir}")
    runs = []
    for folder in folders:
        try:
            runs.append(load(folder))
        except RunError as error:  # listed as such: one damaged folder hides no other run
            runs.append(Run(folder, {}, status="unreadable", reason=str(error)))
    return runs


def resolve(results_dir, name):
    """A run given as a path, a folder name under results_dir, or a unique part of one."""
    if not name:
        raise RunError("name a run: a folder under RESULTS_DIR or a path")
    for candidate in (Path(name), Path(results_dir) / name):
        if (candidate / RECORD).is_file():
            return load(candidate)
    folders = [
        p for p in sorted(Path(results_dir).glob("*")) if (p / RECORD).is_file() and name in p.name
    ]
    if len(folders) == 1:
        return load(folders[0])
    if not folders:
        raise RunError(
            f"no run '{name}': not a run folder, and no folder in {results_dir} has that in its "
            "name"
        )
    raise RunError(
        f"'{name}' matches {len(folders)} runs in {results_dir} "
        f"({', '.join(p.name for p in folders[:4])}...): name one"
    )
