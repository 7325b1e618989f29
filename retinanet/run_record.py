"""Write run.json in a run folder: how the run was made, and how it ended.

    run_record.py start RUN_DIR [--setting KEY=VALUE ...] -- COMMAND...
    run_record.py finish RUN_DIR --status completed|failed [--reason TEXT]
"""
import argparse
import datetime
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

from retinanet import PROJECT_ROOT, UPSTREAM
from retinanet.patch_series import PATCH_DIR, series

RECORD = "run.json"


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def package_versions():
    versions = {"python": platform.python_version()}
    for name in ["torch", "torchvision", "mlcommons-loadgen", "numpy", "pandas", "pycocotools",
                 "opencv-python-headless", "onnxruntime"]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def accelerator():
    import torch

    info = {"cuda": torch.version.cuda, "cudnn": None, "gpus": []}
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def git_head(repo):
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def file_facts(path):
    path = Path(path)
    md5 = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "md5": md5.hexdigest()}


def start(run_dir, settings, command):
    record = {
        "status": "running",
        "started": now(),
        "command": command,
        "settings": settings,
        "project_commit": git_head(PROJECT_ROOT),
        "upstream": {
            "commit": git_head(UPSTREAM),
            "patches": [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                        for p in series(PATCH_DIR)],
        },
        "versions": package_versions(),
        "host": {"platform": platform.platform(), "cpu": cpu_model(), **accelerator()},
    }
    if settings.get("model"):
        record["model"] = file_facts(settings["model"])
    write(run_dir, record)


def finish(run_dir, status, reason=None):
    path = Path(run_dir) / RECORD
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(status=status, finished=now())
    if reason:
        record["reason"] = reason
    write(run_dir, record)


def write(run_dir, record):
    path = Path(run_dir) / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("run_dir")
    p_start.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    p_finish = sub.add_parser("finish")
    p_finish.add_argument("run_dir")
    p_finish.add_argument("--status", required=True, choices=["completed", "failed"])
    p_finish.add_argument("--reason")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if args.action == "start":
        settings = dict(item.split("=", 1) for item in args.setting)
        start(args.run_dir, settings, command)
    else:
        finish(args.run_dir, args.status, args.reason)


if __name__ == "__main__":
    sys.exit(main())
