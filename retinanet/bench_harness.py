"""The harness's own ceiling: how fast the reference harness answers LoadGen when the model
costs nothing, with and without the patches that take the harness's per-sample work out of
the timed path (the vectorized post-processing and the loaded samples held in place).

A TorchScript model that does no work returns the same N detections for every image (N =
0, 100, 300; the official model keeps up to 300). Each of Offline and SingleStream, at
batch 1 and 16, runs through the harness of this checkout ("patched") and of a scratch
clone of upstream at the pin with the rest of the series ("unpatched"), the same way
run_eval.sh starts it (run_local.sh, the settings' flags). Offline reports samples/s;
SingleStream the mean latency per query, which with this model is the harness's overhead.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from retinanet import HARNESS, PROJECT_ROOT, UPSTREAM, patch_series, settings_auto, settings_outputs
from retinanet.bench import machine, machine_line, summary_value

# the patches whose effect is measured, by topic: the unpatched tree has the series before them
MEASURED = ("vectorized-post-processing", "loaded-samples-in-place")
DETECTIONS = (0, 100, 300)
SCENARIOS = ("Offline", "SingleStream")
BATCHES = (1, 16)


class ZeroCost(nn.Module):
    """The same detections for every image: boxes in the 800 frame, scores sorted above the
    0.05 threshold, labels 0..263."""

    def __init__(self, detections: int):
        super().__init__()
        generator = torch.Generator().manual_seed(detections)
        self.register_buffer("boxes", torch.rand(detections, 4, generator=generator) * 800)
        scores = 0.06 + 0.94 * torch.rand(detections, generator=generator)
        self.register_buffer("scores", scores.sort(descending=True)[0])
        self.register_buffer("labels", torch.randint(0, 264, (detections,), generator=generator))

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        return [
            {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
            for _ in range(images.shape[0])
        ]


def save_model(detections, folder):
    path = Path(folder) / f"zero-cost-{detections}" / "resnext50_32x4d_fpn.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(ZeroCost(detections)).save(str(path))
    return path


def series_before_measured():
    """The series up to the measured patches, which come one after the other: later patches
    build on their lines and change nothing a run without their settings answers."""
    patches = patch_series.series()
    first = next((i for i, p in enumerate(patches) if p.stem.endswith(MEASURED)), len(patches))
    if [p.stem.split("-", 1)[1] for p in patches[first : first + len(MEASURED)]] != list(MEASURED):
        sys.exit(f"bench-harness: patches/ does not hold the patches {MEASURED} in a row")
    return patches[:first]


def unpatched_harness(scratch):
    """A clone of upstream at the pin with the series up to the measured patches."""
    pin = patch_series.pinned_commit()
    clone = Path(scratch) / "inference"
    git = ["git", "-c", "advice.detachedHead=false"]
    subprocess.run(
        git + ["clone", "-q", "--shared", "--no-checkout", str(UPSTREAM), str(clone)], check=True
    )
    subprocess.run(
        git + ["sparse-checkout", "set", "--cone", "vision/classification_and_detection"],
        cwd=clone,
        check=True,
    )
    subprocess.run(git + ["checkout", "-q", "--detach", pin], cwd=clone, check=True)
    patch_series.apply(clone, series_before_measured(), pin)
    return clone / HARNESS.relative_to(UPSTREAM)


def user_conf(path, samples):
    path.write_text(
        f"*.Offline.min_query_count = {samples}\n*.Offline.min_duration = 0\n"
        "*.Offline.target_qps = 1\n"
        f"*.SingleStream.min_query_count = {samples}\n*.SingleStream.min_duration = 0\n"
        "*.SingleStream.target_latency = 1\n"
    )
    return path


def harness_run(harness, model, data_dir, scenario, batch, threads, conf, out):
    resolved, problems = settings_auto.resolve(
        {
            "DATA_DIR": str(data_dir),
            "MODEL": str(model),
            "DEVICE": "cpu",
            "SCENARIO": scenario,
            "BATCH_SIZE": str(batch),
            "THREADS": str(threads),
            "PRECISION": "fp32",
            "CHANNELS_LAST": "0",
            "FREEZE": "0",
            "WARMUP": "1",
            "PROGRESS": "0",
            "USER_CONF": str(conf),
        }
    )
    assert not problems, problems
    args = settings_outputs.harness_args(resolved) + ["--user_conf", str(conf)]
    out.mkdir(parents=True)
    env = dict(
        os.environ,
        OUTPUT_DIR=str(out),
        DATA_DIR=str(Path(data_dir).resolve()),
        MODEL_DIR=str(Path(model).parent),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    proc = subprocess.run(
        ["./run_local.sh", "pytorch", "retinanet", "cpu", *args],
        cwd=harness,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = out / "mlperf_log_summary.txt"
    if proc.returncode != 0 or not summary.exists():
        sys.exit(f"bench-harness: the run in {out} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    if scenario == "Offline":
        return summary_value(out, r"^Samples per second: ([0-9.e+-]+)")
    return summary_value(out, r"^Mean latency \(ns\)\s*: (\d+)") / 1e6


def table(rows):
    lines = [
        "| detections | scenario | batch | unpatched | patched | patched vs unpatched |",
        "|---|---|---|---|---|---|",
    ]
    for n, scenario, batch, before, after in rows:
        if scenario == "Offline":
            cells = f"{before:,.1f} samples/s | {after:,.1f} samples/s | {after / before:.1f}x"
        else:
            cells = f"{before:.3f} ms/query | {after:.3f} ms/query | {before / after:.1f}x faster"
        lines.append(f"| {n} | {scenario} | {batch} | {cells} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--samples", type=int, default=4096, help="Offline samples; queries")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--detections", default=",".join(map(str, DETECTIONS)))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--results-dir", default=str(PROJECT_ROOT / "results"))
    args = parser.parse_args()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.results_dir) / f"{stamp}-bench-harness"
    out.mkdir(parents=True)
    facts = machine()
    print(f"bench-harness: {machine_line(facts)}", flush=True)
    trees = {"unpatched": unpatched_harness(out / "scratch"), "patched": HARNESS}
    conf = user_conf(out / "user.conf", args.samples)
    rows = []
    for n in map(int, args.detections.split(",")):
        model = save_model(n, out / "models")
        for scenario in args.scenarios.split(","):
            # SingleStream: one sample per query, whatever the batch size
            batches = map(int, args.batches.split(",")) if scenario == "Offline" else [1]
            for batch in batches:
                found = {}
                for name, harness in trees.items():
                    found[name] = harness_run(
                        harness,
                        model,
                        args.data_dir,
                        scenario,
                        batch,
                        args.threads,
                        conf,
                        out / "runs" / f"{name}-{n}-{scenario}-{batch}",
                    )
                rows.append((n, scenario, batch, found["unpatched"], found["patched"]))
                print(
                    f"bench-harness: {n} detections, {scenario}, batch {batch}: "
                    f"unpatched {found['unpatched']:.4g}, patched {found['patched']:.4g}",
                    flush=True,
                )
    shutil.rmtree(out / "scratch")
    command = " ".join(["python -m retinanet.bench_harness"] + sys.argv[1:])
    report = (
        f"`{command}`\n\n{machine_line(facts)}; {args.threads} harness threads, fp32, "
        f"{args.samples} samples per run\n\n{table(rows)}\n"
    )
    (out / "bench-harness.md").write_text(report)
    print(report)
    print(f"bench folder: {out}")


if __name__ == "__main__":
    main()
