"""Every run setting, in one table: its name (the make variable), its default, the values
it takes, what `auto` resolves to, the harness flag it becomes, a one-line doc, and whether
it can change a result. Everything else reads this table: make's defaults and help, the
docs/settings.md table, validation (once, before any run folder exists), the harness's
arguments, run.json's settings and rerun, compare's warnings and the report's settings.

Adding a setting is one entry here, plus the code that uses it.

Standard library only: make reads the table before any environment exists.

    python3 -m retinanet.settings makefile   NAME=default words, for the Makefile
    python3 -m retinanet.settings help       the settings part of `make help`
    python3 -m retinanet.settings docs       rewrite the settings table in docs/settings.md
"""

import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retinanet import HARNESS, OFFICIAL_MODELS, PROJECT_ROOT, UPSTREAM

# MODEL_IMPL=native: the harness's --eager-model (patch 0031), with NNPACK=1 its NNPACK form
NATIVE_MODEL = "retinanet.native_model:from_archive"
NATIVE_MODEL_NNPACK = "retinanet.native_model:from_archive_nnpack"
SCENARIOS = ("Offline", "Server", "SingleStream", "MultiStream")
BACKENDS = ("pytorch", "onnxruntime")
RAY_RUNNER = "retinanet.ray_sut:RayRunner"  # WORKERS, RAY_ADDRESS: main.py's --runner
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
    parse: Callable[[str, str], str]
    auto: Callable | None = None  # (resolved settings so far) -> value, for `auto`
    onnxruntime: str | None = None  # the value BACKEND=onnxruntime runs (upstream's profile)
    flag: str | None = None  # the harness's flag: "--x" followed by the value, or alone for 0/1
    harness: Callable | None = None  # resolved -> the harness's arguments, where not flag + value
    affects_result: bool = False  # a difference makes two runs' figures incomparable
    before: str | None = None  # what runs recorded before it existed ran, where auto differs
    # its auto reads settings below it (the model's form): resolved after all the others,
    # without moving it in the table, whose order reruns keep
    auto_last: bool = False

    @property
    def key(self):
        """Its name in run.json."""
        return self.name.lower()

    @property
    def switch(self):
        """A 0/1 setting: its flag alone stands for 1."""
        return getattr(self.parse, "values", None) == ("0", "1")


def native_bf16():
    """AVX512-BF16 or AMX: without them oneDNN emulates bf16, 12x slower than fp32.

    Measured in BENCHMARKS.md."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def eager_model(resolved):
    """The harness's --eager-model for these settings: empty for TorchScript."""
    if resolved["MODEL_IMPL"] != "native":
        return ""
    return NATIVE_MODEL_NNPACK if resolved["NNPACK"] == "1" else NATIVE_MODEL


def cpu_fp32(resolved):
    """Where NNPACK runs, and where the native model was measured faster."""
    return (resolved["DEVICE"], resolved["PRECISION"]) == ("cpu", "fp32")


def auto_model_impl(resolved):
    """native where it was measured faster (fp32 on a CPU, with NNPACK: BENCHMARKS.md) and the
    archive's weights fit it; torchscript elsewhere, and for what only TorchScript does."""
    if resolved["MODEL_FACTORY"] or resolved["FREEZE"] == "1":
        return "torchscript"
    if not (cpu_fp32(resolved) and has_nnpack() and os.path.isfile(resolved["MODEL"])):
        return "torchscript"
    from retinanet import native_model

    return "native" if native_model.fits(resolved["MODEL"]) else "torchscript"


def has_nnpack():
    import torch

    return torch._nnpack_available()


def auto_nnpack(resolved):
    """NNPACK where it runs: the native model's fp32 convolutions on a CPU."""
    return (
        "1" if resolved["MODEL_IMPL"] == "native" and cpu_fp32(resolved) and has_nnpack() else "0"
    )


# what each more worker thread of the native model took at batch 1 (0.56 GB), with room
WORKER_MEMORY = 2**30


