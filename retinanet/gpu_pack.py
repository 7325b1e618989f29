"""make gpu-pack: made here, with git and PyPI, what a short GPU loan needs besides the
project's files, and the device tool's call that takes it there.

The lent GPU machine receives the working tree without .git (tracked files and untracked
files git does not ignore) plus up to 8 carried ignored paths, 64 MiB in all, and has no
network. Its Python 3.12 has a CUDA torch and most of what runs need, not all of it. So:

  1. make patch: vendor/inference patched, and the record of it written there
     (patch_series.py), which the copy without git checks instead of git
  2. the wheels it lacks, for CPython 3.12 on manylinux x86-64, into a folder git ignores,
     at requirements.txt's versions (LoadGen: the pinned upstream's loadgen/VERSION.txt)
  3. each wheel's own requirements: packed, or of requirements.txt's run block
  4. the size of what travels, against 64 MiB
  5. the run call: its command and carry list
"""

import argparse
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from retinanet import PROJECT_ROOT, UPSTREAM, patch_series
from retinanet.system_env import normalized, requirements

# What the lent H200's image lacks of requirements.txt's run block (its package list,
# 2026-11), and LoadGen. GitPython is not needed there: the tree travels without .git.
LACKING = ["pycocotools", "mlcommons-loadgen"]
PYTHON_VERSION = "3.12"
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
LIMIT = 64 * 2**20  # what travels per call, tree and carried paths together
# On the GPU machine: gpu-check into GPU_CHECK_DIR, then what comes back through $OUT (at most
# 8 files of 16 MiB): the table, its JSON, the whole log, and the folder without data or models
COMMAND = (
    "export PYTHONUNBUFFERED=1; make gpu-check ENV_KIND=system WHEELS={wheels} "
    "GPU_CHECK_DIR=gpu-check 2>&1 | tee $OUT/gpu-check.log; rc=${{PIPESTATUS[0]}}; "
    "cp gpu-check/table.md gpu-check/gpu-check.json $OUT/; "
    "tar czf $OUT/gpu-check.tar.gz --exclude='*.pth' --exclude='*.onnx' --exclude='*.npy' "
    "--exclude=gpu-check/demo/data gpu-check; exit $rc"
)


def wanted():
    """name==version of each package in LACKING."""
    pins = dict(requirements())
    loadgen = (UPSTREAM / "loadgen" / "VERSION.txt").read_text().strip()
    pins["mlcommons-loadgen"] = loadgen
    return [f"{name}=={pins[name]}" for name in LACKING]


def wheel_name(path):
    """(name, version) of a wheel file, the name normalized."""
    name, version = path.name.split("-")[:2]
    return normalized(name), version


def requires(wheel):
    """The names a wheel requires, extras left out."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    found = re.findall(r"^Requires-Dist: ([A-Za-z0-9._-]+)([^\n]*)$", text, re.M)
    return [normalized(name) for name, rest in found if "extra ==" not in rest]


def download(dest, packages):
    """The wheels into dest; a wheel of another version already there goes (two versions of
    one package stop the install there)."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = {(normalized(p.split("==")[0]), p.split("==")[1]) for p in packages}
    for old in dest.glob("*.whl"):
        if wheel_name(old) not in keep:
            print(f"gpu-pack: removing {old.name} (not a version the machine needs)")
            old.unlink()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += ["--progress-bar", "off", "--disable-pip-version-check", "-d", str(dest)]
    subprocess.run(command + packages, check=True)
    wheels = sorted(dest.glob("*.whl"))
    have = {wheel_name(w)[0] for w in wheels}
    missing = {normalized(p.split("==")[0]) for p in packages} - have
    if missing:
        raise SystemExit(f"gpu-pack: error: no wheel in {dest} for {', '.join(sorted(missing))}")
    # a wheel's own needs must travel too, unless the machine has them (the run block's others)
    there = {normalized(name) for name, _ in requirements()} - have
    for wheel in wheels:
        lacking = [name for name in requires(wheel) if name not in have | there]
        if lacking:
            raise SystemExit(
                f"gpu-pack: error: {wheel.name} needs {', '.join(lacking)}, neither packed nor "
                "in requirements.txt's run block: add it to LACKING in retinanet/gpu_pack.py"
            )
    return wheels


def size(path):
    """Bytes of a file, or of every file under a folder; a link counts as itself."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    return sum(os.lstat(Path(root) / f).st_size for root, _, files in os.walk(path) for f in files)


def sent_files():
    """The files the device tool sends: tracked and untracked-not-ignored ones, relative to
    the project (a submodule is a folder: it travels only if carried)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return [
        Path(name)
        for name in filter(None, listed)
        if (PROJECT_ROOT / name).is_symlink() or (PROJECT_ROOT / name).is_file()
    ]


def travelling(carry):
    """Bytes of the tree the device tool sends and of each carried path."""
    tree = sum(os.lstat(PROJECT_ROOT / name).st_size for name in sent_files())
    return tree, {path: size(PROJECT_ROOT / path) for path in carry}


def mb(n):
    return f"{n / 2**20:.1f} MiB"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheels", default="wheels", help="the folder, in the project, ignored")
    args = parser.parse_args()
    if not patch_series.git_checkout():
        sys.exit("gpu-pack: error: run it in a git checkout of the project (it reads the pin)")
    dest = (PROJECT_ROOT / args.wheels).resolve()
    if not dest.is_relative_to(PROJECT_ROOT):
        sys.exit(f"gpu-pack: error: WHEELS={args.wheels} is outside the project: it cannot travel")
    wheels_path = dest.relative_to(PROJECT_ROOT).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "-q", wheels_path + "/"], cwd=PROJECT_ROOT)
    if ignored.returncode != 0:
        sys.exit(
            f"gpu-pack: error: {wheels_path}/ is not ignored by git: wheels are never committed, "
            "and only an ignored folder can be carried (.gitignore)"
        )
    try:
        patch_series.apply()
    except patch_series.PatchError as error:
        sys.exit(f"gpu-pack: error: {error}")
    if (UPSTREAM / ".git").is_dir():
        sys.exit(
            "gpu-pack: error: vendor/inference/.git is a folder: its git data would travel. "
            "Move it into the project's: git submodule absorbgitdirs vendor/inference"
        )
    packages = wanted()
    print(
        f"gpu-pack: wheels for CPython {PYTHON_VERSION} into {wheels_path}/: {' '.join(packages)}"
    )
    wheels = download(dest, packages)
    for wheel in wheels:
        print(f"gpu-pack:   {wheel.name} ({mb(wheel.stat().st_size)})")
    carry = [UPSTREAM.relative_to(PROJECT_ROOT).as_posix(), wheels_path]
    tree, carried = travelling(carry)
    total = tree + sum(carried.values())
    parts = ", ".join(f"{path} {mb(n)}" for path, n in carried.items())
    print(f"gpu-pack: what travels: the tree {mb(tree)}, {parts}: {mb(total)} of {mb(LIMIT)}")
    if total > LIMIT:
        sys.exit(f"gpu-pack: error: {mb(total)} is more than the {mb(LIMIT)} one call takes")
    print("gpu-pack: ready. On a GPU loan, one call of the device tool's run (docs/hardware.md):")
    print(f"  command:   {COMMAND.format(wheels=wheels_path)}")
    print(f"  carry:     {carry}".replace("'", '"'))
    print("  timeout_s: 600")
    return 0


if __name__ == "__main__":
    sys.exit(main())
