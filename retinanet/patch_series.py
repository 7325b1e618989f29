"""Apply, revert and check the patch series (patches/*.patch) on vendor/inference.

The state of the checkout is read, never remembered: the pinned tree plus the first k
patches is computed in a scratch index and compared with the checkout, so applying is
idempotent, a half-applied series is finished, and local edits that are not ours are
refused. Standard library only: setup.sh runs this before any environment exists.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from retinanet import PROJECT_ROOT, UPSTREAM

PATCH_DIR = PROJECT_ROOT / "patches"
PATCH_NAME = re.compile(r"^(\d{4})-[a-z0-9][a-z0-9.-]*\.patch$")
UPSTREAM_STATUS = re.compile(
    r"^Upstream-Status: (Pending|Accepted|Denied|Backport \[.+\]|Submitted \[.+\]|Inappropriate "
    r"\[.+\])$",
    re.M,
)


class PatchError(Exception):
    pass


def git(*args, cwd=UPSTREAM, env=None, check=True):
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PatchError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc


def pinned_commit(project=PROJECT_ROOT):
    """The upstream commit the project pins: the gitlink of vendor/inference."""
    out = git("ls-files", "--stage", "--", "vendor/inference", cwd=project).stdout.split()
    if not out or out[0] != "160000":
        raise PatchError(
            "vendor/inference is not a submodule in this checkout; clone the project with git"
        )
    return out[1]


def series(patch_dir=PATCH_DIR):
    return sorted(Path(patch_dir).glob("*.patch"))


def header_problems(patches):
    """Lint the series as a whole: names, numbering, and each patch's header."""
    problems = []
    for expected, patch in enumerate(patches, start=1):
        match = PATCH_NAME.match(patch.name)
        if not match:
            problems.append(f"{patch.name}: name is not NNNN-topic.patch")
        elif int(match.group(1)) != expected:
            problems.append(
                f"{patch.name}: numbering has a gap or repeat, expected {expected:04d}-"
            )
        text = patch.read_text()
        head, _, diff = text.partition("\n---\n")
        if not re.match(r"^From [0-9a-f]{40} ", text):
            problems.append(f"{patch.name}: not git format-patch output (no 'From <sha>' line)")
        if not re.search(r"^Subject: \[PATCH[^\]]*\] \S", head, re.M):
            problems.append(f"{patch.name}: no 'Subject: [PATCH] ...' line")
        body = head.split("\n\n", 1)[1] if "\n\n" in head else ""
        if len(UPSTREAM_STATUS.sub("", body).strip()) < 40:
            problems.append(f"{patch.name}: the message must say what the patch changes and why")
        if not UPSTREAM_STATUS.search(head):
            problems.append(
                f"{patch.name}: no valid 'Upstream-Status:' trailer "
                "(Pending, Accepted, Denied, Backport [..], Submitted [..], Inappropriate [..])"
            )
        if "\ndiff --git " not in "\n" + diff:
            problems.append(f"{patch.name}: contains no diff")
    return problems


def failing_file(stderr):
    match = re.search(r"error: patch failed: (\S+?):\d+", stderr) or re.search(
        r"error: (\S+): (?:does not exist in index|patch does not apply|already exists)", stderr
    )
    return match.group(1) if match else stderr.strip().splitlines()[-1] if stderr.strip() else "?"


def series_trees(upstream, base, patches, reverse_check=False):
    """Tree ids of base, base+0001, base+0001+0002, ...; raises naming the first patch
    that does not apply. With reverse_check, also reverts the series in the scratch index
    and checks that it gives back the base tree."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        git("read-tree", base, cwd=upstream, env=env)
        trees = [git("rev-parse", f"{base}^{{tree}}", cwd=upstream).stdout.strip()]
        for patch in patches:
            proc = git("apply", "--cached", str(patch), cwd=upstream, env=env, check=False)
            if proc.returncode != 0:
                raise PatchError(
                    f"{patch.name} does not apply to {base[:12]}: {failing_file(proc.stderr)} "
                    "(refresh the patch against the pinned upstream)"
                )
            trees.append(git("write-tree", "--missing-ok", cwd=upstream, env=env).stdout.strip())
        if reverse_check:
            for patch in reversed(patches):
                proc = git(
                    "apply", "-R", "--cached", str(patch), cwd=upstream, env=env, check=False
                )
                if proc.returncode != 0:
                    raise PatchError(
                        f"{patch.name} does not reverse cleanly: {failing_file(proc.stderr)}"
                    )
            if git("write-tree", "--missing-ok", cwd=upstream, env=env).stdout.strip() != trees[0]:
                raise PatchError("reverting the series does not give back the pinned tree")
        return trees


def require_checkout(upstream):
    if not (Path(upstream) / ".git").exists():
        raise PatchError(f"{upstream} is not checked out: run 'make setup'")


def applied_count(upstream, pin, patches):
    """How many patches of the series the checkout holds, or raise if it holds something else."""
    require_checkout(upstream)
    head = git("rev-parse", "HEAD", cwd=upstream).stdout.strip()
    if head != pin:
        raise PatchError(
            f"{upstream} is at {head[:12]}, not at the pinned {pin[:12]}: "
            "run 'git submodule update vendor/inference' or 'make setup'"
        )
    closest = None
    for count, tree in enumerate(series_trees(upstream, pin, patches)):
        differ = set(git("diff", "--name-only", tree, cwd=upstream).stdout.split())
        differ |= set(git("diff", "--cached", "--name-only", tree, cwd=upstream).stdout.split())
        if not differ:
            return count
        if closest is None or len(differ) < len(closest):
            closest = differ
    raise PatchError(
        f"{upstream} has local edits that are not the patch series ({', '.join(sorted(closest))}); "
        f"keep them with 'git -C {upstream} stash', or drop them with "
        f"'git -C {upstream} checkout -- .', then run 'make patch'"
    )


def apply(upstream=UPSTREAM, patches=None, pin=None):
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    if done == len(patches):
        print(f"patch series already applied ({len(patches)} patches)")
        return
    for patch in patches[done:]:
        git("apply", "--index", str(patch), cwd=upstream)
        print(f"applied {patch.name}")


def revert(upstream=UPSTREAM, patches=None, pin=None):
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    if done == 0:
        print("no patch of the series is applied")
        return
    for patch in reversed(patches[:done]):
        git("apply", "-R", "--index", str(patch), cwd=upstream)
        print(f"reverted {patch.name}")


def verify(upstream=UPSTREAM, patches=None, pin=None):
    """Raise unless the checkout holds exactly the whole series."""
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    if done != len(patches):
        raise PatchError(
            f"{upstream} holds {done} of the {len(patches)} patches "
            f"(next: {patches[done].name}); run 'make patch'"
        )
    print(f"upstream {pin[:12]} with {len(patches)} patches applied")


def check(upstream=UPSTREAM, patches=None, pin=None):
    """Lint the series and apply then revert it on the pinned tree; the checkout is not touched."""
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    require_checkout(upstream)
    problems = header_problems(patches)
    if problems:
        raise PatchError("\n".join(problems))
    series_trees(upstream, pin, patches, reverse_check=True)
    print(f"{len(patches)} patches: headers complete, apply and revert cleanly on {pin[:12]}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["apply", "revert", "verify", "check"])
    parser.add_argument(
        "--upstream", type=Path, default=UPSTREAM, help="upstream checkout (default: %(default)s)"
    )
    args = parser.parse_args()
    action = {"apply": apply, "revert": revert, "verify": verify, "check": check}[args.action]
    try:
        action(args.upstream)
    except PatchError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
