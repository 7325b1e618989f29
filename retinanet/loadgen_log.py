"""Read what LoadGen wrote in a run folder: mlperf_log_detail.txt and mlperf_log_summary.txt.
The run folder's part for LoadGen (run_folder.py): nothing else parses LoadGen's text.

The detail log (one `:::MLLOG {json}` line per entry) gives the numbers, typed; the summary
gives LoadGen's own words for every reason a result is INVALID and for early stopping. The
two are checked against each other. A log that is missing, truncated, or not LoadGen's
raises LogError with a message that names the file and what is wrong.

    python -m retinanet.loadgen_log RUN_DIR     prints the parsed result as JSON
"""

import datetime
import json
import re
import sys
from pathlib import Path

from retinanet.run_folder import LOADGEN_DETAIL, LOADGEN_SUMMARY, LogError

MLLOG = ":::MLLOG "
# The version whose logs the parser is tested on; others are parsed but flagged.
TESTED_VERSION = "5.1.1"

# result_<P>_percentile_latency_ns -> p<P>: 50.00 -> p50, 99.90 -> p99.9
PERCENTILE_KEY = re.compile(r"^result_(\d+\.\d+)_percentile_(per_query_)?latency_ns$")
ENDED = re.compile(r"^(No|\d+) (warnings?|errors?|ERRORS?) encountered")
# LoadGen prints a double that is not a number as C does (nan, -nan, inf): not JSON.
NOT_A_NUMBER = re.compile(r'("value": )-?(nan|inf)\b')


def read_detail(run_dir):
    """Entries of the detail log as dicts (key, value, metadata), in order."""
    path = Path(run_dir) / LOADGEN_DETAIL
    if not path.is_file():
        raise LogError(f"{path} not found: LoadGen did not start in this run (see harness.log)")
    text = path.read_text(errors="replace")
    if not text.strip():
        raise LogError(f"{path} is empty: LoadGen was stopped before it wrote anything")
    lines = text.split("\n")
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.startswith(MLLOG):
            raise LogError(
                f"{path}:{number} is not a LoadGen log line (no '{MLLOG.strip()}'): "
                f"{line[:60]!r}; is this an MLPerf LoadGen detail log?"
            )
        try:
            entry = json.loads(NOT_A_NUMBER.sub(r"\1null", line[len(MLLOG) :]))
            if not isinstance(entry, dict) or "key" not in entry or "value" not in entry:
                raise ValueError("an MLLOG entry has a key and a value")
        except ValueError:
            last = number == len(lines) or all(not rest.strip() for rest in lines[number:])
            if last:
                raise LogError(
                    f"{path} is truncated: line {number} stops mid-entry "
                    "(the run was interrupted or the file was cut)"
                ) from None
            raise LogError(f"{path}:{number} is not a valid MLLOG entry: {line[:60]!r}") from None
        entries.append(entry)
    keys = {entry["key"] for entry in entries}
    if "loadgen_version" not in keys:
        raise LogError(f"{path} has no loadgen_version entry: not an MLPerf LoadGen detail log")
    return entries


def read_summary(run_dir):
    path = Path(run_dir) / LOADGEN_SUMMARY
    if not path.is_file():
        raise LogError(f"{path} not found: LoadGen did not finish this run (see harness.log)")
    lines = path.read_text(errors="replace").splitlines()
    # LoadGen writes the warning and error counts last, when the test has ended.
    if not any(ENDED.match(line) and "rror" in line.lower() for line in lines[-3:]):
        raise LogError(
            f"{path} is truncated: it does not end with LoadGen's "
            "'... errors encountered' line (the run was interrupted or the file was cut)"
        )
    return lines


def summary_blocks(lines):
    """From the summary: key/value pairs, the 'Recommendations:' bullets and the early
    stopping lines, each bullet as one string."""
    values, blocks, block = {}, {"Recommendations": [], "Early Stopping Result": []}, None
    for line in lines:
        if line.rstrip(":") in blocks and line.endswith(":"):
            block = blocks[line.rstrip(":")]
            continue
        if block is not None:
            if line.startswith(" * "):
                block.append(line[3:].strip())
                continue
            if line.startswith(" ") and block:
                block[-1] += " " + line.strip()
                continue
            block = None
        if " : " in line or ": " in line:
            key, _, value = line.partition(":")
            values[key.strip()] = value.strip()
    return values, blocks


