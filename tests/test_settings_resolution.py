"""Settings resolution without a run (retinanet/settings_auto.py): defaults, what `auto` becomes,
one clear line per bad value, and run.json's `rerun`, which must repeat a run exactly."""

import json
import os
import shlex

import pytest
import torch
from helpers import DEMO_USER_CONF, SAVED_RUNS

from retinanet import HARNESS, preflight
from retinanet.settings import SETTINGS, record, requested_from
from retinanet.settings_auto import RULES, resolve
from retinanet.settings_outputs import harness_args, rerun_command, rerun_words

AUTO = set(RULES)
PATHS = {"DATA_DIR", "MODEL_DIR", "MODEL", "CACHE_DIR", "RESULTS_DIR"}


def test_defaults_resolve_on_this_machine():
    resolved, problems = resolve(requested_from({}))
    assert problems == []
    device = "gpu" if torch.cuda.is_available() else "cpu"
    assert resolved["DEVICE"] == device
    assert resolved["BATCH_SIZE"] == {"cpu": "1", "gpu": "16"}[device]
    assert resolved["THREADS"] == {"cpu": "1", "gpu": "2"}[device]
    assert resolved["PRECISION"] in ({"fp32", "bf16"} if device == "cpu" else {"fp16"})
    assert resolved["CHANNELS_LAST"] == "1" and resolved["FREEZE"] == "0"
    assert resolved["STALL_TIMEOUT"] == "auto", "the harness derives it as it runs"
    assert resolved["MODEL"] == os.path.join(os.path.abspath("models"), "resnext50_32x4d_fpn.pth")
    assert resolved["USER_CONF"] == str(HARNESS / "user.conf")
    for name in PATHS:
        assert os.path.isabs(resolved[name]), name
    assert [resolved[s.name] for s in SETTINGS if s.name not in AUTO | PATHS | {"USER_CONF"}] == [
        s.default for s in SETTINGS if s.name not in AUTO | PATHS | {"USER_CONF"}
    ]


def test_an_empty_value_takes_the_default():
    requested = requested_from({"SCENARIO": "", "WARMUP": "", "BACKEND": "onnxruntime"})
    assert requested["SCENARIO"] == "Offline" and requested["WARMUP"] == "5"
    assert requested["BACKEND"] == "onnxruntime"


def test_onnxruntime_runs_upstreams_profile():
    resolved, problems = resolve({"DEVICE": "gpu", "BACKEND": "onnxruntime"})
    assert problems == []
    assert (resolved["BATCH_SIZE"], resolved["PRECISION"], resolved["CHANNELS_LAST"]) == (
        "1",
        "fp32",
        "0",
    )
    assert resolved["MODEL"].endswith("/resnext50_32x4d_fpn.onnx")
    _, problems = resolve({"DEVICE": "cpu", "BACKEND": "onnxruntime", "BATCH_SIZE": "4"})
    assert problems == [
        "BATCH_SIZE=4 is for BACKEND=pytorch: BACKEND=onnxruntime runs BATCH_SIZE=1; "
        "leave BATCH_SIZE on auto"
    ]


@pytest.mark.parametrize(
    "name, value, line",
    [
        (
            "SCENARIO",
            "Batch",
            "SCENARIO=Batch is not one of: Offline, Server, SingleStream, MultiStream",
        ),
        ("IMAGE_CACHE", "auto", "IMAGE_CACHE=auto is not one of: none, uint8, float32"),
        ("QPS", "0", "QPS=0 is not a number above 0"),
        ("QPS", "nan", "QPS=nan is not a number above 0"),
        ("QPS", "fast", "QPS=fast is not a number above 0"),
        ("COUNT", "0", "COUNT=0 is not a whole number, 1 or more"),
        ("BATCH_SIZE", "2.5", "BATCH_SIZE=2.5 is not a whole number, 1 or more"),
        ("STALL_TIMEOUT", "-1", "STALL_TIMEOUT=-1 is not a number above 0"),
        ("MODEL_FACTORY", "models.py", "MODEL_FACTORY=models.py is not package.module:function"),
        (
            "HARNESS_ARGS",
            '--x "y',
            'HARNESS_ARGS=--x "y does not split into words (No closing quotation)',
        ),
        ("USER_CONF", "no/such.conf", "USER_CONF=no/such.conf not found"),
    ],
)
def test_a_bad_value_is_one_line_that_says_what_it_takes(name, value, line):
    _, problems = resolve({"DEVICE": "cpu", name: value})
    assert problems == [line]


