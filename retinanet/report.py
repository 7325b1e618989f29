"""One Markdown report over run folders: tables a user can paste into a ticket, and PNG
plots (throughput by scenario and setting, latency percentiles per run, mAP against the
target). Reads run.json and summary.json; writes only into the report folder.

    python -m retinanet.report --results RESULTS_DIR --out REPORT_DIR [--runs 'PATTERN ...']
"""

import argparse
import datetime
import platform
import sys
from pathlib import Path

from retinanet.run_summary import MAP_TARGET, REFERENCE_MAP
from retinanet.runs import RunError, find
from retinanet.settings import SETTINGS

PERCENTILES = ["p50", "p90", "p95", "p97", "p99", "p99.9"]
SCENARIO_COLORS = {
    "Offline": "tab:blue",
    "Server": "tab:orange",
    "SingleStream": "tab:green",
    "MultiStream": "tab:purple",
}


def cell(value):
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value):
    """Four significant figures, never in exponent form."""
    if value is None:
        return None
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def ms(ns):
    return None if ns is None else number(ns / 1e6)


# always shown; the other settings that can change a result are shown when the user set them
MAIN_SETTINGS = ("device", "precision", "batch_size", "threads")


def setting_text(run):
    s, requested = run.settings, run.record.get("requested") or {}
    parts = [
        s.get(key) if key in ("device", "precision") else f"{key}={s.get(key)}"
        for key in MAIN_SETTINGS
        if s.get(key)
    ]
    workers = worker_count(run)
    if workers:
        parts.append(f"workers={workers}")
    for setting in SETTINGS:
        chosen = requested.get(
            setting.name, s.get(setting.key)
        )  # records before 'requested': the value
        if (
            setting.affects_result
            and setting.key not in MAIN_SETTINGS + ("scenario", "user_conf", "workers")
            and s.get(setting.key)
            and chosen not in ("", "auto", setting.default)
        ):
            parts.append(f"{setting.key}={s[setting.key]}")
    return " ".join(parts) or "?"


def worker_count(run):
    """The Ray workers a WORKERS or RAY_ADDRESS run had (run.json); 0 for one process."""
    return len(run.record.get("workers") or [])


def label(run):
    """Short, unique enough: the run's time and what sets it apart."""
    when = run.name[9:15] if run.name[:8].isdigit() else run.name
    when = f"{when[:2]}:{when[2:4]}:{when[4:6]}" if when.isdigit() else when
    return f"{when} {run.scenario} {setting_text(run)}"


def throughput(run):
    """Samples per second the run achieved, as LoadGen counts them for its scenario
    (MultiStream, which reports none: samples over the test's duration)."""
    summary = run.summary
    rates = summary.get("throughput") or {}
    key = {
        "Offline": "samples_per_second",
        "Server": "completed_samples_per_second",
        "SingleStream": "qps_with_loadgen_overhead",
    }.get(summary.get("scenario"))
    if key:
        return rates.get(key)
    queries, per_query = (
        summary.get("queries"),
        (summary.get("settings") or {}).get("samples_per_query"),
    )
    if queries and per_query and summary.get("duration_s"):
        return queries * per_query / summary["duration_s"]
    return None


def metric_text(summary):
    metric = summary.get("metric") or {}
    if metric.get("value") is None:
        return None
    if metric["unit"] == "ns":
        return f"{metric['name']} {ms(metric['value'])} ms"
    return f"{number(metric['value'])} {metric['unit']}"


def software(run):
    versions = run.record.get("versions", {})
    return f"torch {versions.get('torch', '?')}, LoadGen {versions.get('mlcommons-loadgen', '?')}"


def hardware(run):
    host = run.record.get("host", {})
    gpus = host.get("gpus") or []
    return ", ".join(gpus) if gpus and run.settings.get("device") == "gpu" else host.get("cpu", "?")


def tree(state, length=10):
    if not state or not state.get("commit"):
        return "?"
    return state["commit"][:length] + (" (dirty)" if state.get("dirty") else "")


def rules_text(verdict):
    """The v5.1 verdict on one line: a demo label, then meets, or each rule missed."""
    text = "**DEMO RUN**, not a result; " if verdict.get("demo") else ""
    if verdict["meets"]:
        return text + f"meets the {verdict['rules']} run rules"
    missed = "; ".join(f"{m['rule']}: {m['had']} (needs {m['needs']})" for m in verdict["missed"])
    return text + f"misses {len(verdict['missed'])} {verdict['rules']} rules: {missed}"


