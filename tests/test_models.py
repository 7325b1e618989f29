"""Your own model through the same harness: each loading path (TorchScript, state dict +
factory, training checkpoint, trusted pickle, ONNX) runs an accuracy and a performance run
for real, and each wrong model stops before the run with one clear line."""

import json
import textwrap

import onnxruntime
import pytest
import torch
from helpers import DEMO_USER_CONF
from torch import Tensor, nn

from retinanet import demo_models, model_check, onnx_export

PERF = ("SCENARIO=Offline", f"USER_CONF={DEMO_USER_CONF}", "BATCH_SIZE=1", "THREADS=1")
FACTORY = "wt7_oracle_factory:build"  # written by the `factories` fixture


@pytest.fixture(scope="session")
def own_models(demo, tmp_path_factory):
    """The oracle as a state dict, a training checkpoint and a full pickle, and factories for it."""
    root = tmp_path_factory.mktemp("own-models")
    oracle = torch.jit.load(str(demo["models"]["oracle"]))
    state = dict(oracle.state_dict())
    torch.save(state, root / "oracle-state-dict.pth")
    torch.save({"model": state, "epoch": 26}, root / "oracle-training.pth")
    torch.save(demo_models.build_oracle(demo["coco"]), root / "oracle-pickle.pth")
    shapes = {key: list(value.shape) for key, value in state.items()}
    (root / "factories" / "wt7_oracle_factory.py").parent.mkdir()
    (root / "factories" / "wt7_oracle_factory.py").write_text(
        textwrap.dedent(f"""\
        import torch
        from retinanet.demo_models import OracleDetector

        def build(width={shapes["scores"][1]}):
            rows = {shapes["counts"][0]}
            return OracleDetector(torch.zeros(rows, width, 4), torch.zeros(rows, width),
                                  torch.zeros(rows, width, dtype=torch.int64),
                                  torch.zeros(rows, dtype=torch.int64))

        def narrow():
            return build(width=5)
        """)
    )
    return {"root": root, "factories": root / "factories"}


@pytest.fixture
def factories(own_models, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(own_models["factories"]))
    return own_models


@pytest.fixture(scope="session")
def onnx_model(demo):
    """The demo's real architecture, random weights, exported to ONNX once per session."""
    return onnx_export.export(
        demo_models.build_random_retinanet(), demo["root"] / "onnx" / "resnext50_32x4d_fpn.onnx"
    )


def completed(run_dir):
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    return record


def accuracy_then_performance(run, demo, model, *settings, accuracy=(), performance=()):
    proc, run_dir = run("eval", demo["data"], model, *settings, *accuracy)
    record = completed(run_dir)
    assert "model check: " in proc.stdout and "output contract kept" in proc.stdout
    perf, perf_dir = run("perf", demo["data"], model, "COUNT=2", *PERF, *settings, *performance)
    completed(perf_dir)
    assert "Result is : VALID" in perf.stdout
    return proc, record, perf


def test_torchscript_detector(run, demo):
    proc, record, _ = accuracy_then_performance(run, demo, demo["models"]["oracle"], "COUNT=4")
    assert "model check: torchscript;" in proc.stdout
    assert "mAP 100.000% on 4 images" in proc.stdout
    assert record["settings"]["backend"] == "pytorch"


def test_state_dict_with_factory(run, demo, factories):
    model = factories["root"] / "oracle-state-dict.pth"
    proc, record, _ = accuracy_then_performance(run, demo, model, f"MODEL_FACTORY={FACTORY}")
    assert "model check: state dict + factory;" in proc.stdout
    assert "mAP 100.000% on 12 images" in proc.stdout
    assert (
        record["settings"]["model_factory"] == FACTORY
        and f"MODEL_FACTORY={FACTORY}" in record["rerun"]
    )
    assert f"--model-factory {FACTORY}" in " ".join(record["command"])


def test_training_format_checkpoint(run, demo, factories):
    model = factories["root"] / "oracle-training.pth"
    proc, _, _ = accuracy_then_performance(run, demo, model, f"MODEL_FACTORY={FACTORY}")
    assert "mAP 100.000% on 12 images" in proc.stdout


