"""One benchmark run, from its settings to its verdict: what `make eval` and `make perf` run
(through run_eval.sh), in one process.

  1. the checks, before anything is made: the patch series applied, every setting valid and
     resolved, the dataset, the model file, the GPU and the model itself (preflight.py);
     each problem is one line
  2. a new run folder (run_folder.py) and its run.json (run_record.py)
  3. upstream's run_local.sh, as this process's child, its output into harness.log
  4. for an accuracy run the accuracy tool (in this process) and, for settings that are
     not plain fp32, the accuracy guard (a child)
  5. summary.json with the v5.1 rules' verdict, result.txt, and the run folder's line

Ctrl-C or TERM stops the harness at once and records the run as failed; so does a failure
anywhere, with its reason on one line. Settings come from the environment, as make passes
them; COMPLIANCE_TEST=TEST01 (make compliance) makes a performance run upstream's TEST01.

    python -m retinanet.run accuracy|performance
"""

import contextlib
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

from retinanet import (
    HARNESS,
    PROJECT_ROOT,
    UPSTREAM,
    patch_series,
    preflight,
    rules,
    run_folder,
    run_record,
    run_summary,
    settings,
    settings_outputs,
)
from retinanet.loadgen_log import LogError, headline_lines

MODES = ("accuracy", "performance")
ACCURACY_TOOL = HARNESS / "tools" / "accuracy-openimages.py"
COMPLIANCE_TESTS = ("TEST01",)  # RetinaNet's only one
STOP_SECONDS = 10  # for the harness to end after TERM, before KILL


class Failed(Exception):
    """The run failed: the reason, one line."""