def compliance_text(outcome):
    text = (
        f"{outcome['test']} {'passed' if outcome['passed'] else '**failed**'} "
        f"(of `{outcome['of']}`): accuracy check {outcome['accuracy']}, "
        f"performance check {outcome['performance']}"
    )
    if "fallback" in outcome:
        fallback = outcome["fallback"]
        text += (
            f", fallback mAP delta {fallback.get('delta_percent')}% "
            f"({'passed' if fallback['passed'] else 'failed'})"
        )
    return text


PERFORMANCE_HEADER = [
    "run",
    "scenario",
    "settings",
    "queries",
    "result",
    "metric",
    "samples/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "warnings/errors",
]


def performance_section(runs):
    """A row per completed performance run, then LoadGen's reasons for each INVALID one."""
    performance = [run for run in runs if run.performance]
    if not performance:
        return []
    rows = []
    for run in performance:
        s = run.summary
        latency = s.get("query_latency_ns") or s.get("latency_ns") or {}
        rows.append(
            [
                run.name,
                s.get("scenario"),
                setting_text(run),
                s.get("queries"),
                s.get("result"),
                metric_text(s),
                number(throughput(run)),
                ms(latency.get("p50")),
                ms(latency.get("p90")),
                ms(latency.get("p99")),
                f"{s.get('warnings', 0)}/{s.get('errors', 0)}",
            ]
        )
    lines = ["## Performance", "", table(PERFORMANCE_HEADER, rows), ""]
    invalid = [run for run in performance if run.summary.get("result") == "INVALID"]
    if invalid:
        lines += ["INVALID, as LoadGen gives the reasons:", ""]
        lines += [
            f"- `{run.name}`: " + "; ".join(run.summary.get("reasons", [])) for run in invalid
        ]
        lines += [""]
    return lines


def accuracy_section(runs):
    """A row per completed accuracy run: its mAP against the target."""
    accuracy = [run for run in runs if run.accuracy]
    if not accuracy:
        return []
    rows = [
        [
            run.name,
            setting_text(run),
            run.record.get("dataset", {}).get("images_used"),
            f"{run.accuracy['map']:.3f}",
            "yes" if run.accuracy["meets_target"] else "**no**",
        ]
        for run in accuracy
    ]
    header = [
        "run",
        "settings",
        "images",
        "mAP %",
        f"meets {MAP_TARGET}% (99% of {REFERENCE_MAP}%)",
    ]
    return ["## Accuracy", "", table(header, rows), ""]


def rules_section(runs):
    """The v5.1 verdict of each completed run, and its compliance test's."""
    judged = [run for run in runs if run.status == "completed" and run.summary.get("rules")]
    if not judged:
        return []
    lines = [
        "## MLPerf v5.1 run rules",
        "",
        "Would MLPerf accept the run: upstream's v5.1 rules, checked on its LoadGen log, "
        "model MD5 and dataset manifest. A demo run is a check of the pipeline, not a result.",
        "",
    ]
    for run in judged:
        lines.append(f"- `{run.name}`: {rules_text(run.summary['rules'])}")
        compliance = run.summary.get("compliance")
        if compliance and "passed" in compliance:
            lines.append(f"  - {compliance_text(compliance)}")
    return lines + [""]


def unfinished_section(runs):
    unfinished = [run for run in runs if run.status != "completed"]
    if not unfinished:
        return []
    rows = [[run.name, run.mode, run.scenario, run.status, run.reason] for run in unfinished]
    header = ["run", "mode", "scenario", "status", "reason"]
    return ["## Failed or still running", "", table(header, rows), ""]


def provenance_section(runs):
    """How each run was made: model, upstream and project trees, software, hardware."""
    rows = [
        [
            run.name,
            (run.record.get("model") or {}).get("md5", "?")[:12],
            tree(run.record.get("upstream")),
            len((run.record.get("upstream") or {}).get("patches", [])),
            tree(run.record.get("project")),
            software(run),
            hardware(run),
        ]
        for run in runs
    ]
    header = ["run", "model md5", "upstream", "patches", "project", "software", "CPU / GPU"]
    return [
        "## How each run was made",
        "",
        table(header, rows),
        "",
        "Each run's folder holds the rest: `run.json` (command, every setting, versions, "
        "`rerun`: the make command that repeats it) and `summary.json`.",
        "",
    ]