def test_trusted_pickle(run, demo, own_models):
    proc, run_dir = run(
        "eval",
        demo["data"],
        own_models["root"] / "oracle-pickle.pth",
        "TRUST_MODEL=1",
        "COUNT=4",
    )
    assert (
        "model check: trusted pickle;" in proc.stdout and "mAP 100.000% on 4 images" in proc.stdout
    )
    assert completed(run_dir)["settings"]["trust_model"] == "1"


def test_onnx_real_architecture(run, demo, onnx_model):
    proc, record, perf = accuracy_then_performance(
        run,
        demo,
        onnx_model,
        "BACKEND=onnxruntime",
        accuracy=("COUNT=1", "WARMUP=0"),
        performance=("WARMUP=1",),
    )
    assert "model check: onnx;" in proc.stdout
    assert (
        f"warning: MODEL={onnx_model} is not the official resnext50_32x4d_fpn.onnx (MD5 "
        in proc.stdout
    )
    assert "run_eval: accuracy run, onnxruntime," in proc.stdout
    assert "mAP " in proc.stdout and " on 1 images" in proc.stdout
    assert (
        record["settings"]["backend"] == "onnxruntime" and record["settings"]["batch_size"] == "1"
    )
    assert "run_local.sh onnxruntime retinanet cpu" in " ".join(record["command"])
    print(
        "\nONNX (demo architecture, random weights), Offline samples/s:",
        [line for line in perf.stdout.splitlines() if line.startswith("Samples per second")],
    )


