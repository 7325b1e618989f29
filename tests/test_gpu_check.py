"""make gpu-check, as far as a CPU can run it in a test: DEVICE=cpu, the demo's data and
model, a two-row sweep on one image, the Server run of the faster row, one table, everything
under one folder. Setup, make demo and bench are left out (test_system_env.py and
test_runs.py have them; bench is a benchmark; on this 2-core machine make demo alone took
8 minutes while other tests ran), and so is torch.compile (test_native_model.py has the
one compile test)."""

import json

import pytest
from helpers import make


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_on_the_cpu_writes_one_table_and_every_run(upstream, tmp_path):
    out = tmp_path / "gpu-check"
    proc = make(
        "gpu-check",
        "DEVICE=cpu",
        f"GPU_CHECK_DIR={out}",
        "GPU_CHECK_ARGS=--skip setup demo bench --rows 'torchscript fp32' 'native fp32' "
        "--count 1 --samples 1 --guard-images 0 --warmup 0",
    )
    record = json.loads((out / "gpu-check.json").read_text())
    assert [s["step"] for s in record["steps"]] == [
        "demo data and model",
        "sweep torchscript fp32",
        "sweep native fp32",
        "server",
    ]
    assert all(s["ok"] for s in record["steps"]), record["steps"]
    rows = {row["name"]: row for row in record["sweep"]}
    for row in rows.values():
        assert row["valid"] and row["samples_per_s"] > 0
        assert (out / "sweep").is_dir() and row["run"].startswith(str(out / "sweep"))
    assert rows["torchscript fp32"]["vs_first"] == 1.0
    assert record["server"]["run"].startswith(str(out / "sweep"))
    table = (out / "table.md").read_text()
    assert table in proc.stdout
    assert "| torchscript fp32 | " in table and "| native fp32 | " in table
    assert "1,821 samples/s Offline" in table
    assert (out / "demo" / "data").is_dir() and (out / "demo.log").is_file()
