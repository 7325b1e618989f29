"""What tests share besides fixtures: paths, running `make` the way a user does, and reading
processes and git state. Fixtures and hooks stay in conftest.py; tests import from here."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from retinanet import HARNESS, PROJECT_ROOT

PYTHON = sys.executable
DEMO_USER_CONF = PROJECT_ROOT / "conf" / "demo-user.conf"
TESTS = Path(__file__).resolve().parent  # MODEL_FACTORY=misbehaving_models:... imports from here
# Folders of real runs, trimmed to the files the code reads (tests/data/README.md)
SAVED_RUNS = TESTS / "data" / "runs"


def upstream_missing():
    if (HARNESS / "python" / "main.py").exists():
        return None
    return (
        "upstream not reachable: vendor/inference is not checked out; run 'make setup' "
        "or point git at a mirror (README, 'Working offline')"
    )


def make(target, *settings, check=True, cwd=PROJECT_ROOT, prefix=()):
    """Run `make TARGET KEY=VALUE...` and return the completed process (stdout+stderr in .stdout).

    make runs in a process group of its own: when the test is stopped (its time limit,
    Ctrl-C), the group is killed, so that no harness outlives the test. prefix: a command
    make runs under, e.g. in a network namespace of its own (test_ray.py)."""
    args = [*prefix, "make", target, f"PYTHON={PYTHON}", *settings]
    with subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as running:
        try:
            stdout, _ = running.communicate()
        except BaseException:
            os.killpg(running.pid, signal.SIGKILL)
            raise
    proc = subprocess.CompletedProcess(args, running.returncode, stdout)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {target} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def processes_mentioning(text):
    """Command lines of the processes, other than this one, whose arguments mention text."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        if int(cmdline.parent.name) != os.getpid() and any(str(text) in arg for arg in args):
            found.append(" ".join(args))
    return found


def git_state(repo):
    """What `git status` and HEAD say: equal before and after means nothing changed."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # check=True: a git that fails prints nothing, and nothing equals nothing
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    diff = subprocess.run(
        ["git", "diff", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return status, head, diff


def patch_series_in(project, action):
    """`python -m retinanet.patch_series ACTION` in a project copy, as make runs it there."""
    return subprocess.run(
        [sys.executable, "-m", "retinanet.patch_series", action],
        cwd=project,
        capture_output=True,
        text=True,
    )


def run_into(folder, target, data, model, *settings, check=True, device="cpu", prefix=()):
    """make eval/perf with FOLDER's results and cache folders; returns (process, run folder)."""
    proc = make(
        target,
        f"DATA_DIR={data}",
        f"MODEL={model}",
        f"RESULTS_DIR={folder / 'results'}",
        f"CACHE_DIR={folder / 'cache'}",
        f"DEVICE={device}",
        *settings,
        check=check,
        prefix=prefix,
    )
    match = re.search(r"^run folder: (.+)$", proc.stdout, re.M)
    return proc, Path(match.group(1)) if match else None
