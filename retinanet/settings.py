"""Every run setting, in one table: its name (the make variable), its default, the values
it takes, the value BACKEND=onnxruntime runs, the harness flag it becomes, a one-line doc,
and whether it can change a result. Everything else reads this table: make's defaults and
help, the docs/settings.md table, validation, `auto` (settings_auto.py), the harness's
arguments, run.json's settings and rerun (settings_outputs.py), compare's warnings and the
report's settings.

Adding a setting is one entry here, plus the code that uses it (its `auto` rule, where it
has one, in settings_auto.py).

Standard library only: make reads the table (python3 -m retinanet.settings_outputs
makefile) before any environment exists.
"""

import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retinanet import UPSTREAM

# MODEL_IMPL=native: the harness's --eager-model (patch 0031), with NNPACK=1 its NNPACK form
NATIVE_MODEL = "retinanet.native_model:from_archive"
NATIVE_MODEL_NNPACK = "retinanet.native_model:from_archive_nnpack"
SCENARIOS = ("Offline", "Server", "SingleStream", "MultiStream")
BACKENDS = ("pytorch", "onnxruntime")
# LoadGen's user.conf keys: the ones its parser looks up (TestSettings::FromConfig)
LOADGEN_SETTINGS_SOURCE = UPSTREAM / "loadgen" / "test_settings_internal.cc"


class SettingError(ValueError):
    """One line: which setting is wrong and what it takes."""


# -- values ------------------------------------------------------------------------------


def one_of(*values):
    def parse(name, value):
        if value not in values:
            raise SettingError(f"{name}={value} is not one of: {', '.join(values)}")
        return value

    parse.values = values
    return parse


def whole(minimum):
    def parse(name, value):
        if not re.fullmatch(r"[0-9]+", value) or int(value) < minimum:
            raise SettingError(f"{name}={value} is not a whole number, {minimum} or more")
        return str(int(value))

    return parse


def positive_number(name, value):
    """LoadGen takes QPS as a double: 0.5 is a Server run on a CPU."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise SettingError(f"{name}={value} is not a number above 0")
    return f"{number:g}"


def or_auto(parse):
    """auto, kept as it is: the harness derives the value as it runs."""
    return lambda name, value: value if value == "auto" else parse(name, value)


def harness_words(name, value):
    try:
        shlex.split(value)
    except ValueError as error:
        raise SettingError(f"{name}={value} does not split into words ({error})") from None
    return value


def factory(name, value):
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise SettingError(f"{name}={value} is not package.module:function")
    return value


def ray_address(name, value):
    if not re.fullmatch(r"[\w.-]+:[0-9]+", value):
        raise SettingError(f"{name}={value} is not host:port, the head of a Ray cluster")
    return value


def path(name, value):
    return os.path.abspath(value)


def user_conf(name, value):
    """A LoadGen user.conf: every line LoadGen would ignore or reject is refused here, by
    number, since LoadGen itself goes on with other values than the user wrote."""
    conf = Path(value)
    if not conf.is_file():
        raise SettingError(f"{name}={value} not found")
    keys = loadgen_keys()
    for number, line in enumerate(conf.read_text(errors="replace").splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{name}={value} line {number} ({line.strip()!r})"
        if len(words) != 3 or words[1] != "=":
            raise SettingError(
                f"{where} is not 'model.scenario.key = value' with spaces around '=': "
                "LoadGen would ignore it"
            )
        parts = words[0].split(".")
        if len(parts) != 3 or parts[1] not in SCENARIOS + ("*",):
            raise SettingError(
                f"{where}: '{words[0]}' is not model.scenario.key with a scenario of "
                f"{', '.join(SCENARIOS)} or *"
            )
        if keys and parts[2] not in keys:
            raise SettingError(f"{where}: LoadGen has no setting '{parts[2]}' and would ignore it")
        try:
            int(words[2], 0)
        except ValueError:
            try:
                float(words[2])
            except ValueError:
                raise SettingError(f"{where}: the value '{words[2]}' is not a number") from None
    return os.path.abspath(value)


def loadgen_keys():
    """The keys LoadGen's config parser looks up, read from its source at the pin."""
    try:
        source = LOADGEN_SETTINGS_SOURCE.read_text()
    except OSError:
        return set()
    return set(re.findall(r'lookupkv\(\s*model,\s*[^,]+,\s*"(\w+)"', source))


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as make has it; "" means unset, and empty values take the default too
    doc: str
    parse: Callable[[str, str], str]  # (name, value) -> the value, or raises SettingError
    onnxruntime: str | None = None  # the value BACKEND=onnxruntime runs (upstream's profile)
    flag: str | None = None  # the harness's flag: "--x" followed by the value, or alone for 0/1
    affects_result: bool = False  # a difference makes two runs' figures incomparable
    before: str | None = None  # what runs recorded before it existed ran, where auto differs

    @property
    def key(self):
        """Its name in run.json."""
        return self.name.lower()

    @property
    def switch(self):
        """A 0/1 setting: its flag alone stands for 1."""
        return getattr(self.parse, "values", None) == ("0", "1")