def percentiles(values, per_query=False):
    found = {}
    for key, value in values.items():
        match = PERCENTILE_KEY.match(key)
        if match and bool(match.group(2)) == per_query:
            found["p" + format(float(match.group(1)), "g")] = value
    return dict(sorted(found.items(), key=lambda item: float(item[0][1:])))


def power_time(value):
    return datetime.datetime.strptime(value, "%m-%d-%Y %H:%M:%S.%f")


def messages_of(entries):
    """LoadGen's errors and warnings, as the detail log flags them."""
    found = []
    for entry in entries:
        meta = entry.get("metadata") or {}
        if meta.get("is_error") or meta.get("is_warning"):
            found.append(
                {
                    "kind": "error" if meta.get("is_error") else "warning",
                    "key": entry["key"],
                    "text": str(entry["value"]),
                }
            )
    return found


def check_ended(values, detail_path):
    """The detail log of a test that ended: raises LogError for one cut short."""
    for key in ("effective_scenario", "effective_test_mode"):
        if key not in values:
            raise LogError(
                f"{detail_path} has no {key}: truncated before LoadGen logged its settings"
            )
    if "power_end" not in values:
        raise LogError(
            f"{detail_path} is truncated: no power_end entry, so the test never ended "
            "(the run was interrupted or the file was cut)"
        )
    if values["effective_test_mode"] == "PerformanceOnly" and "num_errors" not in values:
        raise LogError(
            f"{detail_path} is truncated: the performance results end early (no num_errors entry)"
        )


def common_result(values, messages):
    """What every run's result holds, accuracy or performance."""
    version = str(values["loadgen_version"]).split(" @ ")[0]
    duration = None
    if "power_begin" in values:
        seconds = power_time(values["power_end"]) - power_time(values["power_begin"])
        duration = round(seconds.total_seconds(), 3)
    result = {
        "loadgen_version": values["loadgen_version"],
        "test_datetime": values.get("test_datetime"),
        "scenario": values["effective_scenario"],
        "mode": values["effective_test_mode"],
        "duration_s": duration,
        "samples_in_dataset": values.get("qsl_reported_total_count"),
        "scheduled": {
            "queries": values.get("generated_query_count"),
            "samples_per_query": values.get("generated_samples_per_query"),
        },
        "settings": {
            key[len("effective_") :]: value
            for key, value in values.items()
            if key.startswith("effective_")
            and "rng_seed" not in key
            and key not in ("effective_scenario", "effective_test_mode")
        },
        "warnings": sum(m["kind"] == "warning" for m in messages),
        "errors": sum(m["kind"] == "error" for m in messages),
        "messages": messages[:20],
        "parser_notes": [],
    }
    if version != TESTED_VERSION:
        result["parser_notes"].append(
            f"LoadGen {version}: this parser is tested on {TESTED_VERSION} logs; check the figures"
        )
    return result


def check_counts(run_dir, summary_lines, result):
    """The summary's warning and error counts must be the detail log's."""
    counted = {"warnings": 0, "errors": 0}
    for line in summary_lines[-4:]:
        match = ENDED.match(line)
        if match:
            kind = "errors" if "rror" in match.group(2).lower() else "warnings"
            counted[kind] = 0 if match.group(1) == "No" else int(match.group(1))
    for kind in ("warnings", "errors"):
        if counted[kind] != result[kind]:
            raise LogError(
                f"{run_dir / LOADGEN_SUMMARY} counts {counted[kind]} {kind}, {LOADGEN_DETAIL} has "
                f"{result[kind]}: the two logs are not from the same run"
            )


def validity(run_dir, values, summary_values, blocks):
    """VALID or INVALID, the constraints LoadGen checked, and its reasons in its own words."""
    valid = values.get("result_validity")
    if summary_values.get("Result is") != valid:
        raise LogError(
            f"{run_dir / LOADGEN_SUMMARY} says 'Result is : {summary_values.get('Result is')}', "
            f"{LOADGEN_DETAIL} says {valid}: the two logs are not from the same run"
        )
    constraints = {
        "min_duration": values.get("result_min_duration_met"),
        "min_queries": values.get("result_min_queries_met"),
        "early_stopping": values.get("early_stopping_met"),
    }
    if "result_perf_constraints_met" in values:
        constraints["performance"] = values["result_perf_constraints_met"]
    reasons = list(blocks["Recommendations"])
    if constraints["early_stopping"] is False:
        reasons.append("Early stopping not satisfied: " + " ".join(blocks["Early Stopping Result"]))
    if valid == "INVALID" and not reasons:
        reasons.append(values.get("result_invalid_reason", "").strip() or "LoadGen gave no reason")
    return valid, constraints, reasons


