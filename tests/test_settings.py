"""One table of settings (retinanet/settings.py) behind make's defaults and help, the README,
validation, the harness's flags, run.json and its rerun, and compare: runs repeat exactly
and compare truthfully. Through make, the real harness and LoadGen, with the oracle."""

import ast
import json
import re
import shlex
import shutil
from pathlib import Path

from helpers import DEMO_USER_CONF, NO_GUARD, PYTHON, make

from retinanet import PROJECT_ROOT, preflight, run_folder, settings, settings_outputs
from retinanet.download_model import CACHE_SUFFIX


def record(run_dir):
    return json.loads((Path(run_dir) / "run.json").read_text())


def test_compare_flags_precision_and_warm_up(run, demo, tmp_path):
    oracle = demo["models"]["oracle"]
    common = (f"USER_CONF={DEMO_USER_CONF}", "COUNT=2", "BATCH_SIZE=1", "THREADS=1")
    _, fp32 = run("perf", demo["data"], oracle, "PRECISION=fp32", "WARMUP=0", *common)
    _, bf16 = run("perf", demo["data"], oracle, "PRECISION=bf16", "WARMUP=5", *common)
    proc = make(
        "compare", f"RESULTS_DIR={tmp_path / 'results'}", f"A={fp32.name}", f"B={bf16.name}"
    )
    assert "differences make this comparison unfair:" in proc.stdout
    assert "  - setting differs, PRECISION: A fp32 / B bf16" in proc.stdout
    assert "  - setting differs, WARMUP: A 0 / B 5" in proc.stdout
    assert "like for like" not in proc.stdout
    report = make(
        "report", f"RESULTS_DIR={tmp_path / 'results'}", f"REPORT_DIR={tmp_path / 'report'}"
    )
    assert re.search(
        rf"^\| {fp32.name} \| Offline \| cpu fp32 batch_size=1 threads=1 count=2 warmup=0 \|",
        report.stdout,
        re.M,
    ), report.stdout
    assert re.search(
        rf"^\| {bf16.name} \| Offline \| cpu bf16 batch_size=1 threads=1 count=2 \|",
        report.stdout,
        re.M,
    ), "WARMUP=5 is the default: not shown"


def test_rerun_of_an_auto_run_repeats_its_settings(run, demo):
    proc, first = run(
        "eval",
        demo["data"],
        demo["models"]["oracle"],
        "COUNT=2",
        "WARMUP=0",
        "PRECISION=auto",
        "BATCH_SIZE=auto",
        "THREADS=auto",
        "CHANNELS_LAST=auto",
        "FREEZE=auto",
        device="auto",
    )
    original = record(first)
    assert original["requested"]["PRECISION"] == "auto" and original["settings"]["precision"] in (
        "fp32",
        "bf16",
    )
    assert (
        original["settings"]["device"] in ("cpu", "gpu") and "DEVICE=auto" not in original["rerun"]
    )
    words = shlex.split(original["rerun"])
    assert words[:2] == ["make", "eval"]
    again = make(words[1], f"PYTHON={PYTHON}", *words[2:], check=True)
    second = run_folder.from_output(again.stdout)
    assert second != first
    assert record(second)["settings"] == original["settings"]
    assert record(second)["rerun"] == original["rerun"]


def test_server_takes_a_fractional_qps(run, demo):
    proc, run_dir = run(
        "perf",
        demo["data"],
        demo["models"]["oracle"],
        "SCENARIO=Server",
        "QPS=0.5",
        "COUNT=2",
        f"USER_CONF={DEMO_USER_CONF}",
    )
    assert record(run_dir)["settings"]["qps"] == "0.5" and "QPS=0.5" in record(run_dir)["rerun"]
    detail = (run_dir / "mlperf_log_detail.txt").read_text()
    assert re.search(r'"key": "requested_server_target_qps", "value": 0\.5[,}]', detail), [
        line for line in detail.splitlines() if "target_qps" in line
    ]