def test_onnx_gpu_run_needs_the_cuda_provider(demo, onnx_model, monkeypatch):
    """run_eval.sh sets USE_GPU=yes for DEVICE=gpu: with the CPU package of onnxruntime
    (here, as on a GPU host where setup did not install onnxruntime-gpu) the model check
    stops, where upstream's backend ran on the CPU."""
    monkeypatch.setenv("USE_GPU", "yes")
    if (
        "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    ):  # a GPU host: setup chose onnxruntime-gpu
        assert "output contract kept" in model_check.check(
            onnx_model, demo["data"], backend="onnxruntime", images=1
        )
        return
    with pytest.raises(model_check.ModelProblem) as refusal:
        model_check.check(onnx_model, demo["data"], backend="onnxruntime", images=1)
    assert str(refusal.value).startswith(
        "the onnxruntime backend cannot load it: RuntimeError: USE_GPU=yes but "
        "onnxruntime 1.31.1 has no CUDAExecutionProvider (it has "
    )
    assert str(refusal.value).endswith(
        "install onnxruntime-gpu in place of onnxruntime, or set USE_GPU=no to run on the CPU"
    )


# -- wrong models: one line before the run, no run folder --------------------------------


class ReturnsTensor(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.mean(dim=(1, 2, 3))


def unsorted_oracle(coco):
    oracle = demo_models.build_oracle(coco)
    for code, n in enumerate(oracle.counts.tolist()):
        oracle.scores[code, :n] = oracle.scores[code, :n].flip(0)
    return oracle


@pytest.fixture(scope="session")
def wrong_models(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("wrong-models")
    return {
        "returns-tensor": demo_models.save_torchscript(ReturnsTensor(), root / "tensor" / "m.pth"),
        "unsorted": demo_models.save_torchscript(
            unsorted_oracle(demo["coco"]), root / "unsorted" / "m.pth"
        ),
    }


def refused(run, demo, model, *settings):
    proc, run_dir = run("eval", demo["data"], model, *settings, check=False)
    assert proc.returncode != 0 and run_dir is None, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert "run folder" not in proc.stdout
    return lines[0]


def test_wrong_convention_stops_make_eval_before_the_run(run, demo, tmp_path):
    line = refused(run, demo, demo["models"]["oracle-xywh"])
    assert line == (
        f"error: MODEL={demo['models']['oracle-xywh']}: box 0 on image 1 is [276.8, 126.8, 420.7, "
        "78.0], with x2 < x1 or y2 < y1: boxes must be x1,y1,x2,y2 (is it x,y,width,height?)"
    )
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# The same checker run_eval.sh calls, in this process: the harness's backend and dataset code.
@pytest.mark.parametrize(
    "variant, message",
    [
        (
            "oracle-label-plus-one",
            "have label category_id+1 and none the category_id itself: labels must be "
            "the annotation category_id, 0..263",
        ),
        (
            "oracle-unscaled",
            "must lie inside the 800x800 input frame (are they in the original image's pixels",
        ),
        ("unsorted", "are not sorted descending (score 1 is "),
        (
            "returns-tensor",
            "the model returns a Tensor for one image, not a list of one dict per image with "
            "boxes, scores and labels",
        ),
    ],
)
def test_wrong_contract(demo, wrong_models, variant, message):
    model = wrong_models.get(variant) or demo["models"][variant]
    with pytest.raises(model_check.ModelProblem) as problem:
        model_check.check(model, demo["data"], images=2)
    assert message in str(problem.value)


def test_right_contract(demo):
    first = {image["id"] for image in demo["coco"]["images"][:3]}
    boxes = sum(ann["image_id"] in first for ann in demo["coco"]["annotations"])
    assert (
        model_check.check(demo["models"]["oracle"], demo["data"], images=3)
        == f"model check: torchscript; output contract kept on 3 images ({boxes} detections)"
    )


def test_untrusted_pickle_is_refused_before_loading(run, demo, own_models, tmp_path):
    # A pickle whose loading would leave a mark: it must never be unpickled.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Evil()}, evil)
    line = refused(run, demo, evil)
    assert line.endswith(
        f"MODEL={evil} is a full pickle, not a TorchScript archive: loading it runs any code it "
        "holds. A state dict loads safely with MODEL_FACTORY=package.module:function; "
        "if you trust the file, set TRUST_MODEL=1"
    )
    assert not marker.exists()
    line = refused(run, demo, own_models["root"] / "oracle-pickle.pth")
    assert "is a full pickle" in line and "TRUST_MODEL=1" in line
    # the same file with a factory is loaded weights_only=True: still refused, still not run
    line = refused(
        run, demo, evil, f"MODEL_FACTORY={FACTORY}", f"PYTHONPATH={own_models['factories']}"
    )
    assert not marker.exists()


def test_state_dict_without_factory(run, demo, own_models):
    line = refused(run, demo, own_models["root"] / "oracle-state-dict.pth")
    assert (
        "is a state dict or checkpoint, not a TorchScript archive: set "
        "MODEL_FACTORY=package.module:function" in line
    )


def test_factory_that_does_not_import(run, demo, own_models):
    line = refused(
        run,
        demo,
        own_models["root"] / "oracle-state-dict.pth",
        "MODEL_FACTORY=no_such_package.models:build",
    )
    assert line.endswith(
        "MODEL_FACTORY=no_such_package.models:build: cannot import no_such_package.models "
        "(ModuleNotFoundError: No module named 'no_such_package'): put its package in the "
        "project folder or on PYTHONPATH"
    )
    line = refused(
        run,
        demo,
        own_models["root"] / "oracle-state-dict.pth",
        "MODEL_FACTORY=retinanet.demo_models",
    )
    assert line.endswith("MODEL_FACTORY=retinanet.demo_models is not package.module:function")


def test_state_dict_that_does_not_fit(run, demo, factories):
    model = factories["root"] / "oracle-training.pth"
    line = refused(run, demo, model, "MODEL_FACTORY=wt7_oracle_factory:narrow")
    assert (
        f"MODEL={model} does not fit the model MODEL_FACTORY=wt7_oracle_factory:narrow builds: 3 "
        "of another "
        "shape (first boxes: " in line
    )
    assert line.endswith("is it a checkpoint of that architecture?")


def test_onnx_settings_for_pytorch_only(run, demo, onnx_model):
    line = refused(run, demo, onnx_model, "BACKEND=onnxruntime", "PRECISION=bf16")
    assert line.endswith(
        "PRECISION=bf16 is for BACKEND=pytorch: BACKEND=onnxruntime runs PRECISION=fp32; "
        "leave PRECISION on auto"
    )
    line = refused(run, demo, onnx_model, "BACKEND=tensorrt")
    assert line.endswith("BACKEND=tensorrt is not one of: pytorch, onnxruntime")