def ray_workers(resolved):
    """The model runs in Ray's workers (main.py's --runner), which share each node's cores."""
    return bool(resolved["WORKERS"] or resolved["RAY_ADDRESS"])


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
    import torch

    return str(max(1, min(torch.get_num_threads(), available_memory() // WORKER_MEMORY)))


def available_memory():
    """Linux's MemAvailable: free memory and the page cache it would give back (free memory
    alone shrinks as the page cache grows, whatever is running)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_intra_threads(resolved):
    """torch's default (one per core), written out so that a rerun elsewhere keeps it, but
    for several NNPACK workers, which share the cores, and Ray's workers, which share them
    out on each node themselves (empty)."""
    if ray_workers(resolved):
        return ""
    import torch

    workers = int(resolved["THREADS"]) if nnpack_workers(resolved) else 1
    return str(max(1, torch.get_num_threads() // workers))


def auto_device(resolved):
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def per_device(cpu, gpu):
    return lambda resolved: {"cpu": cpu, "gpu": gpu}[resolved["DEVICE"]]


def always(value):
    return lambda resolved: value


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
        auto=auto_device,
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
        auto=per_device("1", "16"),
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
        auto=auto_threads,
        auto_last=True,
        flag="--threads",
        affects_result=True,
    ),
    Setting(
        "PRECISION",
        "auto",
        "fp32, bf16 or fp16, under autocast; auto: fp16 on a GPU, bf16 on a CPU "
        "with native bf16 (AVX512-BF16, AMX), else fp32",
        one_of("fp32", "bf16", "fp16"),
        auto=lambda resolved: (
            "fp16" if resolved["DEVICE"] == "gpu" else ("bf16" if native_bf16() else "fp32")
        ),
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
        auto=auto_model_impl,
        onnxruntime="torchscript",
        before="torchscript",
        harness=lambda resolved: (
            ["--eager-model", eager_model(resolved)] * bool(eager_model(resolved))
        ),
        affects_result=True,
    ),
    Setting(
        "NNPACK",
        "auto",
        "1: the native model's 3x3 FPN and head convolutions through NNPACK's Winograd "
        "kernels (CPU, fp32; about 3x oneDNN's on AVX2); auto: 1 for MODEL_IMPL=native in fp32 "
        "on a CPU",
        one_of("0", "1"),
        auto=auto_nnpack,
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
        auto=lambda resolved: "0" if resolved["NNPACK"] == "1" else "1",
        onnxruntime="0",
        flag="--channels-last",
        affects_result=True,
    ),
    Setting(
        "FREEZE",
        "auto",
        "1: torch.jit.freeze + optimize_for_inference the TorchScript model; auto: 0",
        one_of("0", "1"),
        auto=always("0"),
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
        auto=always("0"),
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
        auto=auto_intra_threads,
        auto_last=True,
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


# -- resolution --------------------------------------------------------------------------


def requested_from(environ):
    """Each setting as given; empty means the default.

    make exports its variables to run_eval.sh, which hands them on."""
    return {s.name: environ.get(s.name) or s.default for s in SETTINGS}


def resolve(requested):
    """Every setting validated, `auto` resolved for this machine, paths absolute. Returns
    (resolved, problems): one line per problem, and all of them at once."""
    resolved, problems = {}, []
    for setting in SETTINGS:
        value = requested.get(setting.name) or setting.default
        if value == "" or (value == "auto" and setting.auto):
            resolved[setting.name] = value
            continue
        try:
            resolved[setting.name] = setting.parse(setting.name, value)
        except SettingError as problem:
            problems.append(str(problem))
            resolved[setting.name] = value
    if problems:
        return resolved, problems
    if not resolved["MODEL"]:
        official = OFFICIAL_MODELS["onnx" if resolved["BACKEND"] == "onnxruntime" else "pytorch"][
            "file"
        ]
        resolved["MODEL"] = os.path.join(resolved["MODEL_DIR"], official)
    # auto, in table order (DEVICE before what depends on it), auto_last ones last
    for setting in sorted(SETTINGS, key=lambda s: s.auto_last):
        if resolved["BACKEND"] == "onnxruntime" and setting.onnxruntime is not None:
            if resolved[setting.name] not in ("", "auto", setting.onnxruntime):
                problems.append(
                    f"{setting.name}={resolved[setting.name]} is for BACKEND=pytorch: "
                    f"BACKEND=onnxruntime runs {setting.name}={setting.onnxruntime}; leave "
                    f"{setting.name} on auto"
                )
            resolved[setting.name] = setting.onnxruntime
        elif resolved[setting.name] == "auto" and setting.auto:
            resolved[setting.name] = setting.auto(resolved)
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


def harness_args(resolved):
    """python/main.py's arguments for these settings (the run folder's own are run_eval.sh's)."""
    args = []
    for setting in SETTINGS:
        value = resolved[setting.name]
        if setting.harness:
            args += setting.harness(resolved)
        if not setting.flag or value in ("", "auto"):
            continue
        if setting.switch:
            args += [setting.flag] if value == "1" else []
        else:
            args += [setting.flag, value]
    if ray_workers(resolved):
        args += ["--runner", RAY_RUNNER]
    return args + shlex.split(resolved["HARNESS_ARGS"])


def record(resolved):
    """run.json's settings: every setting by its key."""
    return {setting.key: resolved[setting.name] for setting in SETTINGS}


def rerun_words(record):
    """The KEY=VALUE words that repeat a recorded run: its rerun's, and for each setting the
    record predates, the value such runs ran with (not today's auto)."""
    words = shlex.split(record["rerun"])[2:]
    return words + [
        f"{s.name}={s.before}" for s in SETTINGS if s.before and s.key not in record["settings"]
    ]


def rerun_command(mode, settings):
    """The make command that repeats a run: every setting at the value it resolved to, so that
    `auto` is not resolved again (on another machine, possibly otherwise)."""
    words = ["make", "eval" if mode == "accuracy" else "perf"]
    words += [f"{s.name}={settings[s.key]}" for s in SETTINGS if settings.get(s.key)]
    return shlex.join(words)


# -- documentation -----------------------------------------------------------------------

SETTINGS_PAGE = PROJECT_ROOT / "docs" / "settings.md"
TABLE_BEGIN = (
    "<!-- settings: generated from retinanet/settings.py by "
    "'python3 -m retinanet.settings docs' -->"
)
TABLE_END = "<!-- end of settings -->"


def markdown_table():
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [
        f"| `{s.name}` | {f'`{s.default}`' if s.default else 'empty'} | {s.doc} |" for s in SETTINGS
    ]
    return "\n".join(rows)


def settings_page_text(text):
    """docs/settings.md's text with the settings table between its markers generated anew."""
    before, begin, rest = text.partition(TABLE_BEGIN)
    _, end, after = rest.partition(TABLE_END)
    if not begin or not end:
        raise SettingError(f"{SETTINGS_PAGE} has no '{TABLE_BEGIN}' ... '{TABLE_END}' block")
    return f"{before}{TABLE_BEGIN}\n{markdown_table()}\n{TABLE_END}{after}"


def main():
    action = sys.argv[1] if len(sys.argv) == 2 else ""
    if action == "makefile":
        for setting in SETTINGS:
            # make reads NAME=default words
            assert not re.search(r"[\s=$'\"]", setting.default), setting
        print(" ".join(f"{s.name}={s.default}" for s in SETTINGS))
    elif action == "help":
        for s in SETTINGS:
            print(f"  \033[36m{s.name:<22}\033[0m {s.doc} (default: {s.default or 'empty'})")
    elif action == "docs":
        SETTINGS_PAGE.write_text(settings_page_text(SETTINGS_PAGE.read_text()))
        print(f"settings: {SETTINGS_PAGE} updated")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
