"""Two runs side by side, with B/A ratios, and a warning for each difference in settings,
software or hardware that makes the comparison unfair.

    python -m retinanet.compare --results RESULTS_DIR A B
"""

import argparse
import sys

from retinanet.report import PERCENTILES, number, table, throughput, worker_count
from retinanet.runs import RunError, resolve
from retinanet.settings import SETTINGS as SETTING_TABLE


def setting(key):
    return lambda run: run.settings.get(key)


# (label, how to read it from a run): what must match for two figures to be comparable: every
# setting that can change a result (retinanet/settings.py), and what the run read
SETTINGS = (
    [("mode", setting("mode"))]
    + [
        (s.name, setting(s.key))
        for s in SETTING_TABLE
        if s.affects_result and s.name != "USER_CONF"
    ]
    + [
        ("images", setting("images")),
        ("user.conf", lambda r: (r.record.get("user_conf") or {}).get("text")),
        (
            "dataset annotations (md5)",
            lambda r: (r.record.get("dataset") or {}).get("annotations_md5"),
        ),
        ("model (md5)", lambda r: (r.record.get("model") or {}).get("md5")),
    ]
)
SOFTWARE = [
    ("upstream commit", lambda r: (r.record.get("upstream") or {}).get("commit")),
    (
        "patch series",
        lambda r: " ".join(
            p["sha256"][:12] for p in (r.record.get("upstream") or {}).get("patches", [])
        ),
    ),
    ("project commit", lambda r: (r.record.get("project") or {}).get("commit")),
    ("LoadGen", lambda r: r.record.get("versions", {}).get("mlcommons-loadgen")),
    ("Python", lambda r: r.record.get("versions", {}).get("python")),
    ("torch", lambda r: r.record.get("versions", {}).get("torch")),
    ("torchvision", lambda r: r.record.get("versions", {}).get("torchvision")),
    ("CUDA", lambda r: r.record.get("host", {}).get("cuda")),
    ("cuDNN", lambda r: r.record.get("host", {}).get("cudnn")),
]
HARDWARE = [
    ("host", lambda r: r.record.get("host", {}).get("name")),
    ("CPU", lambda r: r.record.get("host", {}).get("cpu")),
    ("CPU cores", lambda r: r.record.get("host", {}).get("cpus")),
    ("GPUs", lambda r: ", ".join(r.record.get("host", {}).get("gpus") or []) or "none"),
    # 1: the harness's own process; more: Ray workers (ray_sut.py), on one node or several
    ("workers", lambda r: worker_count(r) or 1),
    ("worker nodes", lambda r: len({w["node_id"] for w in r.record.get("workers") or []}) or 1),
]


def short(value, width=40):
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def ratio(a, b):
    if (
        a is None
        or b is None
        or not isinstance(a, (int, float))
        or not isinstance(b, (int, float))
        or a == 0
    ):
        return None
    return f"{b / a:.3f}"


def figures(run):
    """(label, value) of what the run measured."""
    s = run.summary
    rows = [
        ("status", run.status),
        ("result", s.get("result") or ("n/a (accuracy run)" if run.accuracy else None)),
    ]
    if run.accuracy:
        rows.append(("mAP %", run.accuracy["map"]))
    verdict = s.get("rules")
    if verdict:
        missed = "meets" if verdict["meets"] else f"misses {len(verdict['missed'])}"
        rows.append(("v5.1 run rules", ("DEMO RUN, " if verdict.get("demo") else "") + missed))
    if (s.get("compliance") or {}).get("passed") is not None:
        rows.append(("TEST01", "passed" if s["compliance"]["passed"] else "failed"))
    metric = s.get("metric") or {}
    if metric.get("value") is not None:
        value = metric["value"] / 1e6 if metric["unit"] == "ns" else metric["value"]
        unit = "ms" if metric["unit"] == "ns" else metric["unit"]
        rows.append((f"{metric['name']} ({unit})", value))
    rows.append(("samples/s", throughput(run) if s.get("mode") == "PerformanceOnly" else None))
    latency = s.get("query_latency_ns") or s.get("latency_ns") or {}
    for key in ["mean"] + PERCENTILES:
        if latency.get(key) is not None:
            rows.append((f"{key} latency (ms, lower is better)", latency[key] / 1e6))
    rows += [
        ("queries", s.get("queries")),
        ("duration (s)", s.get("duration_s")),
        ("LoadGen warnings / errors", f"{s.get('warnings', '?')} / {s.get('errors', '?')}"),
    ]
    return rows


def unfair(a, b):
    """Warnings: each way the two runs differ that changes what the figures mean."""
    warnings = []
    for run, tag in ((a, "A"), (b, "B")):
        if run.status != "completed":
            warnings.append(f"{tag} did not complete ({run.status}: {run.reason})")
        elif run.summary.get("result") == "INVALID":
            warnings.append(f"{tag} is INVALID: " + "; ".join(run.summary.get("reasons", [])))
        for tree in ("project", "upstream"):
            if (run.record.get(tree) or {}).get("dirty"):
                warnings.append(
                    f"{tag}'s {tree} tree was dirty: its code is not exactly its commit"
                )
    for group, fields in (("setting", SETTINGS), ("software", SOFTWARE), ("hardware", HARDWARE)):
        for name, read in fields:
            va, vb = read(a), read(b)
            if va != vb:
                warnings.append(f"{group} differs, {name}: A {short(va)!s} / B {short(vb)!s}")
    return warnings


def compare(a, b):
    fa, fb = dict(figures(a)), dict(figures(b))
    names = list(dict.fromkeys([n for n, _ in figures(a)] + [n for n, _ in figures(b)]))
    rows = [
        [
            name,
            number(fa.get(name)) if isinstance(fa.get(name), float) else fa.get(name),
            number(fb.get(name)) if isinstance(fb.get(name), float) else fb.get(name),
            ratio(fa.get(name), fb.get(name)),
        ]
        for name in names
    ]
    rows += [
        [name, short(read(a)), short(read(b)), "" if read(a) == read(b) else "differs"]
        for name, read in SETTINGS + SOFTWARE + HARDWARE
    ]
    lines = [f"A: {a.path}", f"B: {b.path}", "", table(["", "A", "B", "B/A"], rows), ""]
    warnings = unfair(a, b)
    if warnings:
        lines += [f"WARNING: {len(warnings)} differences make this comparison unfair:"]
        lines += [f"  - {warning}" for warning in warnings]
    else:
        lines += ["Same settings, software and hardware: the figures compare like for like."]
    return "\n".join(lines), warnings


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results", help="the folder holding the run folders")
    parser.add_argument(
        "a", help="run A: a folder name under RESULTS, a unique part of one, or a path"
    )
    parser.add_argument("b", help="run B")
    args = parser.parse_args()
    try:
        text, _ = compare(resolve(args.results, args.a), resolve(args.results, args.b))
    except RunError as error:
        sys.exit(f"compare: error: {error}")
    print(text)


if __name__ == "__main__":
    main()