THROUGHPUT_KEYS = {
    "result_samples_per_second": "samples_per_second",
    "result_completed_samples_per_sec": "completed_samples_per_second",
    "result_scheduled_samples_per_sec": "scheduled_samples_per_second",
    "result_qps_with_loadgen_overhead": "qps_with_loadgen_overhead",
    "result_qps_without_loadgen_overhead": "qps_without_loadgen_overhead",
}


def latencies(values):
    """Per-sample latencies, and per-query ones where LoadGen logs them (MultiStream)."""
    latency = {
        "min": values.get("result_min_latency_ns"),
        "max": values.get("result_max_latency_ns"),
        "mean": values.get("result_mean_latency_ns"),
        **percentiles(values),
    }
    query_latency = percentiles(values, per_query=True)
    if query_latency:
        query_latency = {
            "min": values.get("result_min_query_latency_ns"),
            "max": values.get("result_max_query_latency_ns"),
            "mean": values.get("result_mean_query_latency_ns"),
            **query_latency,
        }
    return latency, query_latency or None


def headline(scenario, values, throughput, latency, query_latency):
    """The figure MLPerf reports for the scenario, as the summary's headline prints it."""
    if scenario == "Offline":
        return {
            "name": "samples per second",
            "value": throughput.get("samples_per_second"),
            "unit": "samples/s",
        }
    if scenario == "Server":
        return {
            "name": "completed samples per second",
            "value": throughput.get("completed_samples_per_second"),
            "unit": "samples/s",
        }
    percentile = format(100 * values.get("effective_target_latency_percentile", 0.9), "g")
    source = (query_latency or {}) if scenario == "MultiStream" else latency
    return {
        "name": f"p{percentile} latency" + (" per query" if query_latency else ""),
        "value": source.get(f"p{percentile}"),
        "unit": "ns",
    }


def performance_result(run_dir, values, summary_lines):
    """What a performance run measured, and whether LoadGen calls it VALID."""
    summary_values, blocks = summary_blocks(summary_lines)
    valid, constraints, reasons = validity(run_dir, values, summary_values, blocks)
    throughput = {name: values[key] for key, name in THROUGHPUT_KEYS.items() if key in values}
    latency, query_latency = latencies(values)
    return {
        "result": valid,
        "constraints": constraints,
        "reasons": reasons,
        "metric": headline(
            values["effective_scenario"], values, throughput, latency, query_latency
        ),
        "throughput": throughput,
        "latency_ns": latency,
        "query_latency_ns": query_latency,
        "queries": values.get("result_query_count"),
        "overlatency_queries": values.get("result_overlatency_query_count"),
        "early_stopping": {
            "met": constraints["early_stopping"],
            "lines": blocks["Early Stopping Result"],
            "latency_ss_ns": values.get("early_stopping_latency_ss"),
            "latency_ms_ns": values.get("early_stopping_latency_ms"),
        },
    }


def parse(run_dir):
    """The LoadGen result of a run folder as a dict; raises LogError."""
    run_dir = Path(run_dir)
    entries = read_detail(run_dir)
    summary_lines = read_summary(run_dir)
    values = {entry["key"]: entry["value"] for entry in entries}
    check_ended(values, run_dir / LOADGEN_DETAIL)
    result = common_result(values, messages_of(entries))
    check_counts(run_dir, summary_lines, result)
    if result["mode"] != "PerformanceOnly":
        result["result"] = None  # LoadGen judges only performance runs; accuracy is the mAP
        return result
    result.update(performance_result(run_dir, values, summary_lines))
    return result


# The summary's lines a performance run ends its output with (result.txt)
HEADLINE = re.compile(
    r"^(Scenario|Mode|Result is|Samples per second|Completed samples per second|Scheduled "
    r"samples per second|[0-9.]+ percentile latency|Mean latency|  (Min duration|Min queries|"
    r"Early stopping) satisfied|Early Stopping Result)"
)


def headline_lines(run_dir):
    """LoadGen's own lines for the result, from its summary; raises LogError."""
    return [line for line in read_summary(run_dir) if HEADLINE.match(line)]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python -m retinanet.loadgen_log RUN_DIR")
    try:
        print(json.dumps(parse(sys.argv[1]), indent=2))
    except LogError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
