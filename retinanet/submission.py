"""An MLPerf Inference v5.1 submission tree from run folders, checked by upstream's checker.

From the chosen runs (a performance run per scenario, an accuracy run, a TEST01 run per
scenario from `make compliance`), the tree upstream's submission_checker.py reads:

    <DIVISION>/<ORG>/systems/<SYSTEM>.json
    <DIVISION>/<ORG>/results/<SYSTEM>/retinanet/<scenario>/accuracy/...
    <DIVISION>/<ORG>/results/<SYSTEM>/retinanet/<scenario>/performance/run_1/...
    <DIVISION>/<ORG>/compliance/<SYSTEM>/retinanet/<scenario>/TEST01/...
    <DIVISION>/<ORG>/measurements/<SYSTEM>/retinanet/<scenario>/{user.conf,README.md,<impl>.json}
    <DIVISION>/<ORG>/code/retinanet/<impl>/  (the project and upstream commits, the patches)
    <DIVISION>/<ORG>/calibration.md  (closed division)

then upstream's truncate_accuracy_log.py (the full accuracy logs go to a backup folder
beside the tree) and submission_checker.py --version v5.1, whose verdict is printed with its
errors grouped. System fields that cannot be detected are filled with TO_FILL and listed;
SYSTEM_JSON gives them.

    python -m retinanet.submission --results DIR --runs 'RUN...' --org ORG --system SYSTEM \\
        --division open|closed --category datacenter|edge --out DIR [--system-json FILE]
    python -m retinanet.submission --check TREE --org ORG    the checker alone, on a tree
"""

import argparse
import datetime
import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from retinanet import OFFICIAL_MODELS, UPSTREAM, machine, rules
from retinanet.files import write_json
from retinanet.patch_series import PATCH_DIR, series
from retinanet.runs import RunError, find

TOOLS = UPSTREAM / "tools" / "submission"
MODEL = rules.MODEL
TO_FILL = "TO_FILL"
DIVISIONS = ("closed", "open")
CATEGORIES = ("datacenter", "edge")
PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACCURACY_FILES = PERF_FILES + ("mlperf_log_accuracy.json", "accuracy.txt")
# the checker's words, grouped by what they are about
GROUPS = [
    ("run length", r"Test duration|min_duration"),
    ("sample and query counts", r"performance_sample_count|samples per query|Query Count"),
    ("accuracy image count", r"does not cover all dataset"),
    ("RNG seeds", r"rng_seed"),
    ("latency and early stopping", r"[Ll]atency constraint|Early stopping"),
    ("accuracy", r"accuracy not met|accuracy not valid|not hash value"),
    ("compliance (TEST01)", r"Compliance test|[Cc]ompliance .*check"),
    ("required scenarios", r"required scenarios|neither required nor optional"),
    (
        "system fields",
        r"field \S+ is missing|meaningful|invalid status|invalid system type|has submitter|"
        r"has division",
    ),
    (
        "tree structure and files",
        r"file list mismatch|is missing|missing code_dir|no measurement_dir|no system_desc|"
        r"empty directories|contains files|invalid division|calibration|no compliance dir|"
        r"Missing TEST|broken symbolic|git unfriendly|spaces in their names|no accuracy\.txt|"
        r"not truncated",
    ),
    ("results the errors above void", r"has issues|NoResults|is OK but accuracy|SUMMARY"),
]


class SubmissionError(Exception):
    pass


# -- choosing the runs -----------------------------------------------------------------------


def choose(runs):
    """{scenario: {"performance": run, "accuracy": run, "compliance": run or None}}."""
    problems = [
        f"{run.name} did not complete ({run.status})" for run in runs if run.status != "completed"
    ]
    if problems:
        raise SubmissionError("; ".join(problems))
    perf, tests, accuracy = {}, {}, {}
    for run in runs:
        scenario = run.scenario
        if run.mode == "accuracy":
            accuracy.setdefault(scenario, []).append(run)
        elif "compliance" in run.record:
            tests.setdefault(scenario, []).append(run)
        else:
            perf.setdefault(scenario, []).append(run)
    if not perf:
        raise SubmissionError("RUNS holds no performance run: name one per scenario")
    if not accuracy:
        raise SubmissionError("RUNS holds no accuracy run: 'make eval', then name it in RUNS")
    chosen = {}
    for scenario, found in perf.items():
        for kind, runs_ in (("performance", found), ("TEST01", tests.get(scenario, []))):
            if len(runs_) > 1:
                raise SubmissionError(
                    f"{len(runs_)} {kind} runs for {scenario} in RUNS "
                    f"({', '.join(r.name for r in runs_)}): name one"
                )
        # an accuracy run of the scenario, else the one accuracy run there is
        own = accuracy.get(scenario) or sum(accuracy.values(), [])
        if len(own) > 1:
            raise SubmissionError(
                f"{len(own)} accuracy runs could serve {scenario} "
                f"({', '.join(r.name for r in own)}): name one"
            )
        test = (tests.get(scenario) or [None])[0]
        if test is not None and not (test.path / "TEST01").is_dir():
            raise SubmissionError(f"{test.name} has no TEST01/: its verification did not run")
        chosen[scenario] = {"performance": found[0], "accuracy": own[0], "compliance": test}
    return chosen