def test_every_bad_value_at_once_in_table_order():
    _, problems = resolve({"QPS": "-2", "SCENARIO": "Batch", "WARMUP": "many"})
    assert [problem.split("=")[0] for problem in problems] == ["SCENARIO", "QPS", "WARMUP"]
    assert all("\n" not in problem for problem in problems)


@pytest.mark.parametrize(
    "text, says",
    [
        ("*.Offline.target_qps=1\n", "is not 'model.scenario.key = value' with spaces around '='"),
        ("*.Batch.target_qps = 1\n", "'*.Batch.target_qps' is not model.scenario.key"),
        ("*.Offline.target_qps = lots\n", "the value 'lots' is not a number"),
    ],
)
def test_a_user_conf_line_loadgen_would_ignore_is_named_by_number(tmp_path, text, says):
    conf = tmp_path / "user.conf"
    conf.write_text("# a comment, then a good line\n*.Offline.min_duration = 1000\n" + text)
    _, problems = resolve({"DEVICE": "cpu", "USER_CONF": str(conf)})
    assert len(problems) == 1
    assert problems[0].startswith(f"USER_CONF={conf} line 3 ({text.strip()!r})")
    assert says in problems[0]


def test_preflight_stops_with_one_line_per_problem_before_any_run_folder(tmp_path):
    env = dict(os.environ, SCENARIO="Batch", QPS="0", RESULTS_DIR=str(tmp_path / "results"))
    with pytest.raises(SystemExit) as stop:
        preflight.check(env)
    assert str(stop.value.code).splitlines() == [
        "error: SCENARIO=Batch is not one of: Offline, Server, SingleStream, MultiStream",
        "error: QPS=0 is not a number above 0",
    ]
    assert not (tmp_path / "results").exists()


def rerun_settings(command):
    """The KEY=VALUE words of a rerun command, as make would hand them to run_eval.sh."""
    words = shlex.split(command)
    assert words[0] == "make" and words[1] in ("eval", "perf"), command
    return dict(word.split("=", 1) for word in words[2:])


def test_rerun_repeats_every_setting_as_resolved(tmp_path):
    data = tmp_path / "my data, ünïcode"
    requested = {
        "DATA_DIR": str(data),
        "SCENARIO": "Server",
        "QPS": "0.50",
        "USER_CONF": str(DEMO_USER_CONF),
        "HARNESS_ARGS": "--samples-per-query 8",
    }
    resolved, problems = resolve(requested)
    assert problems == []
    command = rerun_command("performance", {"mode": "performance", **record(resolved)})
    again = rerun_settings(command)
    assert again["DATA_DIR"] == str(data) and again["QPS"] == "0.5"
    assert again["HARNESS_ARGS"] == "--samples-per-query 8"
    # auto resolved once, where the run ran: the rerun does not choose again
    assert {again[name] for name in AUTO - {"STALL_TIMEOUT"}}.isdisjoint({"auto", ""})
    assert resolve(again) == (resolved, [])


@pytest.mark.parametrize("run_dir", sorted(SAVED_RUNS.iterdir()), ids=lambda p: p.name)
def test_saved_runs_rerun_what_they_recorded(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    recorded = run["settings"]
    again = rerun_settings(run["rerun"])
    assert run["rerun"].startswith("make eval " if recorded["mode"] == "accuracy" else "make perf ")
    # a record made before a setting existed (WORKERS, MODEL_IMPL, COMPILE) lacks it: unset then
    assert again == {s.name: recorded[s.key] for s in SETTINGS if recorded.get(s.key)}
    # ... and a rerun (make compliance's) runs what such runs ran, not today's auto: these
    # records predate the native model, so TorchScript without NNPACK
    predates = {s.name: s.before for s in SETTINGS if s.before and s.key not in recorded}
    assert predates == {"MODEL_IMPL": "torchscript", "NNPACK": "0"}
    assert rerun_settings(shlex.join(["make", "perf", *rerun_words(run)])) == again | predates
    for name, value in run["requested"].items():
        if value == "auto" and name != "STALL_TIMEOUT":
            assert again[name] not in ("", "auto"), f"{name}=auto is not in the rerun as resolved"
    assert rerun_command(recorded["mode"], recorded) == run["rerun"]
    assert (
        harness_args({s.name: recorded.get(s.key, "") for s in SETTINGS})
        == run["command"][4 : run["command"].index("--cache_dir")]
    )
