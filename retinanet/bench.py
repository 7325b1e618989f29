"""Benchmark the reference path against the project's defaults, on the same model and
images, in one invocation.

  reference  upstream behaviour: every image preprocessed into a float32 .npy cache before
             LoadGen starts, the TorchScript archive in fp32, batch 32, one worker thread per
             core
  project    what `make perf` does on this device: no cache, images preprocessed as LoadGen
             loads them, and the device's model form, precision, memory format, batch and
             threads (on a CPU in fp32: the native model with NNPACK)
  compiled   the same with MODEL_IMPL=native COMPILE=1: the archive's weights in the eager
             model, its dense part torch.compiled (the warm-up takes the compilation)
  native     the same with MODEL_IMPL=native, not compiled (not measured by default: it is the
             project path wherever auto takes the native model; elsewhere, on a CPU with
             native bf16, it tells whether auto should)

Each path makes an Offline and a SingleStream performance run through run_eval.sh (so
each has its run folder and run.json) and is measured for: preprocessing wall time, disk
written by preprocessing, peak RSS, Offline samples/s and SingleStream p90 latency.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from retinanet import PROJECT_ROOT
from retinanet.machine import CPU_FLAGS, cpu_flags, cpu_model, native_bf16

PATHS = {
    "reference": {
        "MODEL_IMPL": "torchscript",
        "PRECISION": "fp32",
        "CHANNELS_LAST": "0",
        "FREEZE": "0",
        "BATCH_SIZE": "32",
        "THREADS": str(os.cpu_count()),
        "IMAGE_CACHE": "float32",
    },
    "project": {
        "MODEL_IMPL": "auto",
        "NNPACK": "auto",
        "COMPILE": "auto",
        "PRECISION": "auto",
        "CHANNELS_LAST": "auto",
        "FREEZE": "auto",
        "BATCH_SIZE": "auto",
        "THREADS": "auto",
        "IMAGE_CACHE": "none",
    },
}
PATHS["compiled"] = dict(PATHS["project"], FREEZE="0", MODEL_IMPL="native", COMPILE="1")
PATHS["native"] = dict(PATHS["project"], FREEZE="0", MODEL_IMPL="native")
DEFAULT_PATHS = ["reference", "project", "compiled"]


def folder_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measured_run(scenario, settings, common):
    """One run_eval.sh performance run; returns its folder and the peak RSS of its process tree."""
    env = dict(os.environ, **common, **settings, SCENARIO=scenario)
    proc = subprocess.Popen(
        [str(PROJECT_ROOT / "run_eval.sh"), "performance"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout.read()
    # wait4 reports the largest RSS among the run's waited-for descendants: the harness
    _, status, usage = os.wait4(proc.pid, 0)
    match = re.search(r"^run folder: (.+)$", output, re.M)
    if os.waitstatus_to_exitcode(status) != 0 or not match:
        sys.exit(f"bench: the {scenario} run failed:\n{output[-3000:]}")
    return Path(match.group(1)), usage.ru_maxrss * 1024


def summary_value(run_dir, pattern):
    match = re.search(pattern, (run_dir / "mlperf_log_summary.txt").read_text(), re.M)
    return float(match.group(1))


def preprocessing_seconds(run_dir):
    """Dataset set-up (where the reference fills its cache) plus every on-load preprocessing."""
    log = (run_dir / "harness.log").read_text()
    setup = sum(float(s) for s in re.findall(r"loaded \d+ images, .*took=([0-9.]+)sec", log))
    on_load = sum(float(s) for s in re.findall(r"preprocessed \d+ samples in ([0-9.]+) s", log))
    return setup + on_load


def bench_path(name, settings, common, cache_dir):
    common = dict(common, CACHE_DIR=str(cache_dir))
    offline, offline_rss = measured_run("Offline", settings, common)
    disk = folder_bytes(cache_dir)
    single, single_rss = measured_run("SingleStream", settings, common)
    record = json.loads((offline / "run.json").read_text())["settings"]
    return {
        "settings": {
            k: record[k]
            for k in (
                "precision",
                "channels_last",
                "freeze",
                "batch_size",
                "threads",
                "intra_threads",
                "image_cache",
                "model_impl",
                "nnpack",
                "compile",
                "device",
            )
        },
        "preprocessing_s": preprocessing_seconds(offline),
        "disk_bytes": disk,
        "peak_rss_bytes": max(offline_rss, single_rss),
        "offline_samples_per_s": summary_value(offline, r"^Samples per second: ([0-9.e+-]+)"),
        "singlestream_p90_ms": summary_value(single, r"^90.00 percentile latency \(ns\)\s*: (\d+)")
        / 1e6,
        "runs": [str(offline), str(single)],
    }


ROWS = [  # metric, key, unit format, ratio as project/reference (True) or reference/project
    ("preprocessing wall time", "preprocessing_s", "{:.2f} s", False),
    ("disk written by preprocessing", "disk_bytes", "{:,.0f} B", True),
    ("peak RSS", "peak_rss_bytes", "{:,.0f} B", True),
    ("Offline samples/s", "offline_samples_per_s", "{:.4f}", True),
    ("SingleStream p90 latency", "singlestream_p90_ms", "{:.0f} ms", False),
]


def machine():
    """The facts a figure depends on: the CPU, its flags that decide the fast paths, the date."""
    flags = cpu_flags()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpu_flags": flags,
        "missing_cpu_flags": [flag for flag in CPU_FLAGS if flag not in flags],
        "native_bf16": native_bf16(),
    }


def machine_line(facts):
    return (
        f"machine: {facts['cpu']}, {facts['cpus']} CPUs; CPU flags: "
        f"{' '.join(facts['cpu_flags']) or 'none'} (not: "
        f"{' '.join(facts['missing_cpu_flags']) or 'none'}); native bf16: "
        f"{'yes' if facts['native_bf16'] else 'no'}; {facts['date']}"
    )


def ratio(a, b, forward):
    if forward:
        return f"{b / a:.2f}x" if a else ("0 B written" if not b else "n/a")
    return f"{a / b:.2f}x faster" if b else "n/a"


def table(results):
    ref = results["reference"]
    others = [name for name in PATHS if name != "reference" and name in results]
    lines = [
        "| metric | reference | "
        + " | ".join(others)
        + " | "
        + " | ".join(f"{name} vs reference" for name in others)
        + " |",
        "|---" * (2 + 2 * len(others)) + "|",
    ]
    for label, key, fmt, forward in ROWS:
        values = [fmt.format(results[name][key]) for name in ["reference"] + others]
        ratios = [ratio(ref[key], results[name][key], forward) for name in others]
        lines.append(f"| {label} | " + " | ".join(values + ratios) + " |")
    for name in ["reference"] + others:
        s = results[name]["settings"]
        lines.append(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--count", type=int, default=8, help="images (Offline samples, SingleStream queries)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--user-conf", default=str(PROJECT_ROOT / "conf" / "demo-user.conf"))
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "results"))
    parser.add_argument(
        "--paths", nargs="+", default=DEFAULT_PATHS, choices=list(PATHS), help="paths to measure"
    )
    args = parser.parse_args()
    if "reference" not in args.paths:
        parser.error("--paths: the reference is what the others are measured against")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.results_dir) / f"{stamp}-bench"
    out.mkdir(parents=True)
    common = {
        "DATA_DIR": args.data_dir,
        "MODEL": args.model,
        "COUNT": str(args.count),
        "DEVICE": args.device,
        "USER_CONF": args.user_conf,
        "RESULTS_DIR": str(out / "runs"),
        "PYTHON": sys.executable,
        "GUARD_IMAGES": "0",
    }
    results = {"machine": machine()}
    print(f"bench: {machine_line(results['machine'])}", flush=True)
    for name, settings in PATHS.items():
        if name not in args.paths:
            continue
        print(f"bench: {name} path ...", flush=True)
        results[name] = bench_path(name, settings, common, out / f"cache-{name}")
    command = " ".join(["python -m retinanet.bench"] + sys.argv[1:])
    (out / "bench.json").write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    report = f"`{command}`\n\n{machine_line(results['machine'])}\n\n{table(results)}\n"
    (out / "bench.md").write_text(report)
    print(report)
    print(f"bench folder: {out}")


if __name__ == "__main__":
    main()