# -- the system description -------------------------------------------------------------------


def this_host():
    """What this machine tells about itself, when the runs ran here."""
    facts = {}
    memory, sockets, cores = machine.memory_total(), machine.sockets(), machine.cores_per_socket()
    if memory:
        facts["host_memory_capacity"] = f"{memory / 2**30:.0f} GB"
    if sockets and cores:
        facts["host_processors_per_node"] = str(sockets)
        facts["host_processor_core_count"] = str(cores)
    return facts


def system_description(org, system, division, category, perf, given):
    """systems/<SYSTEM>.json: what run.json knows, what this host knows when the run ran here,
    what SYSTEM_JSON gives; every field the checker needs and none of those gave: TO_FILL."""
    required = rules.checker().SYSTEM_DESC_REQUIRED_FIELDS
    meaningful = set(rules.checker().SYSTEM_DESC_MEANINGFUL_RESPONSE_REQUIRED_FIELDS)
    host = perf.record.get("host") or {}
    versions = perf.record.get("versions") or {}
    gpu = perf.settings.get("device") == "gpu"
    gpus = host.get("gpus") or []
    software = [
        f"{name} {versions[name]}"
        for name in ("python", "torchvision", "mlcommons-loadgen", "onnxruntime", "onnxruntime-gpu")
        if name in versions
    ]
    if gpu and host.get("cuda"):
        software.append(f"CUDA {host['cuda']}")
    upstream = perf.record.get("upstream") or {}
    project = perf.record.get("project") or {}
    detected = {
        "division": division,
        "submitter": org,
        "system_type": category,
        "system_name": system,
        "number_of_nodes": "1",
        "host_processor_model_name": host.get("cpu"),
        "framework": f"PyTorch {versions['torch']}" if "torch" in versions else None,
        "operating_system": host.get("platform"),
        "other_software_stack": ", ".join(software),
        "accelerators_per_node": str(len(gpus)) if gpu else "0",
        "accelerator_model_name": gpus[0] if gpu and gpus else "N/A",
        "sw_notes": (
            f"retinanet overlay {str(project.get('commit'))[:12]} on mlcommons/inference "
            f"{str(upstream.get('commit'))[:12]} with {len(upstream.get('patches', []))} patches"
        ),
    }
    if not gpu:
        for field in required:
            if field.startswith("accelerator"):
                detected.setdefault(field, "N/A")
        detected["accelerators_per_node"] = "0"
        detected["accelerator_model_name"] = "N/A"
    if host.get("name") == platform.node():
        detected.update(this_host())
    description = {}
    to_fill = []
    for field in required:
        value = given.get(field, detected.get(field))
        if value in (None, ""):
            if field in meaningful or field == "status":
                value = TO_FILL
                to_fill.append(field)
            else:
                value = ""
        description[field] = value
    if "status" in to_fill:  # the checker takes only available, preview or rdi
        description["status"] = "available"
    description.update({k: v for k, v in given.items() if k not in description})
    return description, to_fill


# -- the tree ---------------------------------------------------------------------------------


def copy_files(src, dst, names):
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (src / name).is_file():
            raise SubmissionError(f"{src / name} not found: the run folder is incomplete")
        shutil.copy2(src / name, dst / name)


def implementation(run):
    settings = run.settings
    return f"{settings.get('backend', 'pytorch')}-{settings.get('device', 'cpu')}"


def implementation_json(run):
    """measurements' <SYSTEM>_<impl>_<scenario>.json: the fields the checker reads."""
    precision = run.settings.get("precision", "fp32")
    md5 = (run.record.get("model") or {}).get("md5")
    official = [spec for spec in OFFICIAL_MODELS.values() if spec["md5"] == md5]
    weights = (
        f"{official[0]['file']} (zenodo record {official[0]['record']}, MD5 {md5})"
        if official
        else f"{Path(run.settings.get('model', '?')).name} (MD5 {md5}; not the official model)"
    )
    return {
        "input_data_types": "fp32",  # the harness feeds float32 images
        "retraining": "No",
        "starting_weights_filename": weights,
        "weight_data_types": precision,
        "weight_transformations": (
            "none" if precision == "fp32" else f"none; computed in {precision} under autocast"
        ),
    }