def eager_model(resolved):
    """The harness's --eager-model for these settings: empty for TorchScript."""
    if resolved["MODEL_IMPL"] != "native":
        return ""
    return NATIVE_MODEL_NNPACK if resolved["NNPACK"] == "1" else NATIVE_MODEL


def cpu_fp32(resolved):
    """Where NNPACK runs, and where the native model was measured faster."""
    return (resolved["DEVICE"], resolved["PRECISION"]) == ("cpu", "fp32")


def ray_workers(resolved):
    """The model runs in Ray's workers (main.py's --runner), which share each node's cores."""
    return bool(resolved["WORKERS"] or resolved["RAY_ADDRESS"])


SETTINGS = [
    Setting(
        "DATA_DIR",
        "data/openimages-mlperf",
        "the dataset: the downloader's root folder (annotations/, "
        "validation/data/); a flat folder of images also works",
        path,
    ),
    Setting("MODEL_DIR", "models", "the folder of the official model, when MODEL is empty", path),
    Setting(
        "MODEL",
        "",
        "the model file: TorchScript, a state dict with MODEL_FACTORY, or ONNX with "
        "BACKEND=onnxruntime (empty: the official file in MODEL_DIR)",
        path,
        flag="--model",
    ),
    Setting(
        "BACKEND",
        "pytorch",
        "pytorch, or onnxruntime (upstream's ONNX backend: batch 1, the model's own precision)",
        one_of(*BACKENDS),
        affects_result=True,
    ),
    Setting(
        "MODEL_FACTORY",
        "",
        "package.module:function building the nn.Module that MODEL, a state dict, loads into",
        factory,
        flag="--model-factory",
        affects_result=True,
    ),
    Setting(
        "TRUST_MODEL",
        "0",
        "1: load MODEL even when it is a full pickle, which runs any code it holds "
        "(trusted files only)",
        one_of("0", "1"),
        flag="--trust-pickle",
    ),
    Setting(
        "CHECK_IMAGES",
        "1",
        "images the output contract is checked on before each run (0: load check only)",
        whole(0),
    ),
    Setting(
        "DEVICE",
        "auto",
        "cpu, gpu, or auto (gpu when torch sees one)",
        one_of("auto", "cpu", "gpu"),
        affects_result=True,
    ),
    Setting(
        "SCENARIO",
        "Offline",
        "make perf: Offline, Server, SingleStream or MultiStream",
        one_of(*SCENARIOS),
        flag="--scenario",
        affects_result=True,
    ),
    Setting(
        "COUNT",
        "",
        "images to use (empty: the whole dataset)",
        whole(1),
        flag="--count",
        affects_result=True,
    ),
    Setting(
        "BATCH_SIZE",
        "auto",
        "harness --max-batchsize; auto: 1 on a CPU, 16 on a GPU",
        whole(1),
        onnxruntime="1",
        flag="--max-batchsize",
        affects_result=True,
    ),
    Setting(
        "THREADS",
        "auto",
        "harness worker threads; auto: 2 on a GPU; on a CPU 1, or with NNPACK=1 outside "
        "SingleStream and Ray one per core (as memory allows, 1 GiB each)",
        whole(1),
        flag="--threads",
        affects_result=True,
    ),
    Setting(
        "PRECISION",
        "auto",
        "fp32, bf16 or fp16, under autocast; auto: fp16 on a GPU, bf16 on a CPU "
        "with native bf16 (AVX512-BF16, AMX), else fp32",
        one_of("fp32", "bf16", "fp16"),
        onnxruntime="fp32",
        flag="--precision",
        affects_result=True,
    ),
    Setting(
        "MODEL_IMPL",
        "auto",
        "torchscript: run the archive as it is; native: its weights in the project's eager "
        "model of the same architecture (retinanet/native_model.py), which NNPACK and COMPILE "
        "speed up; auto: native in fp32 on a CPU when the archive's weights fit it, else "
        "torchscript",
        one_of("torchscript", "native"),
        onnxruntime="torchscript",
        before="torchscript",
        affects_result=True,
    ),
    Setting(
        "NNPACK",
        "auto",
        "1: the native model's 3x3 FPN and head convolutions through NNPACK's Winograd "
        "kernels (CPU, fp32; about 3x oneDNN's on AVX2); auto: 1 for MODEL_IMPL=native in fp32 "
        "on a CPU",
        one_of("0", "1"),
        onnxruntime="0",
        before="0",
        affects_result=True,
    ),
    Setting(
        "CHANNELS_LAST",
        "auto",
        "1: model and inputs in channels_last memory format; auto: 1 (0 with NNPACK=1, which "
        "takes NCHW)",
        one_of("0", "1"),
        onnxruntime="0",
        flag="--channels-last",
        affects_result=True,
    ),
    Setting(
        "FREEZE",
        "auto",
        "1: torch.jit.freeze + optimize_for_inference the TorchScript model; auto: 0",
        one_of("0", "1"),
        onnxruntime="0",
        flag="--freeze",
        affects_result=True,
    ),
    Setting(
        "COMPILE",
        "auto",
        "1: torch.compile (inductor) an eager model (MODEL_IMPL=native or MODEL_FACTORY); the "
        "native model compiles backbone, FPN and heads only, with CUDA graphs on a GPU; auto: 0",
        one_of("0", "1"),
        onnxruntime="0",
        flag="--compile",
        affects_result=True,
    ),
    Setting(
        "INTRA_THREADS",
        "auto",
        "torch intra-op threads per worker; auto: torch's default (one per core), with "
        "NNPACK=1 the cores shared among THREADS workers; with WORKERS, Ray's workers share "
        "the cores out",
        whole(1),
        flag="--intra-op-threads",
        affects_result=True,
    ),
    Setting(
        "IMAGE_CACHE",
        "none",
        "none: preprocess as LoadGen loads; uint8: also keep a compact cache; "
        "float32: upstream's cache",
        one_of("none", "uint8", "float32"),
        flag="--image-cache",
        affects_result=True,
    ),
    Setting(
        "CACHE_DIR",
        "cache",
        "preprocessed images for IMAGE_CACHE=uint8 (1.9 MB each) or float32 (7.7 MB each)",
        path,
    ),
    Setting(
        "GUARD_IMAGES",
        "8",
        "accuracy runs in bf16 or fp16, or with COMPILE=1: compare with plain fp32 on this many "
        "images (0: off)",
        whole(0),
    ),
    Setting(
        "QPS",
        "",
        "harness --qps: target QPS for Server and Offline (a fraction is fine)",
        positive_number,
        flag="--qps",
        affects_result=True,
    ),
    Setting(
        "TIME",
        "",
        "harness --time: run this many seconds (not for a submission)",
        whole(1),
        flag="--time",
        affects_result=True,
    ),
    Setting(
        "USER_CONF", "", "LoadGen user.conf (empty: upstream's)", user_conf, affects_result=True
    ),
    Setting(
        "HARNESS_ARGS",
        "",
        "more flags for upstream python/main.py, e.g. --samples-per-query 8",
        harness_words,
        affects_result=True,
    ),
    Setting(
        "WARMUP",
        "5",
        "inferences on the first image before LoadGen starts (upstream's 5); 0: none, "
        "e.g. for accuracy on a CPU",
        whole(0),
        flag="--warmup",
        affects_result=True,
    ),
    Setting(
        "PROGRESS",
        "30",
        "seconds between progress lines while LoadGen runs; 0: none",
        whole(0),
        flag="--progress",
    ),
    Setting(
        "STALL_TIMEOUT",
        "auto",
        "seconds without a completed inference before a run stops as "
        "stalled; auto: 10x the slowest so far, at least 60",
        or_auto(positive_number),
        flag="--stall-timeout",
    ),
    Setting(
        "WORKERS",
        "",
        "run the model in this many Ray workers, one LoadGen driving them all; auto: one "
        "per GPU, or one per node on CPUs (empty: one process, no Ray)",
        or_auto(whole(1)),
        flag="--workers",
        affects_result=True,
    ),
    Setting(
        "RAY_ADDRESS",
        "",
        "host:port of a Ray cluster's head (ray start --head) to run the workers on "
        "(empty: with WORKERS, a private Ray on this machine)",
        ray_address,
        flag="--ray-address",
    ),
    Setting("RESULTS_DIR", "results", "every run gets a new folder in here", path),
]


# -- what a run records ------------------------------------------------------------------


def requested_from(environ):
    """Each setting as given; empty means the default.

    make exports its variables to run_eval.sh, which hands them on."""
    return {s.name: environ.get(s.name) or s.default for s in SETTINGS}


def record(resolved):
    """run.json's settings: every setting by its key."""
    return {setting.key: resolved[setting.name] for setting in SETTINGS}
