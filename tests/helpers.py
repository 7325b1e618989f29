"""What tests share besides fixtures: paths, running `make` the way a user does, and reading
processes and git state. Fixtures and hooks stay in conftest.py; tests import from here."""

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

from retinanet import HARNESS, PROJECT_ROOT, run_folder
from retinanet.gpu_pack import sent_files

PYTHON = sys.executable
DEMO_USER_CONF = PROJECT_ROOT / "conf" / "demo-user.conf"
TESTS = Path(__file__).resolve().parent  # MODEL_FACTORY=misbehaving_models:... imports from here
# Folders of real runs, trimmed to the files the code reads (tests/data/README.md)
SAVED_RUNS = TESTS / "data" / "runs"
SITE = Path(sysconfig.get_paths()["purelib"])


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


# The accuracy guard runs in every accuracy run that is not plain fp32: on a CPU with native
# bf16, every default one. It has tests of its own, which set GUARD_IMAGES; the other runs
# leave it out, as they do on a CPU without native bf16 (a later setting on make's command
# line wins).
NO_GUARD = "GUARD_IMAGES=0"


def run_into(folder, target, data, model, *settings, check=True, device="cpu", prefix=()):
    """make eval/perf with FOLDER's results and cache folders; returns (process, run folder)."""
    proc = make(
        target,
        f"DATA_DIR={data}",
        f"MODEL={model}",
        f"RESULTS_DIR={folder / 'results'}",
        f"CACHE_DIR={folder / 'cache'}",
        f"DEVICE={device}",
        NO_GUARD,
        *settings,
        check=check,
        prefix=prefix,
    )
    return proc, run_folder.from_output(proc.stdout)


# -- runs whose length does not depend on the machine's speed (docs/testing.md) ------------

# seconds a run lasts where its figure must be steady (TEST01 compares two within 10%)
STEADY_SECONDS = 6
# the Offline run that measures the rate first: a fraction of a second on the oracle
PROBE_SAMPLES = 400
# a run of fewer samples measures start-up; more would take minutes on a much faster machine
STEADY_LIMITS = (800, 100_000)


def offline_conf(path, samples):
    """A user.conf whose Offline run is one query of exactly `samples`: LoadGen issues
    max(min_query_count, 1.1 x min_duration x target_qps) samples, and with min_duration 0
    calls the run VALID whatever the rate at which they are answered."""
    path.write_text(
        "*.Offline.target_qps = 1\n*.Offline.min_duration = 0\n"
        f"*.Offline.min_query_count = {samples}\n"
    )
    return path


def steady_samples(rate):
    """Samples for an Offline run of STEADY_SECONDS at `rate` samples/s, within STEADY_LIMITS."""
    low, high = STEADY_LIMITS
    return max(low, min(high, round(rate * STEADY_SECONDS)))


def offline_rate(*settings):
    """The samples/s of a PROBE_SAMPLES Offline run with these make settings (RESULTS_DIR
    among them): the rate the runs sized from it will go at."""
    results = Path(next(s for s in settings if s.startswith("RESULTS_DIR=")).split("=", 1)[1])
    probe = results.parent / f"{results.name}-probe"
    probe.mkdir(parents=True, exist_ok=True)
    conf = offline_conf(probe / "probe.conf", PROBE_SAMPLES)
    proc = make("perf", *settings, f"USER_CONF={conf}", f"RESULTS_DIR={probe}")
    summary = json.loads((run_folder.from_output(proc.stdout) / "summary.json").read_text())
    assert summary["result"] == "VALID", summary
    return summary["throughput"]["samples_per_second"]


def oracle_settings(demo, folder, pace_ms=None):
    """make's settings for the demo's oracle; with a pace (default: TEST_PACE_MS, when set) the
    same oracle a sleep of that many milliseconds slower per image (tests/paced_models.py)."""
    pace_ms = os.environ.get("TEST_PACE_MS") if pace_ms is None else pace_ms
    settings = [f"DATA_DIR={demo['data']}"]
    if not pace_ms:
        return settings + [f"MODEL={demo['models']['oracle']}"]
    import paced_models

    state = paced_models.save_state(demo["models"]["oracle"], Path(folder) / "paced-oracle.pth")
    return settings + [
        f"MODEL={state}",
        "MODEL_FACTORY=paced_models:paced_oracle",
        f"PYTHONPATH={TESTS}",
        f"PACED_ORACLE={demo['models']['oracle']}",
        f"PACE_MS={pace_ms}",
    ]


def container(root, without=()):
    """A venv that sees this environment's packages except the distributions named."""
    hidden = set()
    for name in without:
        dist = importlib.metadata.distribution(name)
        hidden |= {Path(str(f)).parts[0] for f in dist.files if not str(f).startswith("..")}
    farm = root / "packages"
    farm.mkdir(parents=True)
    for entry in SITE.iterdir():
        if entry.name not in hidden and not entry.name.endswith(".pth"):
            (farm / entry.name).symlink_to(entry)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                venv / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "container.pth").write_text(f"{farm}\n")
    return venv, site


def device_tree(dest, carry=()):
    """The project as the device tool sends it to a GPU machine: tracked files and untracked
    files git does not ignore, without .git, plus the carried paths as they are
    (vendor/inference with its .git file, which points nowhere there)."""
    for name in sent_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, dest / name, follow_symlinks=False)
    for path in carry:
        shutil.copytree(PROJECT_ROOT / path, dest / path, symlinks=True, dirs_exist_ok=True)
    return dest