def readme(scenario, runs, command):
    lines = [
        f"# RetinaNet {scenario}",
        "",
        "Made with the retinanet overlay (mlcommons/inference v5.1.1 reference harness and the "
        "patch series in code/). Each run repeats with its command, from the project's folder:",
        "",
    ]
    for kind, run in runs.items():
        if run is None:
            continue
        lines += [f"## {kind}: {run.name}", "", "```sh", run.record.get("rerun", "?"), "```", ""]
    lines += ["## this tree", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def code_readme(run):
    project = run.record.get("project") or {}
    upstream = run.record.get("upstream") or {}
    lines = [
        "# Code",
        "",
        f"- project: retinanet overlay, commit {project.get('commit')}"
        + (" (with uncommitted changes)" if project.get("dirty") else ""),
        f"- upstream: mlcommons/inference commit {upstream.get('commit')} (tag v5.1.1), "
        "vision/classification_and_detection",
        f"- patch series: {len(upstream.get('patches', []))} patches, in patches/ here, "
        "applied in order:",
        "",
    ]
    lines += [f"  - {p['name']} (sha256 {p['sha256']})" for p in upstream.get("patches", [])]
    return "\n".join(lines) + "\n"


CALIBRATION = """# Calibration

No calibration and no quantization: the official FP32 weights
(resnext50_32x4d_fpn.pth) run as they are. A run in bf16 or fp16 computes under PyTorch
autocast from those weights, with no calibration data; each accuracy run reports its mAP
over the whole dataset, and an accuracy guard compares it with FP32.
"""


def build(tree, org, system, division, category, chosen, given, command):
    base = tree / division / org
    perf_any = next(iter(chosen.values()))["performance"]
    description, to_fill = system_description(org, system, division, category, perf_any, given)
    (base / "systems").mkdir(parents=True)
    write_json(base / "systems" / f"{system}.json", description)
    for scenario, runs in chosen.items():
        perf, accuracy, test = runs["performance"], runs["accuracy"], runs["compliance"]
        results = base / "results" / system / MODEL / scenario
        copy_files(perf.path, results / "performance" / "run_1", PERF_FILES)
        copy_files(accuracy.path, results / "accuracy", ACCURACY_FILES)
        if test is not None:
            shutil.copytree(
                test.path / "TEST01", base / "compliance" / system / MODEL / scenario / "TEST01"
            )
        impl = implementation(perf)
        measurements = base / "measurements" / system / MODEL / scenario
        copy_files(perf.path, measurements, ["user.conf"])
        (measurements / "README.md").write_text(
            readme(scenario, {"performance": perf, "accuracy": accuracy, "TEST01": test}, command)
        )
        write_json(measurements / f"{system}_{impl}_{scenario}.json", implementation_json(perf))
        code = base / "code" / MODEL / impl
        if not code.exists():
            (code / "patches").mkdir(parents=True)
            (code / "README.md").write_text(code_readme(perf))
            for patch in series(PATCH_DIR):
                shutil.copy2(patch, code / "patches" / patch.name)
    if division == "closed":
        (base / "calibration.md").write_text(CALIBRATION)
    return to_fill


# -- upstream's tools -------------------------------------------------------------------------


def truncate(tree, org, backup, log):
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "truncate_accuracy_log.py"),
            "--input",
            str(tree.resolve()),
            "--submitter",
            org,
            "--backup",
            str(backup.resolve()),
        ],
        capture_output=True,
        text=True,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SubmissionError(f"truncate_accuracy_log.py failed; see {log}")


