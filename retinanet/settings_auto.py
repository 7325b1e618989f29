"""The settings of a run resolved for this machine: every value validated (settings.py's
parsers), every `auto` turned into what this machine runs fastest (RULES, which probe the
machine through machine.py and may load the model archive), paths made absolute, and the
combinations that cannot run refused, one line each.

    resolve(requested) -> (resolved, problems)
"""

import os

from retinanet import HARNESS, OFFICIAL_MODELS, machine
from retinanet.settings import SETTINGS, SettingError, cpu_fp32, ray_workers

# what each more worker thread of the native model took at batch 1 (0.56 GB), with room
WORKER_MEMORY = 2**30


def auto_model_impl(resolved):
    """native where it was measured faster (fp32 on a CPU, with NNPACK: BENCHMARKS.md) and the
    archive's weights fit it; torchscript elsewhere, and for what only TorchScript does."""
    if resolved["MODEL_FACTORY"] or resolved["FREEZE"] == "1":
        return "torchscript"
    if not (cpu_fp32(resolved) and machine.has_nnpack() and os.path.isfile(resolved["MODEL"])):
        return "torchscript"
    from retinanet import native_model

    return "native" if native_model.fits(resolved["MODEL"]) else "torchscript"


def auto_nnpack(resolved):
    """NNPACK where it runs: the native model's fp32 convolutions on a CPU."""
    native = resolved["MODEL_IMPL"] == "native"
    return "1" if native and cpu_fp32(resolved) and machine.has_nnpack() else "0"


def nnpack_workers(resolved):
    """Where workers of one intra-op thread each beat one worker of all cores: NNPACK's thread
    pool serves a whole process, and two workers of one core each did 1.14x the samples/s of
    one worker of two (BENCHMARKS.md); SingleStream has one query at a time, and Ray workers
    share the cores out themselves."""
    return (
        resolved["NNPACK"] == "1"
        and resolved["SCENARIO"] != "SingleStream"
        and not ray_workers(resolved)
    )


def auto_threads(resolved):
    if resolved["DEVICE"] == "gpu":
        return "2"
    if not nnpack_workers(resolved):
        return "1"
    cores = machine.torch_threads()
    return str(max(1, min(cores, machine.available_memory() // WORKER_MEMORY)))


def auto_intra_threads(resolved):
    """torch's default (one per core), written out so that a rerun elsewhere keeps it, but
    for several NNPACK workers, which share the cores, and Ray's workers, which share them
    out on each node themselves (empty)."""
    if ray_workers(resolved):
        return ""
    workers = int(resolved["THREADS"]) if nnpack_workers(resolved) else 1
    return str(max(1, machine.torch_threads() // workers))


def auto_device(resolved):
    return "gpu" if machine.cuda_available() else "cpu"


def auto_precision(resolved):
    if resolved["DEVICE"] == "gpu":
        return "fp16"
    return "bf16" if machine.native_bf16() else "fp32"


def per_device(cpu, gpu):
    return lambda resolved: {"cpu": cpu, "gpu": gpu}[resolved["DEVICE"]]


def always(value):
    return lambda resolved: value


# What `auto` becomes, per setting: (resolved settings so far) -> value
RULES = {
    "DEVICE": auto_device,
    "BATCH_SIZE": per_device("1", "16"),
    "THREADS": auto_threads,
    "PRECISION": auto_precision,
    "MODEL_IMPL": auto_model_impl,
    "NNPACK": auto_nnpack,
    "CHANNELS_LAST": lambda resolved: "0" if resolved["NNPACK"] == "1" else "1",
    "FREEZE": always("0"),
    "COMPILE": always("0"),
    "INTRA_THREADS": auto_intra_threads,
}
# Their rules read settings below them in the table (the model's form): resolved after all the
# others, without moving them in the table, whose order reruns keep
RESOLVED_LAST = {"THREADS", "INTRA_THREADS"}


def parsed(requested):
    """Every setting validated by its parser; `auto` kept where a rule resolves it."""
    resolved, problems = {}, []
    for setting in SETTINGS:
        value = requested.get(setting.name) or setting.default
        if value == "" or (value == "auto" and setting.name in RULES):
            resolved[setting.name] = value
            continue
        try:
            resolved[setting.name] = setting.parse(setting.name, value)
        except SettingError as problem:
            problems.append(str(problem))
            resolved[setting.name] = value
    return resolved, problems


def resolve(requested):
    """Every setting validated, `auto` resolved for this machine, paths absolute. Returns
    (resolved, problems): one line per problem, and all of them at once."""
    resolved, problems = parsed(requested)
    if problems:
        return resolved, problems
    if not resolved["MODEL"]:
        backend = "onnx" if resolved["BACKEND"] == "onnxruntime" else "pytorch"
        resolved["MODEL"] = os.path.join(resolved["MODEL_DIR"], OFFICIAL_MODELS[backend]["file"])
    # auto, in table order (DEVICE before what depends on it), RESOLVED_LAST last
    for setting in sorted(SETTINGS, key=lambda s: s.name in RESOLVED_LAST):
        if resolved["BACKEND"] == "onnxruntime" and setting.onnxruntime is not None:
            if resolved[setting.name] not in ("", "auto", setting.onnxruntime):
                problems.append(
                    f"{setting.name}={resolved[setting.name]} is for BACKEND=pytorch: "
                    f"BACKEND=onnxruntime runs {setting.name}={setting.onnxruntime}; leave "
                    f"{setting.name} on auto"
                )
            resolved[setting.name] = setting.onnxruntime
        elif resolved[setting.name] == "auto" and setting.name in RULES:
            resolved[setting.name] = RULES[setting.name](resolved)
    if resolved["DEVICE"] == "cpu" and resolved["PRECISION"] == "fp16":
        problems.append("PRECISION=fp16 is for GPUs: on a CPU use bf16 or fp32")
    problems += model_impl_problems(resolved)
    if not resolved["USER_CONF"]:
        resolved["USER_CONF"] = str(HARNESS / "user.conf")
    return resolved, problems


def model_impl_problems(resolved):
    """What the model's form allows: freezing is TorchScript's, compiling an eager model's."""
    native, factory = resolved["MODEL_IMPL"] == "native", bool(resolved["MODEL_FACTORY"])
    problems = []
    if native and factory:
        problems.append(
            "MODEL_IMPL=native loads a TorchScript archive's weights, MODEL_FACTORY a state "
            "dict's: use one of them"
        )
    if native and resolved["FREEZE"] == "1":
        problems.append(
            "FREEZE=1 is for TorchScript (MODEL_IMPL=torchscript); the native model has COMPILE=1"
        )
    if resolved["NNPACK"] == "1" and not native:
        problems.append("NNPACK=1 is the native model's: MODEL_IMPL=native (or NNPACK=0)")
    elif resolved["NNPACK"] == "1" and not cpu_fp32(resolved):
        problems.append(
            "NNPACK=1 runs fp32 convolutions on a CPU: DEVICE=cpu PRECISION=fp32 (or NNPACK=0)"
        )
    if resolved["COMPILE"] == "1" and not (native or factory):
        problems.append(
            "COMPILE=1 needs an eager model: MODEL_IMPL=native (or MODEL_FACTORY); TorchScript "
            "has FREEZE=1"
        )
    return problems