def render(runs, results_dir, plots):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# RetinaNet MLPerf runs",
        "",
        f"{len(runs)} runs from `{results_dir}`, reported {now} on {platform.node()}.",
        "",
    ]
    for section in (
        performance_section,
        accuracy_section,
        rules_section,
        unfinished_section,
        provenance_section,
    ):
        lines += section(runs)
    for name, title in plots:
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def plot_throughput(runs, path):
    import matplotlib.pyplot as plt

    runs = [run for run in runs if throughput(run) is not None]
    if not runs:
        return False
    runs.sort(key=lambda run: (run.scenario, setting_text(run), run.name))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(runs) + 1.5))
    values = [throughput(run) for run in runs]
    positive = [value for value in values if value > 0] or [1.0]
    wide = max(positive) / min(positive) > 20  # a GPU beside a CPU, a real model beside the oracle
    if wide:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 2, max(positive) * 3)
    else:
        ax.set_xlim(0, max(positive) * 1.2)
    bars = ax.barh(
        range(len(runs)),
        [max(value, 0) for value in values],
        color=[SCENARIO_COLORS.get(run.scenario, "gray") for run in runs],
    )
    for bar, run, value in zip(bars, runs, values):
        if run.summary.get("result") == "INVALID":
            bar.set_hatch("//")
        x = value if value > 0 else ax.get_xlim()[0]
        ax.text(x, bar.get_y() + bar.get_height() / 2, f" {number(value)}", va="center", fontsize=8)
    ax.set_yticks(range(len(runs)), [label(run) for run in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples per second" + (" (log scale)" if wide else ""))
    ax.set_title("Throughput by scenario and setting (hatched: INVALID)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency(runs, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for run in runs:
        latency = run.summary.get("query_latency_ns") or run.summary.get("latency_ns") or {}
        points = [(p, latency[p] / 1e6) for p in PERCENTILES if latency.get(p)]
        if not points:
            continue
        style = "--" if run.summary.get("result") == "INVALID" else "-"
        ax.plot(
            [p for p, _ in points],
            [v for _, v in points],
            style,
            marker="o",
            color=SCENARIO_COLORS.get(run.scenario),
            alpha=0.8,
            label=label(run) + (" (per query)" if run.summary.get("query_latency_ns") else ""),
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency percentiles per run (dashed: INVALID)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def images_text(run):
    images = (run.record.get("dataset") or {}).get("images_used")
    return f", {images} images" if images else ""


def plot_accuracy(runs, path):
    import matplotlib.pyplot as plt

    runs = [run for run in runs if run.accuracy]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(runs) + 1.5))
    values = [run.accuracy["map"] for run in runs]
    colors = ["tab:green" if run.accuracy["meets_target"] else "tab:red" for run in runs]
    bars = ax.barh(range(len(runs)), values, color=colors)
    for bar, value in zip(bars, values):
        ax.text(value, bar.get_y() + bar.get_height() / 2, f" {value:.3f}", va="center", fontsize=8)
    ax.axvline(MAP_TARGET, color="black", linestyle="--", label=f"target {MAP_TARGET}%")
    ax.set_yticks(range(len(runs)), [label(run) + images_text(run) for run in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 115)
    ax.set_xlabel("mAP %")
    ax.set_title("Accuracy against the MLPerf target")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(results_dir, out_dir, patterns=()):
    import matplotlib

    matplotlib.use("Agg")
    runs = find(results_dir, patterns)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    performance = [run for run in runs if run.performance]
    for draw, name, title, chosen in [
        (plot_throughput, "throughput.png", "throughput by scenario and setting", performance),
        (plot_latency, "latency.png", "latency percentiles per run", performance),
        (plot_accuracy, "accuracy.png", "mAP against the target", runs),
    ]:
        path = out_dir / name
        path.unlink(
            missing_ok=True
        )  # a plot with nothing to show is not left from an earlier report
        if draw(chosen, path):
            plots.append((name, title))
    text = render(runs, results_dir, plots)
    (out_dir / "report.md").write_text(text)
    return text, out_dir / "report.md", [out_dir / name for name, _ in plots]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results", help="the folder holding the run folders")
    parser.add_argument("--out", help="where report.md and the plots go (default: RESULTS/report)")
    parser.add_argument(
        "--runs", default="", help="run folder names or shell patterns, space separated"
    )
    args = parser.parse_args()
    try:
        text, path, plots = report(
            args.results, args.out or Path(args.results) / "report", args.runs.split()
        )
    except RunError as error:
        sys.exit(f"report: error: {error}")
    print(text)
    print(f"report: {path}" + "".join(f"\nplot: {plot}" for plot in plots))


if __name__ == "__main__":
    main()