def check(tree, org, out):
    """submission_checker.py --version v5.1 on the tree: (exit status, its output)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "submission_checker.py"),
            "--input",
            str(tree.resolve()),
            "--version",
            rules.VERSION,
            "--submitter",
            org,
            "--csv",
            str((out / "summary.csv").resolve()),
        ],
        cwd=TOOLS,  # it imports log_parser from there
        capture_output=True,
        text=True,
    )
    text = proc.stdout + proc.stderr
    (out / "checker.log").write_text(text)
    return proc.returncode, text


def grouped(text):
    """The checker's ERROR lines, grouped: {group: [line...]}, in GROUPS' order."""
    groups = {}
    for line in text.splitlines():
        # '[time file:line ERROR] message' (its logging), or logging's default 'ERROR:main:...'
        match = re.match(r"^\[[^\]]* ERROR\] (.*)$|^ERROR:[^:]*:(.*)$", line)
        if not match:
            continue
        message = (match.group(1) or match.group(2)).strip()
        name = next((name for name, pattern in GROUPS if re.search(pattern, message)), "other")
        groups.setdefault(name, []).append(message)
    order = [name for name, _ in GROUPS] + ["other"]
    return {name: groups[name] for name in order if name in groups}


def summary_line(text):
    found = re.findall(r"SUMMARY: .*", text)
    return found[-1] if found else "no SUMMARY line: the checker stopped early (see checker.log)"


def report(status, text, tree):
    lines = [
        f"checker (upstream submission_checker.py --version {rules.VERSION}): {summary_line(text)}"
    ]
    for name, messages in grouped(text).items():
        lines.append(f"  {name}: {len(messages)}")
        lines += [f"    - {m.replace(str(tree.resolve()) + '/', '')}" for m in messages]
    return lines


# -- the command ------------------------------------------------------------------------------


def make_command(args):
    words = ["make", "submission", f"ORG={args.org}", f"SYSTEM={args.system}"]
    words += [f"DIVISION={args.division}", f"CATEGORY={args.category}", f"RUNS={args.runs}"]
    words += [f"RESULTS_DIR={args.results}"]
    return shlex.join(words)


def name_problems(args):
    problems = []
    for flag, value in (("ORG", args.org), ("SYSTEM", args.system)):
        if not value or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
            problems.append(
                f"{flag}={value!r}: give a name of letters, digits, '.', '_', '+' or '-' (the "
                "checker refuses spaces and leading dots)"
            )
    if not args.runs.split():
        problems.append("RUNS is empty: name the performance, accuracy and TEST01 runs")
    return problems


def arguments():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results")
    parser.add_argument(
        "--runs", default="", help="run folders, names or patterns, space-separated"
    )
    parser.add_argument("--org", default="")
    parser.add_argument("--system", default="")
    parser.add_argument("--division", default="open", choices=DIVISIONS)
    parser.add_argument("--category", default="datacenter", choices=CATEGORIES)
    parser.add_argument("--out", default="results/submission")
    parser.add_argument("--system-json", help="a JSON file of system fields")
    parser.add_argument("--check", metavar="TREE", help="only run the checker on this tree")
    return parser.parse_args()


def run_lines(chosen):
    """The run chosen for each scenario and kind, and its v5.1 verdict."""
    lines = []
    for scenario, runs in chosen.items():
        for kind, run in runs.items():
            if run is None:
                lines.append(f"  {scenario} {kind}: none (make compliance RUN=...)")
                continue
            verdict = run.summary.get("rules") or {}
            said = (
                "meets the v5.1 run rules"
                if verdict.get("meets")
                else f"misses {len(verdict.get('missed', []))} v5.1 run rules"
            )
            if verdict.get("demo"):
                said = "DEMO RUN, " + said
            lines.append(f"  {scenario} {kind}: {run.name} ({said})")
    return lines


def record_submission(out, args, tree, chosen, to_fill, status, text):
    """submission.json: the command, the tree, the runs in it and the checker's verdict."""
    write_json(
        out / "submission.json",
        {
            "command": make_command(args),
            "tree": str(tree),
            "runs": {
                s: {k: r.name if r else None for k, r in runs.items()} for s, runs in chosen.items()
            },
            "to_fill": to_fill,
            "checker": {"status": status, "summary": summary_line(text), "errors": grouped(text)},
        },
    )


def main():
    args = arguments()
    if args.check:
        tree = Path(args.check)
        status, text = check(tree, args.org, tree.parent)
        print("\n".join(report(status, text, tree)))
        return status

    problems = name_problems(args)
    if problems:
        sys.exit("\n".join(f"submission: error: {p}" for p in problems))
    try:
        given = json.loads(Path(args.system_json).read_text()) if args.system_json else {}
        chosen = choose(find(args.results, args.runs.split()))
    except (RunError, SubmissionError, OSError, ValueError) as error:
        sys.exit(f"submission: error: {error}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"{stamp}-{args.org}-{args.system}-{args.division}"
    tree = out / "submission"
    try:
        to_fill = build(
            tree,
            args.org,
            args.system,
            args.division,
            args.category,
            chosen,
            given,
            make_command(args),
        )
        truncate(tree, args.org, out / "accuracy-logs", out / "truncate.log")
    except SubmissionError as error:
        sys.exit(f"submission: error: {error}")
    status, text = check(tree, args.org, out)

    lines = [f"submission: {tree}"] + run_lines(chosen)
    if to_fill:
        lines.append(
            f"  systems/{args.system}.json: {len(to_fill)} fields not detected, set to {TO_FILL}: "
            f"{', '.join(to_fill)} (give them in SYSTEM_JSON=<file>.json)"
        )
    lines += report(status, text, tree)
    lines += [f"checker log: {out / 'checker.log'}", f"full accuracy logs: {out / 'accuracy-logs'}"]
    record_submission(out, args, tree, chosen, to_fill, status, text)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