class Interrupted(BaseException):
    """Ctrl-C or TERM: like KeyboardInterrupt, no `except Exception` may swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def interrupted(signum, frame):
    raise Interrupted(signum)


def say(text):
    """run_eval.sh's lines: on stderr, beside Python's own errors."""
    print(text, file=sys.stderr, flush=True)


# -- the checks ---------------------------------------------------------------------------


def checked(mode):
    """The settings resolved and everything checked, before a run folder exists: a dict of
    what the run needs. Raises SystemExit with the problems, one line each."""
    try:
        patch_series.whole_series()
    except patch_series.PatchError as error:
        raise SystemExit(f"error: {error}") from None
    resolved, requested, images, found = preflight.check(os.environ)
    found += preflight.rules_warnings(mode, resolved, images)
    for warning in found:
        say(f"warning: {warning}")
    # what the harness's backends read, for this process's model check and every child
    os.environ.update(settings_outputs.device_environment(resolved["DEVICE"]))
    say(preflight.model_contract(resolved, images))
    compliance = compliance_test(mode)
    return {
        "mode": mode,
        "resolved": resolved,
        "requested": requested,
        "images": images,
        "cache": preflight.cache_folder(resolved),
        "compliance": compliance,
        "applied": len(patch_series.series()),  # whole_series() found them all
    }


def compliance_test(mode):
    """COMPLIANCE_TEST, checked: empty, or TEST01 on a performance run with its audit.config."""
    test = os.environ.get("COMPLIANCE_TEST", "")
    if not test:
        return None
    if test not in COMPLIANCE_TESTS or mode != "performance":
        raise SystemExit(
            f"run_eval: error: COMPLIANCE_TEST={test}: only TEST01, on a performance run, "
            "applies to RetinaNet"
        )
    if not audit_config(test).is_file():
        raise SystemExit(
            f"run_eval: error: {audit_config(test)} not found: run './setup.sh upstream' "
            "(make setup)"
        )
    return test


def audit_config(test):
    """LoadGen reads the audit settings from this file."""
    return UPSTREAM / "compliance" / test / "retinanet" / "audit.config"


# -- the run ------------------------------------------------------------------------------


class Run:
    """One run in its folder, and the child process running now (the harness, the guard)."""

    def __init__(self, checks, run_dir):
        self.checks = checks
        self.settings = checks["resolved"]
        self.run_dir = run_dir
        self.child = None

    def path(self, name):
        return self.run_dir / name

    def harness_command(self):
        args = settings_outputs.harness_args(self.settings) + ["--cache_dir", self.checks["cache"]]
        args += ["--user_conf", str(self.path(run_folder.USER_CONF))]
        if self.checks["compliance"]:
            args += ["--audit_conf", str(audit_config(self.checks["compliance"]))]
        if self.checks["mode"] == "accuracy":
            args.append("--accuracy")
        s = self.settings
        return ["./run_local.sh", s["BACKEND"], "retinanet", s["DEVICE"], *args]

    def harness_environment(self):
        """Every setting as resolved, and what run_local.sh reads; python3 is this one."""
        bin_dir = os.path.dirname(sys.executable)
        paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
        return {
            **os.environ,
            **self.settings,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            # MODEL_FACTORY modules import from the project folder, as well as from PYTHONPATH
            "PYTHONPATH": ":".join(dict.fromkeys(paths)),
            "OUTPUT_DIR": str(self.run_dir),
            "MODEL_DIR": os.path.dirname(self.settings["MODEL"]),
        }

    def harness(self):
        """run_local.sh to its end, its output on ours and in harness.log, while run.json is
        written (each takes seconds, on a core of its own)."""
        command = self.harness_command()
        s = self.settings
        print(
            f"run_eval: {self.checks['mode']} run, {s['BACKEND']}, {s['SCENARIO']}, "
            f"{s['DEVICE']}, {s['PRECISION']}, batch {s['BATCH_SIZE']}, "
            f"{self.checks['images']} images -> {self.run_dir}"
        )
        with open(self.path(run_folder.HARNESS_LOG), "w") as log:
            self.child = subprocess.Popen(
                command,
                cwd=HARNESS,
                env=self.harness_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            copying = threading.Thread(target=tee, args=(self.child.stdout, log), daemon=True)
            copying.start()
            try:
                self.record(command)
                status = self.child.wait()
            except BaseException as error:
                if isinstance(error, Interrupted):
                    ignore_signals()
                self.stop_child()
                raise
            finally:
                copying.join()  # the harness's last lines, before its log closes
            self.child = None
        if status != 0:
            # the harness ends at its first failure with one line that says why (failfast.py)
            reason = run_folder.harness_error(self.run_dir)
            if not reason:
                status = 128 - status if status < 0 else status
                log = self.path(run_folder.HARNESS_LOG)
                raise Failed(f"the harness exited with status {status}; see {log}")
            raise Failed(reason.replace("--stall-timeout", "STALL_TIMEOUT"))

    def record(self, command):
        checks = self.checks
        record = {
            "mode": checks["mode"],
            **settings.record(self.settings),
            "images": str(checks["images"]),
            "cache": checks["cache"],
        }
        try:
            run_record.start(
                self.run_dir,
                record,
                command,
                os.getpid(),
                checks["requested"],
                checks["compliance"],
                checks["applied"],
            )
        except Exception as error:  # the run is worth nothing without its record
            traceback.print_exc()
            raise Failed(f"run_record.py could not write {self.path(run_folder.RECORD)}") from error

    def accuracy(self):
        """The accuracy tool's mAP beside the target, into result.txt; then the guard's line."""
        output = self.path(run_folder.ACCURACY_TXT)
        with open(output, "w") as log:
            both = Tee(sys.stdout, log)  # its stderr too, as 2>&1 would
            with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
                accuracy_tool(
                    self.path(run_folder.LOADGEN_ACCURACY),
                    self.settings["DATA_DIR"],
                    self.path(run_folder.ACCURACY_JSON),
                )
        try:
            found = run_summary.against_target(run_folder.accuracy_map(self.run_dir))
        except LogError:
            raise Failed(f"tools/accuracy-openimages.py printed no mAP; see {output}") from None
        verdict = "meets" if found["meets_target"] else "is below"
        self.path(run_folder.RESULT).write_text(
            f"mAP {found['map']:.3f}% on {self.checks['images']} images: {verdict} the MLPerf "
            f"target {found['target']}% (99% of {found['reference']}%)\n"
        )
        self.guard()

    def guard(self):
        """The same model in fp32 on a few images, for settings that are not plain fp32."""
        args = settings_outputs.guard_args("accuracy", self.settings, self.checks["images"])
        if not args:
            return
        images = min(int(self.settings["GUARD_IMAGES"]), self.checks["images"])
        print(f"run_eval: accuracy guard: the same model in fp32 on {images} images")
        command = [sys.executable, "-m", "retinanet.accuracy_guard", *args]
        command += ["--out", str(self.path(run_folder.GUARD_JSON))]
        with open(self.path(run_folder.GUARD_LOG), "w") as log:
            self.child = subprocess.Popen(
                command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
            )
            printed, _ = self.child.communicate()
            status, self.child = self.child.returncode, None
        if status != 0:
            reason = run_folder.guard_error(self.run_dir)
            raise Failed(
                f"the accuracy guard failed: {reason}"
                if reason
                else f"the accuracy guard failed; see {self.path(run_folder.GUARD_LOG)}"
            )
        last = printed.splitlines()[-1:]
        with open(self.path(run_folder.RESULT), "a") as result:
            result.writelines(f"{line}\n" for line in last)

    def performance(self):
        """LoadGen's own lines for the result, into result.txt."""
        try:
            lines = headline_lines(self.run_dir)
        except LogError:
            lines = []
        if not lines:
            raise Failed(f"no LoadGen summary in {self.run_dir}")
        self.path(run_folder.RESULT).write_text("".join(f"{line}\n" for line in lines))

    def finish(self):
        """run.json and summary.json as completed; the rules' verdict into result.txt."""
        error = run_record.finish(self.run_dir, "completed")
        if error:
            say(f"run_record: error: {error}")
            return 1
        summary = run_folder.read_json(self.run_dir, run_folder.SUMMARY)
        with open(self.path(run_folder.RESULT), "a") as result:
            result.writelines(f"{line}\n" for line in rules.lines(summary["rules"]))
        print()
        print(self.path(run_folder.RESULT).read_text(), end="")
        print(run_folder.line(self.run_dir))
        return 0

    def stop_child(self):
        """TERM the running child and everything under it, children first; KILL what is
        left after STOP_SECONDS."""
        child, self.child = self.child, None
        if child is None:
            return
        for pid in [*descendants(child.pid), child.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            child.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(child.pid), child.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child.wait()

    def failed(self, reason):
        """Record the failure in run.json and summary.json, and say it."""
        self.stop_child()
        try:
            run_record.finish(self.run_dir, "failed", reason)
        except Exception:  # the line below still says what happened
            traceback.print_exc()
        say(f"run_eval: run failed ({reason}); its folder is {self.run_dir}")

    def go(self):
        """The run from its folder on: the exit status."""
        try:
            shutil.copy(self.settings["USER_CONF"], self.path(run_folder.USER_CONF))
            self.harness()
            if self.checks["mode"] == "accuracy":
                self.accuracy()
            else:
                self.performance()
            return self.finish()
        except Failed as failure:
            self.failed(str(failure))
            return 2
        except Interrupted as signum:
            ignore_signals()
            self.failed(f"interrupted by signal {signum.signum}")
            return 128 + signum.signum
        except Exception as error:
            traceback.print_exc()
            self.failed(f"{type(error).__name__}: {error}".splitlines()[0])
            return 1


class Tee:
    """A text stream that writes to two."""

    def __init__(self, first, second):
        self.streams = (first, second)

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


def tee(source, log):
    """Each line of source onto our stdout and into log, as it comes."""
    for line in source:
        sys.stdout.write(line)
        log.write(line)
        log.flush()


def accuracy_tool(accuracy_log, data_dir, output):
    """Upstream's tools/accuracy-openimages.py, in this process as its own main."""
    argv = sys.argv
    sys.argv = [str(ACCURACY_TOOL), "--mlperf-accuracy-file", str(accuracy_log)]
    sys.argv += ["--openimages-dir", str(data_dir), "--output-file", str(output)]
    try:
        runpy.run_path(str(ACCURACY_TOOL), run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise Failed(f"tools/accuracy-openimages.py exited with status {exit.code}") from None
    except Exception as error:
        traceback.print_exc()
        raise Failed(
            f"tools/accuracy-openimages.py failed: {type(error).__name__}: {error}".splitlines()[0]
        ) from None
    finally:
        sys.argv = argv


def descendants(pid, children=None):
    """The processes under pid, deepest first (their parents read from /proc)."""
    if children is None:
        children = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):  # ended meanwhile
                continue
            children.setdefault(parent, []).append(int(stat.parent.name))
    found = []
    for child in children.get(pid, []):
        found += descendants(child, children) + [child]
    return found


def ignore_signals():
    """While a failure is recorded (about a second): a second Ctrl-C must not cut it short."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def main():
    sys.stdout.reconfigure(line_buffering=True)  # in order with the harness's lines and ours
    mode = sys.argv[1] if len(sys.argv) == 2 else ""
    if mode not in MODES:
        say("run_eval: error: usage: run_eval.sh accuracy|performance")
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted)
    try:
        checks = checked(mode)
        resolved = checks["resolved"]
        os.makedirs(checks["cache"], exist_ok=True)
        try:
            run_dir = run_folder.create(
                resolved["RESULTS_DIR"],
                mode,
                resolved["SCENARIO"],
                resolved["DEVICE"],
                checks["compliance"],
            )
        except OSError as error:
            raise SystemExit(
                f"run_eval: error: could not create a run folder under "
                f"{resolved['RESULTS_DIR']}: {error}"
            ) from None
    except SystemExit as stop:
        if stop.code not in (None, 0):
            say(str(stop.code))
        return 2
    except Interrupted as signum:  # nothing made yet: nothing to record
        return 128 + signum.signum
    return Run(checks, run_dir).go()


if __name__ == "__main__":
    sys.exit(main())