def test_paths_with_spaces_and_letters_beyond_ascii(run, demo, tmp_path):
    data = tmp_path / "d space ü" / "data"
    shutil.copytree(demo["data"], data)
    model = tmp_path / "m space ü" / "oracle model.pth"
    model.parent.mkdir()
    shutil.copy(demo["models"]["oracle"], model)
    results = tmp_path / "r space ü"
    proc = make(
        "eval",
        f"DATA_DIR={data}",
        f"MODEL={model}",
        f"RESULTS_DIR={results}",
        f"CACHE_DIR={tmp_path / 'c space ü'}",
        "DEVICE=cpu",
        "COUNT=100000",
        "WARMUP=0",
        NO_GUARD,
    )
    assert (
        f"warning: COUNT=100000 is more than the 12 images in DATA_DIR={data}: the run uses all 12"
        in proc.stdout
    )
    assert "mAP 100.000% on 12 images" in proc.stdout
    run_dir = run_folder.from_output(proc.stdout)
    assert run_dir.parent == results
    settings_ = record(run_dir)["settings"]
    assert (
        settings_["data_dir"] == str(data)
        and settings_["model"] == str(model)
        and settings_["count"] == "12"
    )


def test_only_the_official_model_of_a_format_passes_without_a_warning(demo, tmp_path):
    onnx = tmp_path / "resnext50_32x4d_fpn.onnx"
    onnx.write_bytes(b"an ONNX model")
    warning = preflight.model_warnings(onnx, "onnxruntime")[0]
    assert (
        "is not the official resnext50_32x4d_fpn.onnx (MD5 " in warning
        and "official 4544f4e5" in warning
    )
    # the MD5 cache beside a model, as make model leaves it, standing in for the official file
    stat = onnx.stat()
    (tmp_path / (onnx.name + CACHE_SUFFIX)).write_text(
        json.dumps(
            {
                "file": onnx.name,
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "md5": "4544f4e56e0a4684215831cc937ea45c",
            }
        )
    )
    assert preflight.model_warnings(onnx, "onnxruntime") == []
    assert (
        "is not the official resnext50_32x4d_fpn.pth"
        in preflight.model_warnings(onnx, "pytorch")[0]
    )


def test_make_help_and_the_readme_document_every_setting():
    page = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    assert settings_outputs.settings_page_text(page) == page, (
        "docs/settings.md's table is out of date: run 'python3 -m retinanet.settings_outputs docs'"
    )
    help_text = make("help").stdout
    for setting in settings.SETTINGS:
        assert re.search(
            rf"^  .*{setting.name}\b.* {re.escape(setting.doc)} \(default: "
            rf"{re.escape(setting.default or 'empty')}\)$",
            help_text,
            re.M,
        ), setting.name


def test_each_default_is_written_once():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    run_eval = (PROJECT_ROOT / "run_eval.sh").read_text()
    for setting in settings.SETTINGS:
        assert not re.search(rf"^{setting.name} \?=", makefile, re.M), (
            f"Makefile sets {setting.name}'s default"
        )
        assert f"${{{setting.name}:-" not in run_eval and f"${{{setting.name}:=" not in run_eval, (
            setting.name
        )


def test_no_module_of_the_project_imports_in_a_cycle():
    package = PROJECT_ROOT / "retinanet"
    imports = {}
    for path in package.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("retinanet")
            ):
                names |= (
                    {node.module.split(".")[1]}
                    if "." in node.module
                    else {alias.name for alias in node.names}
                )
            elif isinstance(node, ast.Import):
                names |= {
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("retinanet.")
                }
        imports[path.stem] = {name for name in names if (package / f"{name}.py").exists()}

    def reaches(start, target, seen=()):
        return any(
            name == target or (name not in seen and reaches(name, target, seen + (name,)))
            for name in imports.get(start, ())
        )

    assert [name for name in imports if reaches(name, name)] == []
