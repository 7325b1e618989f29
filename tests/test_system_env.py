"""ENV_KIND=system: setup in an environment that is not the project's, as in a container that
has its own CUDA torch and no network.

The container is a throwaway venv whose site-packages reaches this environment's packages
through a .pth file pointing at a folder of links to them: a package is missing from the
container when its links are left out. Every setup runs in a network namespace with
loopback only (`unshare -n`, as root), so nothing can come from an index."""

import base64
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import container

from retinanet import PROJECT_ROOT
from retinanet.system_env import requirements

pytestmark = pytest.mark.skipif(
    subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0,
    reason="unshare -n needs root: no network namespace for the offline setup",
)


def wheel_of(name, folder):
    """An installed pure-Python distribution written back as a wheel (its files, its
    metadata, a RECORD of their hashes)."""
    dist = importlib.metadata.distribution(name)
    info = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
    files = [
        f
        for f in dist.files
        if not str(f).startswith("..")
        and Path(str(f)).name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
        and "__pycache__" not in str(f)
    ]
    path = folder / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for f in files:
            data = Path(dist.locate_file(f)).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{f},sha256={digest.decode()},{len(data)}")
            wheel.writestr(str(f), data)
        wheel.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


def setup_offline(venv, *settings):
    """./setup.sh env loadgen with the container's python3 first on PATH, in a namespace
    without a network, and a pip without this machine's configuration (its wheel folders
    and indexes on disk)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", ENV_KIND="system")
    env["PATH"] = f"{venv}/bin:{env['PATH']}"
    env.update(setting.split("=", 1) for setting in settings)
    return subprocess.run(
        ["unshare", "-n", "./setup.sh", "env", "loadgen"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


def own_files(site):
    return sorted(p.name for p in site.iterdir())


@pytest.mark.timeout(120)
def test_everything_present_installs_nothing(upstream, tmp_path):
    venv, site = container(tmp_path)
    proc = setup_offline(venv)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"setup: {venv}/bin/python3: torch ")
    assert "CUDA" in lines[0]  # on a GPU machine its GPUs, elsewhere that runs use the CPU
    assert lines[1:] == [
        f"setup: environment {venv}/bin/python3 (system): nothing missing",
        "setup: LoadGen 5.1.1: imports",
    ]
    assert own_files(site) == ["container.pth"]


@pytest.mark.timeout(120)
def test_missing_package_without_network_says_what_and_how(upstream, tmp_path):
    venv, site = container(tmp_path, without=["pycocotools"])
    proc = setup_offline(venv)
    assert proc.returncode == 1
    assert f"setup: installing what {venv}/bin/python3 lacks: pycocotools==2.0.11\n" in proc.stdout
    message = proc.stderr[proc.stderr.index("setup: error: ") :]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert message == (
        f"setup: error: {venv}/bin/python3 lacks what runs need, and pip could not install it "
        "(no network?):\n"
        "  pycocotools==2.0.11\n"
        f"Bring them as wheels in a folder: on a machine with a network, for Python {version} "
        "on this platform,\n"
        f"  python3 -m pip download --only-binary=:all: --python-version {version} --dest wheels "
        "pycocotools==2.0.11\n"
        "then copy the folder here and run: make setup ENV_KIND=system WHEELS=wheels\n"
        "(or set PIP_FIND_LINKS=wheels PIP_NO_INDEX=1 for pip itself)\n"
    )
    assert own_files(site) == ["container.pth"]


@pytest.mark.timeout(120)
def test_missing_package_comes_from_wheels(upstream, tmp_path):
    wheels = tmp_path / "wheels"
    wheel_of("tqdm", wheels)
    venv, site = container(tmp_path, without=["tqdm"])
    proc = setup_offline(venv, f"WHEELS={wheels}")
    assert proc.returncode == 0, proc.stderr
    assert f"setup: installing what {venv}/bin/python3 lacks, from {wheels}: tqdm==4.70.1" in (
        proc.stdout
    )
    assert f"setup: environment {venv}/bin/python3 (system): ready" in proc.stdout
    # tqdm, and nothing else: no package the container had is replaced
    assert own_files(site) == ["container.pth", "tqdm", "tqdm-4.70.1.dist-info"]


@pytest.mark.timeout(120)
def test_no_torch_is_not_replaced_but_refused(upstream, tmp_path):
    venv, site = container(tmp_path, without=["torch"])
    proc = setup_offline(venv)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"setup: error: ENV_KIND=system: {venv}/bin/python3 has no usable torch and torchvision "
        "(ModuleNotFoundError: No module named 'torch'): ENV_KIND=system uses the environment's "
        "own"
    )
    assert own_files(site) == ["container.pth"]


def test_system_packages_exclude_torch_and_the_optional_block():
    run = {name for name, _ in requirements()}
    everything = {name for name, _ in requirements(include_optional=True)}
    assert not {"torch", "torchvision"} & everything
    assert {"numpy", "pycocotools", "gitpython"} <= run
    assert {"pytest", "moto", "ruff", "boto3"} <= everything - run
