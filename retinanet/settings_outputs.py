"""What resolved settings become: the harness's and the accuracy guard's arguments, the
environment the harness's backends read, the `make` command that repeats a run, and the
settings' part of the Makefile, of `make help` and of docs/settings.md.

Standard library only: make reads its defaults here before any environment exists.

    python3 -m retinanet.settings_outputs makefile   NAME=default words, for the Makefile
    python3 -m retinanet.settings_outputs help       the settings part of `make help`
    python3 -m retinanet.settings_outputs docs       rewrite the settings table in docs/settings.md
"""

import re
import shlex
import sys

from retinanet import PROJECT_ROOT
from retinanet.settings import SETTINGS, SettingError, eager_model, ray_workers

RAY_RUNNER = "retinanet.ray_sut:RayRunner"  # WORKERS, RAY_ADDRESS: main.py's --runner


def harness_args(resolved):
    """python/main.py's arguments for these settings (the run folder's own are run.py's)."""
    args = []
    for setting in SETTINGS:
        value = resolved[setting.name]
        if setting.name == "MODEL_IMPL":  # the native model: main.py's --eager-model (0031)
            args += ["--eager-model", eager_model(resolved)] * bool(eager_model(resolved))
        if not setting.flag or value in ("", "auto"):
            continue
        if setting.switch:
            args += [setting.flag] if value == "1" else []
        else:
            args += [setting.flag, value]
    if ray_workers(resolved):
        args += ["--runner", RAY_RUNNER]
    return args + shlex.split(resolved["HARNESS_ARGS"])


def stall_seconds(resolved):
    """STALL_TIMEOUT for the model check and the guard: 0 is derived as they run."""
    return "0" if resolved["STALL_TIMEOUT"] == "auto" else resolved["STALL_TIMEOUT"]


def device_environment(device):
    """What the harness's backends read: a cpu run hides the GPUs; USE_GPU=yes makes an
    onnxruntime gpu run fail rather than use the CPU (patch 0020)."""
    return {"CUDA_VISIBLE_DEVICES": "", "USE_GPU": "no"} if device == "cpu" else {"USE_GPU": "yes"}


def guard_args(mode, resolved, images):
    """The accuracy guard's arguments; none where it does not run.

    It does not run in plain fp32, in performance mode, or with GUARD_IMAGES=0."""
    faster = "1" in (resolved["COMPILE"], resolved["NNPACK"]) or resolved["PRECISION"] != "fp32"
    if mode != "accuracy" or not faster or resolved["GUARD_IMAGES"] == "0":
        return []
    args = [
        "--model",
        resolved["MODEL"],
        "--data-dir",
        resolved["DATA_DIR"],
        "--precision",
        resolved["PRECISION"],
        "--images",
        str(min(int(resolved["GUARD_IMAGES"]), images)),
        "--stall-timeout",
        stall_seconds(resolved),
    ]
    args += ["--channels-last"] * (resolved["CHANNELS_LAST"] == "1") + ["--freeze"] * (
        resolved["FREEZE"] == "1"
    )
    args += ["--model-factory", resolved["MODEL_FACTORY"]] * bool(resolved["MODEL_FACTORY"])
    if resolved["MODEL_IMPL"] == "native":  # against the archive's own code, as TorchScript
        args += ["--eager-model", eager_model(resolved), "--reference-archive"]
    args += ["--compile"] * (resolved["COMPILE"] == "1")
    return args + ["--trust-pickle"] * (resolved["TRUST_MODEL"] == "1")


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


# -- the Makefile, make help and docs/settings.md ------------------------------------------

SETTINGS_PAGE = PROJECT_ROOT / "docs" / "settings.md"
TABLE_BEGIN = (
    "<!-- settings: generated from retinanet/settings.py by "
    "'python3 -m retinanet.settings_outputs docs' -->"
)
TABLE_END = "<!-- end of settings -->"


def makefile_words():
    """NAME=default words, which make reads."""
    for setting in SETTINGS:
        assert not re.search(r"[\s=$'\"]", setting.default), setting
    return " ".join(f"{s.name}={s.default}" for s in SETTINGS)


def help_lines():
    return [
        f"  \033[36m{s.name:<22}\033[0m {s.doc} (default: {s.default or 'empty'})" for s in SETTINGS
    ]


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
        print(makefile_words())
    elif action == "help":
        print("\n".join(help_lines()))
    elif action == "docs":
        SETTINGS_PAGE.write_text(settings_page_text(SETTINGS_PAGE.read_text()))
        print(f"settings: {SETTINGS_PAGE} updated")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
