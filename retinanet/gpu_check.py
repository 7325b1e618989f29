"""make gpu-check: one prepared command for a short loan of a GPU machine that has its own
CUDA torch and no network. Everything it writes goes under one folder (--out), to copy back:

  1. setup in that environment (ENV_KIND=system; missing packages from WHEELS)
  2. make demo DEVICE=...      (the oracle's mAP, a short real-architecture run)
  3. make bench DEVICE=...     (reference path against the project's defaults)
  4. the settings sweep: Offline samples/s of the real architecture per setting (TorchScript
     and the native model; fp32, fp16, bf16; channels_last; torch.compile with CUDA graphs;
     batch size; threads), each against the first row, and the accuracy guard's agreement
     with fp32 for each setting in fp16/bf16 or compiled; then a Server run at a fraction of
     the best Offline figure, VALID or not
  5. one table (table.md, gpu-check.json), printed

A time budget (--budget, seconds) stops the sweep before it runs over: rows not run are
listed as skipped, with the reason, so that the loan ends with figures in any case.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from retinanet import PROJECT_ROOT, settings_outputs
from retinanet.machine import environment
from retinanet.settings_auto import resolve

DEMO_MODEL = Path("models") / "random-weights" / "resnext50_32x4d_fpn.pth"

# name, settings; the first row is the base every other row is compared with
SWEEP = [  # the most telling rows first: the time budget skips from the end
    ("torchscript fp32", {"MODEL_IMPL": "torchscript", "PRECISION": "fp32", "CHANNELS_LAST": "0"}),
    ("torchscript fp16+cl", {"MODEL_IMPL": "torchscript", "PRECISION": "fp16"}),
    ("native fp16+cl", {"MODEL_IMPL": "native", "PRECISION": "fp16"}),
    ("native fp16+cl+compile", {"MODEL_IMPL": "native", "PRECISION": "fp16", "COMPILE": "1"}),
    (
        "native bf16+cl+compile batch 32",
        {"MODEL_IMPL": "native", "PRECISION": "bf16", "COMPILE": "1", "BATCH_SIZE": "32"},
    ),
    ("native fp16+cl batch 32", {"MODEL_IMPL": "native", "PRECISION": "fp16", "BATCH_SIZE": "32"}),
    ("native fp16+cl 4 threads", {"MODEL_IMPL": "native", "PRECISION": "fp16", "THREADS": "4"}),
    ("native bf16+cl", {"MODEL_IMPL": "native", "PRECISION": "bf16"}),
    ("native fp16", {"MODEL_IMPL": "native", "PRECISION": "fp16", "CHANNELS_LAST": "0"}),
    (
        "native fp32",
        {"MODEL_IMPL": "native", "PRECISION": "fp32", "CHANNELS_LAST": "0", "NNPACK": "0"},
    ),
]
# DEVICE=cpu: a few rows, to try the command where there is no GPU
CPU_ROWS = {
    "native fp32+nnpack": {"MODEL_IMPL": "native", "PRECISION": "fp32", "NNPACK": "1"},
    "native fp32+nnpack+compile": {
        "MODEL_IMPL": "native", "PRECISION": "fp32", "NNPACK": "1", "COMPILE": "1"
    },
}  # fmt: skip
CPU_SWEEP = ["torchscript fp32", "native fp32", *CPU_ROWS]


def user_conf(path, samples, server_qps=None):
    lines = [
        f"*.Offline.target_qps = {samples}",
        "*.Offline.min_duration = 0",
        f"*.Offline.min_query_count = {samples}",
    ]
    if server_qps:
        lines += [
            f"*.Server.target_qps = {server_qps:g}",
            "*.Server.min_duration = 0",
            f"*.Server.min_query_count = {samples}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Check:
    def __init__(self, out, device, budget, env):
        self.out, self.device, self.budget, self.env = out, device, budget, env
        self.started = time.monotonic()
        self.steps = []

    def left(self):
        return self.budget - (time.monotonic() - self.started)

    def step(self, name, command, env=None, log=None):
        """Run a command, its output into a log under out; returns (ok, output)."""
        began = time.monotonic()
        print(f"gpu-check: {name} ...", flush=True)
        proc = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.monotonic() - began
        (self.out / (log or f"{name}.log")).write_text(proc.stdout)
        ok = proc.returncode == 0
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        self.steps.append({"step": name, "ok": ok, "seconds": round(seconds, 1), "last": tail[0]})
        print(f"gpu-check: {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
        return ok, proc.stdout


def run_folder(output):
    match = re.search(r"^run folder: (.+)$", output, re.M)
    return Path(match.group(1)) if match else None


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text()) if run_dir else {}


def samples_per_s(output):
    match = re.search(r"^Samples per second\s*:\s*([0-9.e+-]+)", output, re.M)
    return float(match.group(1)) if match else None


def sweep(check, args, rows, data_dir, model):
    results = []
    base = None
    for name, settings in rows:
        row = {"name": name, "settings": settings}
        results.append(row)
        if check.left() < args.row_seconds * (2 if settings.get("COMPILE") == "1" else 1):
            row["skipped"] = f"time budget: {check.left():.0f} s left"
            continue
        common = {
            "DATA_DIR": str(data_dir),
            "MODEL": str(model),
            "DEVICE": args.device,
            "RESULTS_DIR": str(check.out / "sweep"),
            "COUNT": str(args.count),
            "WARMUP": str(args.warmup),
            "CHECK_IMAGES": "0",
            "PROGRESS": "0",
            "USER_CONF": str(check.out / "offline.conf"),
            "SCENARIO": "Offline",
        }
        ok, output = check.step(
            f"sweep {name}",
            [str(PROJECT_ROOT / "run_eval.sh"), "performance"],
            env={**common, **settings},
            log=f"sweep-{re.sub(r'[^a-z0-9]+', '-', name)}.log",
        )
        row["run"] = str(run_folder(output))
        row["valid"] = "Result is : VALID" in output
        row["samples_per_s"] = samples_per_s(output) if ok else None
        if not ok:
            row["error"] = check.steps[-1]["last"]
            continue
        if base is None:
            base = row["samples_per_s"]
        # the guard make eval would run for this row's settings (none for plain fp32)
        resolved, _ = resolve(
            {
                **settings,
                "DEVICE": args.device,
                "MODEL": str(model),
                "DATA_DIR": str(data_dir),
                "GUARD_IMAGES": str(args.guard_images),
            }
        )
        guard_args = settings_outputs.guard_args("accuracy", resolved, args.guard_images)
        if guard_args and check.left() > args.row_seconds:
            guard = check.out / "sweep" / f"guard-{re.sub(r'[^a-z0-9]+', '-', name)}.json"
            command = [sys.executable, "-m", "retinanet.accuracy_guard", *guard_args]
            command += ["--out", str(guard)]
            ok, _ = check.step(f"guard {name}", command, env=device_env(args.device))
            if ok:
                report = json.loads(guard.read_text())
                row["guard_agreement"] = report["agreement"]
                row["guard_map"] = [report["map_fp32"], report["map_setting"]]
    for row in results:
        if base and row.get("samples_per_s"):
            row["vs_first"] = row["samples_per_s"] / base
    return results


def device_env(device):
    return {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}


def server(check, args, best, data_dir, model):
    """One Server run of the best row at a fraction of its Offline samples/s."""
    qps = max(best["samples_per_s"] * args.server_fraction, 0.1)
    row = {"name": f"Server, {best['name']}", "target_qps": qps}
    if check.left() < args.row_seconds * (2 if best["settings"].get("COMPILE") == "1" else 1):
        row["skipped"] = f"time budget: {check.left():.0f} s left"
        return row
    conf = user_conf(check.out / "server.conf", args.samples, qps)
    ok, output = check.step(
        "server",
        [str(PROJECT_ROOT / "run_eval.sh"), "performance"],
        env={
            "DATA_DIR": str(data_dir),
            "MODEL": str(model),
            "DEVICE": args.device,
            "RESULTS_DIR": str(check.out / "sweep"),
            "COUNT": str(args.count),
            "CHECK_IMAGES": "0",
            "PROGRESS": "0",
            "WARMUP": str(args.warmup),
            "USER_CONF": str(conf),
            "SCENARIO": "Server",
            **best["settings"],
        },
        log="server.log",
    )
    row.update(run=str(run_folder(output)), valid="Result is : VALID" in output, ok=ok)
    match = re.search(r"^99.00 percentile latency \(ns\)\s*:\s*(\d+)", output, re.M)
    row["p99_ms"] = int(match.group(1)) / 1e6 if match else None
    return row


def table(facts, steps, rows, server_row):
    lines = [
        f"gpu-check, {facts['date']}: {facts['gpu']}; driver {facts['driver']}; torch "
        f"{facts['torch']}, torchvision {facts['torchvision']}, CUDA {facts['cuda']}; "
        f"Python {facts['python']} ({facts['environment']})",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['step']} | {'ok' if s['ok'] else 'FAILED: ' + s['last']} | {s['seconds']} |"
        for s in steps
        if not s["step"].startswith(("sweep ", "guard "))
    ]
    lines += [
        "",
        "| setting (Offline, real architecture) | samples/s | vs first row | accuracy guard: "
        "fp32 detections reproduced | run |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped ({row['skipped']}) | | | |")
            continue
        if row.get("samples_per_s") is None:
            lines.append(f"| {row['name']} | FAILED: {row.get('error', '')} | | | {row['run']} |")
            continue
        guard = f"{100 * row['guard_agreement']:.1f}%" if "guard_agreement" in row else ""
        ratio = f"{row['vs_first']:.2f}x" if "vs_first" in row else ""
        lines.append(
            f"| {row['name']} | {row['samples_per_s']:.2f}"
            f"{'' if row['valid'] else ' (INVALID)'} | {ratio} | {guard} | "
            f"{Path(row['run']).name} |"
        )
    if server_row:
        if "skipped" in server_row:
            lines.append(f"\n{server_row['name']}: skipped ({server_row['skipped']})")
        else:
            lines.append(
                f"\n{server_row['name']} at {server_row['target_qps']:.2f} QPS: "
                f"{'VALID' if server_row['valid'] else 'INVALID'}, p99 "
                f"{server_row['p99_ms'] or 0:.1f} ms ({Path(server_row['run']).name})"
            )
    lines.append(
        "\nNVIDIA's published H200 figures (TensorRT, int8): 1,821 samples/s Offline, 1,699 Server"
    )
    return "\n".join(lines) + "\n"


def facts(python):
    probe = subprocess.run(
        [
            python,
            "-c",
            "import json, platform, torch, torchvision; print(json.dumps({'torch': "
            "torch.__version__, 'torchvision': torchvision.__version__, 'cuda': "
            "torch.version.cuda, 'python': platform.python_version(), 'gpu': "
            "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}))",
        ],
        capture_output=True,
        text=True,
    )
    found = json.loads(probe.stdout) if probe.returncode == 0 else {}
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
    found["driver"] = smi.stdout.strip().splitlines()[0] if smi and smi.returncode == 0 else "none"
    found["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    found["environment"] = environment()["kind"] or "unknown"
    for key in ("torch", "torchvision", "cuda", "python", "gpu"):
        found.setdefault(key, "?")
    return found


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="everything goes under this folder")
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds for the whole check (default: 450 on a GPU, to end within 8 minutes; "
        "none on a CPU)",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="WARMUP of each sweep run (compiles there)"
    )
    parser.add_argument("--count", type=int, default=12, help="images (the demo has 12)")
    parser.add_argument("--samples", type=int, default=1024, help="samples per Offline run")
    parser.add_argument("--bench-count", type=int, default=64, help="make bench BENCH_COUNT")
    parser.add_argument("--guard-images", type=int, default=4)
    parser.add_argument(
        "--row-seconds", type=float, default=30, help="what a sweep row needs (compiled: twice)"
    )
    parser.add_argument("--server-fraction", type=float, default=0.7)
    parser.add_argument("--skip", nargs="*", default=[], choices=["setup", "demo", "bench"])
    parser.add_argument("--rows", nargs="*", help="sweep rows by name (default: the device's)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    env = dict(os.environ, ENV_KIND=os.environ.get("ENV_KIND") or "system", PYTHON=python)
    if args.budget is None:
        args.budget = 450 if args.device == "gpu" else float("inf")
    check = Check(out, args.device, args.budget, env)
    demo_dir = out / "demo"
    make = ["make", f"PYTHON={python}", f"ENV_KIND={env['ENV_KIND']}", f"DEMO_DIR={demo_dir}"]
    if "setup" not in args.skip:
        check.step("setup", make + ["setup"])
    if "demo" not in args.skip:
        check.step("make demo", make + ["demo", f"DEVICE={args.device}"], log="demo.log")
    else:  # the sweep's data and model all the same
        check.step(
            "demo data and model",
            make + [str(demo_dir / DEMO_MODEL)],
            log="demo.log",
        )
    if "bench" not in args.skip and check.left() > 4 * args.row_seconds:
        check.step(
            "make bench",
            make
            + [
                "bench",
                f"DEVICE={args.device}",
                f"BENCH_COUNT={args.bench_count}",
                f"RESULTS_DIR={out / 'bench'}",
                # the sweep measures the native model, compiled or not, on its own
                "BENCH_PATHS=reference project",
            ],
            log="bench.log",
        )
    user_conf(out / "offline.conf", args.samples)
    known = dict(SWEEP) | CPU_ROWS
    names = args.rows or (CPU_SWEEP if args.device == "cpu" else [name for name, _ in SWEEP])
    rows = sweep(
        check, args, [(n, known[n]) for n in names], demo_dir / "data", demo_dir / DEMO_MODEL
    )
    done = [row for row in rows if row.get("samples_per_s")]
    server_row = None
    if done:
        best = max(done, key=lambda row: row["samples_per_s"])
        server_row = server(check, args, best, demo_dir / "data", demo_dir / DEMO_MODEL)
    found = facts(python)
    text = table(found, check.steps, rows, server_row)
    (out / "table.md").write_text(text)
    record = {"facts": found, "steps": check.steps, "sweep": rows, "server": server_row}
    (out / "gpu-check.json").write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(text)
    print(f"gpu-check: everything is in {out} ({time.monotonic() - check.started:.0f} s)")
    return 0 if all(s["ok"] for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
