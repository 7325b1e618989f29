"""Apply, revert and check the patch series (patches/*.patch) on vendor/inference; edit it
as git commits, export it back, and replay it onto a new upstream commit.

The state of the checkout is read, never remembered: the pinned tree plus the first k
patches is computed in a scratch index and compared with the checkout, so applying is
idempotent, a half-applied series is finished, and local edits that are not ours are
refused. Standard library only: setup.sh runs this before any environment exists.

Two states of vendor/inference:
  normal   HEAD detached at the pin, the series applied to index and work tree
           (apply, verify, runs and run records need this one)
  editing  HEAD on branch 'patches': the pin plus one commit per patch (edit), to change
           with plain git; export writes the commits back to patches/ and returns to normal

A tree without git (a copy of the project's files, as a GPU machine receives it: no .git,
and vendor/inference without its git dir) cannot compute the pin or the applied series.
So whenever git has confirmed the whole series applied (apply, export), a record of it is
written into vendor/inference (SERIES_RECORD: the pin, each patch's SHA-256 and the SHA-256 of
every file the series changed), ignored by the submodule's git. Without git, apply and
verify check that record against patches/ and the files, and say that they did.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from retinanet import PROJECT_ROOT, UPSTREAM
from retinanet.files import file_digest, write_json

PATCH_DIR = PROJECT_ROOT / "patches"
PATCH_NAME = re.compile(r"^(\d{4})-[a-z0-9][a-z0-9.-]*\.patch$")
UPSTREAM_STATUS = re.compile(
    r"^Upstream-Status: (Pending|Accepted|Denied|Backport \[.+\]|Submitted \[.+\]|Inappropriate "
    r"\[.+\])$",
    re.M,
)
# The series as commits, to edit with git (make patch-edit)
EDIT_BRANCH = "patches"
# A line that patch-edit adds to each commit message and export takes out again: it keeps
# the patch's file name through amend, reorder and rebase. Numbers follow the position.
TOPIC = "Patch-Topic: "
TOPIC_LINE = re.compile(rb"\n" + TOPIC.encode() + rb"[^\n]*")
# Everything a clone or a user's git config could vary is set, so that exporting an
# unchanged series gives the same bytes anywhere (--full-index: the abbreviation length
# of the "index" lines depends on how many objects the clone holds).
FORMAT_PATCH = (
    "format-patch",
    "--no-numbered",
    "--zero-commit",
    "--full-index",
    "--no-signature",
    "--subject-prefix=PATCH",
    "--no-cover-letter",
    "--no-thread",
    "--no-attach",
    "--no-notes",
    "--no-signoff",
    "--no-from",
    "--no-to",
    "--no-cc",
    "--no-add-header",
    "--no-base",
    "--encode-email-headers",
    "--binary",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--no-relative",
    "--find-renames",
    "--unified=3",
    "--inter-hunk-context=0",
    "--diff-algorithm=myers",
    "--indent-heuristic",
    "--no-color",
    "--no-ext-diff",
)
# git am that keeps each message and diff as they are, whatever the user's git config
GIT_AM = (
    "am",
    "--quiet",
    "--keep-non-patch",
    "--no-keep-cr",
    "--no-scissors",
    "--no-message-id",
    "--no-3way",
    "--whitespace=nowarn",
)


# In vendor/inference: what the series applied there was, for a copy that travels without git
SERIES_RECORD = ".retinanet-series.json"


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


def git_checkout(project=PROJECT_ROOT):
    """Whether the project is a git checkout (a worktree's .git is a file)."""
    return (Path(project) / ".git").exists()


def patch_digests(patches):
    return [{"name": p.name, "sha256": file_digest(p, "sha256")} for p in patches]


def content_digest(path):
    """SHA-256 of a file, None where there is none (a file the series deletes)."""
    return file_digest(path, "sha256") if Path(path).is_file() else None


def write_record(upstream, pin, patches):
    """Record the series git has just confirmed applied, and keep the record out of the
    submodule's git status."""
    changed = git("diff", "-z", "--name-only", "--no-renames", pin, cwd=upstream).stdout
    files = {name: content_digest(Path(upstream) / name) for name in changed.split("\0") if name}
    record = {"pin": pin, "patches": patch_digests(patches), "files": files}
    write_json(Path(upstream) / SERIES_RECORD, record)
    exclude = (
        Path(upstream) / git("rev-parse", "--git-path", "info/exclude", cwd=upstream).stdout.strip()
    )
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{SERIES_RECORD}" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("".join(f"{line}\n" for line in lines + [f"/{SERIES_RECORD}"]))


def record_name(upstream):
    """Where the record is, as a user of the project names it: vendor/inference/..."""
    path = Path(upstream).resolve() / SERIES_RECORD
    return str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)


def drop_record(upstream):
    (Path(upstream) / SERIES_RECORD).unlink(missing_ok=True)


def recorded(upstream=UPSTREAM, patches=None):
    """Without git: the record the patch step left in upstream, checked against patches/
    and against the files the series changed. Returns it, or raises saying what to do."""
    patches = series() if patches is None else patches
    bring = "then bring vendor/inference from there"
    try:
        record = json.loads((Path(upstream) / SERIES_RECORD).read_text())
    except (OSError, ValueError):
        raise PatchError(
            f"not a git checkout, and {upstream} holds no record of an applied series "
            f"({SERIES_RECORD}): in a git checkout of the project run 'make patch' (it writes the "
            f"record), {bring}"
        ) from None
    pin = record["pin"]
    applied = {p["name"]: p["sha256"] for p in record["patches"]}
    here = {p["name"]: p["sha256"] for p in patch_digests(patches)}
    if applied != here:
        differ = sorted(
            f"{name} {'new' if name not in applied else 'gone' if name not in here else 'changed'}"
            for name in applied.keys() | here.keys()
            if applied.get(name) != here.get(name)
        )
        raise PatchError(
            f"patches/ is not the series applied to {upstream} at {pin[:12]} "
            f"({', '.join(differ)}), and without git it cannot be applied again: in a git "
            f"checkout with these patches/ run 'make patch', {bring}"
        )
    changed = sorted(
        name
        for name, digest in record["files"].items()
        if content_digest(Path(upstream) / name) != digest
    )
    if changed:
        raise PatchError(
            f"{upstream} has changed since the series was applied at {pin[:12]} "
            f"({', '.join(changed[:5])}), and without git it cannot be checked or repaired: "
            f"in a git checkout run 'make patch', {bring}"
        )
    return record


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


def applied_count(upstream, pin, patches, then="make patch"):
    """How many patches of the series the checkout holds, or raise if it holds something else
    (the message ends by saying to run `then`)."""
    require_checkout(upstream)
    head = git("rev-parse", "HEAD", cwd=upstream).stdout.strip()
    if head != pin and (branch(upstream) == EDIT_BRANCH or in_progress(upstream)):
        raise PatchError(
            f"{upstream} holds the series as commits being edited (branch '{EDIT_BRANCH}'): "
            "write them back with 'make patch-export' (CONTRIBUTING.md)"
        )
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
        f"'git -C {upstream} checkout -- .', then run '{then}'"
    )


def apply(upstream=UPSTREAM, patches=None, pin=None):
    patches = series() if patches is None else patches
    if pin is None and not git_checkout():
        record = recorded(upstream, patches)
        print(
            f"patch series applied (recorded at {record['pin'][:12]}, {len(patches)} patches; "
            "not a git checkout)"
        )
        return
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    if done == len(patches):
        print(f"patch series already applied ({len(patches)} patches)")
    for patch in patches[done:]:
        git("apply", "--index", str(patch), cwd=upstream)
        print(f"applied {patch.name}")
    write_record(upstream, pin, patches)


def revert(upstream=UPSTREAM, patches=None, pin=None):
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    drop_record(upstream)
    if done == 0:
        print("no patch of the series is applied")
        return
    for patch in reversed(patches[:done]):
        git("apply", "-R", "--index", str(patch), cwd=upstream)
        print(f"reverted {patch.name}")


def whole_series(upstream=UPSTREAM, patches=None, pin=None):
    """Raise unless the checkout holds exactly the whole series; the line that says it does."""
    patches = series() if patches is None else patches
    if pin is None and not git_checkout():
        record = recorded(upstream, patches)
        return (
            f"upstream {record['pin'][:12]} with {len(patches)} patches applied "
            "(recorded; not a git checkout)"
        )
    pin = pin or pinned_commit()
    done = applied_count(upstream, pin, patches)
    if done != len(patches):
        raise PatchError(
            f"{upstream} holds {done} of the {len(patches)} patches "
            f"(next: {patches[done].name}); run 'make patch'"
        )
    return f"upstream {pin[:12]} with {len(patches)} patches applied"


def verify(upstream=UPSTREAM, patches=None, pin=None):
    print(whole_series(upstream, patches, pin))


def show_record(upstream=UPSTREAM, patches=None):
    """Without git, setup's upstream step: the pin as the patch step recorded it, checked."""
    record = recorded(upstream, patches)
    print(
        f"upstream at {record['pin'][:12]}, as the patch step recorded it in "
        f"{record_name(upstream)} (not a git checkout)"
    )


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


def branch(upstream):
    """The branch checked out in upstream, or "" when HEAD is detached."""
    return git("symbolic-ref", "-q", "--short", "HEAD", cwd=upstream, check=False).stdout.strip()


def in_progress(upstream):
    """The git command (rebase, am) that stopped in the middle of its work in upstream, or None."""
    for state in ("rebase-merge", "rebase-apply"):
        path = Path(upstream) / git("rev-parse", "--git-path", state, cwd=upstream).stdout.strip()
        if path.exists():
            return "am" if (path / "applying").exists() else "rebase"
    return None


def refuse_stopped(upstream, then):
    """Raise while a git rebase or am in upstream waits to be finished or dropped."""
    stopped = in_progress(upstream)
    if stopped:
        raise PatchError(
            f"{upstream} is in the middle of a git {stopped}: finish it "
            f"('git -C {upstream} {stopped} --continue') or drop it "
            f"('git -C {upstream} {stopped} --abort'), then {then}"
        )


def is_ancestor(upstream, older, newer):
    proc = git("merge-base", "--is-ancestor", older, newer, cwd=upstream, check=False)
    return proc.returncode == 0


def file_topic(name):
    """0011-openimages-resume.patch -> openimages-resume"""
    return name[len("0000-") : -len(".patch")]


def slug(subject):
    """A short file topic from a commit subject, for a commit that names none."""
    words = re.findall(r"[a-z0-9]+", subject.lower())
    name = words[0] if words else "patch"
    for word in words[1:]:
        if len(name) + 1 + len(word) > 40:
            break
        name += "-" + word
    return name


def commit_topics(upstream, revisions):
    """The topic of each commit of revisions, oldest first: its Patch-Topic line, or one
    made from its subject."""
    log = git("log", "--reverse", "--format=%H%n%B%x00", revisions, cwd=upstream).stdout
    topics = []
    for entry in filter(None, (entry.lstrip("\n") for entry in log.split("\0"))):
        commit, _, message = entry.partition("\n")
        found = re.findall(rf"^{TOPIC}(.*)$", message, re.M)
        if found and not PATCH_NAME.match(f"0000-{found[0]}.patch"):
            raise PatchError(
                f"commit {commit[:12]}: '{TOPIC}{found[0]}' is not a file topic "
                "(a-z, 0-9, '.' and '-')"
            )
        topics.append(found[0] if found else slug(message.partition("\n")[0]))
    return topics


def edit(upstream=UPSTREAM, patches=None, pin=None):
    """Put the series into upstream as commits on the pin, one per patch (git am keeps
    author, date and message), on branch 'patches', to edit with plain git."""
    patches = series() if patches is None else patches
    pin = pin or pinned_commit()
    require_checkout(upstream)
    if branch(upstream) == EDIT_BRANCH:
        count = git("rev-list", "--count", f"{pin}..HEAD", cwd=upstream).stdout.strip()
        print(
            f"{upstream} is on branch '{EDIT_BRANCH}' already ({count} commits on the pin): "
            "edit with git, then 'make patch-export'"
        )
        return
    applied_count(upstream, pin, patches, then="make patch-edit")  # refuses edits not ours
    if git(
        "rev-parse", "-q", "--verify", f"refs/heads/{EDIT_BRANCH}", cwd=upstream, check=False
    ).stdout:
        raise PatchError(
            f"{upstream} has a branch '{EDIT_BRANCH}' from an earlier edit: export it "
            f"('git -C {upstream} switch {EDIT_BRANCH}', then 'make patch-export') "
            f"or delete it ('git -C {upstream} branch -D {EDIT_BRANCH}'), then 'make patch-edit'"
        )
    if git("var", "GIT_COMMITTER_IDENT", cwd=upstream, check=False).returncode != 0:
        raise PatchError(
            "git needs a name and e-mail for the commits: 'git config --global user.name ...' "
            "and 'git config --global user.email ...', then run 'make patch-edit'"
        )
    with tempfile.TemporaryDirectory() as tmp:
        mails = []
        for patch in patches:
            head, separator, diff = patch.read_bytes().partition(b"\n---\n")
            mail = Path(tmp) / patch.name
            mail.write_bytes(
                head + f"\n{TOPIC}{file_topic(patch.name)}".encode() + separator + diff
            )
            mails.append(str(mail))
        # the series leaves the index and work tree, to come back as commits
        drop_record(upstream)
        git("reset", "-q", "--hard", pin, cwd=upstream)
        git("switch", "-q", "-c", EDIT_BRANCH, cwd=upstream)
        if mails:
            git(*GIT_AM, *mails, cwd=upstream)
    print(
        f"{upstream}: branch '{EDIT_BRANCH}', {len(patches)} commits on {pin[:12]}, one per patch. "
        "Edit with git (commit --amend, rebase -i, new commits with an Upstream-Status: line), "
        "then 'make patch-export'"
    )


def export(upstream=UPSTREAM, patch_dir=PATCH_DIR, base=None):
    """Write the commits base..HEAD (base: the pin) to patch_dir as NNNN-topic.patch, all or
    nothing, then put upstream back in the normal state: HEAD detached at base with the
    series applied to index and work tree, branch 'patches' gone."""
    base = base or pinned_commit()
    require_checkout(upstream)
    refuse_stopped(upstream, "export again")
    if branch(upstream) != EDIT_BRANCH:
        raise PatchError(
            f"{upstream} is not on branch '{EDIT_BRANCH}': run 'make patch-edit' first"
        )
    if not is_ancestor(upstream, base, "HEAD"):
        raise PatchError(
            f"branch '{EDIT_BRANCH}' does not start from {base[:12]}: "
            "move the series with 'make patch-rebase ONTO=<commit>'"
        )
    changed = git("status", "--porcelain", "--untracked-files=no", cwd=upstream).stdout.split("\n")
    changed = [line[3:] for line in changed if line]
    if changed:
        raise PatchError(
            f"{upstream} has changes that are not committed ({', '.join(changed)}): "
            "commit or stash them, then export"
        )
    commits = git("rev-list", "--reverse", f"{base}..HEAD", cwd=upstream).stdout.split()
    if git("rev-list", "--merges", f"{base}..HEAD", cwd=upstream).stdout:
        raise PatchError(f"branch '{EDIT_BRANCH}' has merge commits: make it a line of commits")
    patch_dir = Path(patch_dir)
    # on patch_dir's file system, so that the files move into place by rename
    with tempfile.TemporaryDirectory(dir=patch_dir, prefix=".export-") as tmp:
        out = Path(tmp) / "format-patch"
        git(*FORMAT_PATCH, "--output-directory", str(out), f"{base}..HEAD", cwd=upstream)
        mails = sorted(out.glob("*.patch"))
        if len(mails) != len(commits):  # format-patch skips a commit that changes nothing
            raise PatchError(
                f"nothing exported: branch '{EDIT_BRANCH}' has a commit without changes; drop it "
                f"(git -C {upstream} rebase -i {base[:12]}), then export again"
            )
        patches, by_name = [], {}
        topics = commit_topics(upstream, f"{base}..HEAD")
        for number, (commit, mail, topic) in enumerate(zip(commits, mails, topics), start=1):
            head, separator, diff = mail.read_bytes().partition(b"\n---\n")
            patch = Path(tmp) / f"{number:04d}-{topic}.patch"
            # a Patch-Topic line in a paragraph of its own leaves a blank line: drop it too
            patch.write_bytes(TOPIC_LINE.sub(b"", head).rstrip(b"\n") + separator + diff)
            patches.append(patch)
            by_name[patch.name] = commit
        problems = header_problems(patches)
        if problems:
            raise PatchError(
                "nothing exported, patches/ unchanged:\n"
                + "\n".join(f"{p} (commit {by_name[p.split(':')[0]][:12]})" for p in problems)
                + f"\nfix the commits (git -C {upstream} rebase -i {base[:12]}), then export again"
            )
        tree = git("rev-parse", "HEAD^{tree}", cwd=upstream).stdout.strip()
        if series_trees(upstream, base, patches)[-1] != tree:
            raise PatchError("nothing exported: the patches do not give back the tree of HEAD")
        old = {p.name: p.read_bytes() for p in series(patch_dir)}
        written = [p.name for p in patches if old.get(p.name) != p.read_bytes()]
        removed = sorted(old.keys() - by_name.keys())
        for name in written:
            os.replace(Path(tmp) / name, patch_dir / name)
        for name in removed:
            (patch_dir / name).unlink()
    # HEAD back to base, detached; index and work tree keep the edited tree: the series applied
    git("reset", "-q", "--soft", base, cwd=upstream)
    git("checkout", "-q", "--detach", cwd=upstream)
    git("branch", "-q", "-D", EDIT_BRANCH, cwd=upstream)
    write_record(upstream, base, series(patch_dir))
    for name in written:
        print(f"wrote {name}")
    for name in removed:
        print(f"removed {name}")
    changed = len(written) + len(removed) or "none"
    print(
        f"{patch_dir.name}/: {len(patches)} patches, {changed} changed; "
        f"{upstream} back at {base[:12]} with the series applied"
    )


def resolve(upstream, onto):
    """The commit that onto names in upstream, fetched from its origin when missing."""
    if onto.startswith("-"):
        raise PatchError(f"ONTO={onto} is not a commit or tag")
    found = git("rev-parse", "-q", "--verify", f"{onto}^{{commit}}", cwd=upstream, check=False)
    if found.returncode == 0:
        return found.stdout.strip()
    print(f"fetching {onto} from the origin of {upstream}")
    fetched = git("fetch", "-q", "origin", onto, cwd=upstream, check=False)
    if fetched.returncode != 0:
        raise PatchError(
            f"{onto} is not in {upstream}, and fetching it failed: {fetched.stderr.strip()}"
        )
    return git("rev-parse", "FETCH_HEAD^{commit}", cwd=upstream).stdout.strip()


def rebased(upstream, pin, target):
    """Whether HEAD already is the series on target (a stopped rebase finished by hand):
    target is in HEAD's history and no commit after it comes from the pin's history."""
    if not is_ancestor(upstream, target, "HEAD"):
        return False
    after = git("rev-list", f"{target}..HEAD", cwd=upstream).stdout
    return after == git("rev-list", f"{target}..HEAD", f"^{pin}", cwd=upstream).stdout


def rebase(onto, upstream=UPSTREAM, patch_dir=PATCH_DIR, project=PROJECT_ROOT):
    """Replay the series onto the upstream commit onto; on success export it and move the
    pin (the gitlink of vendor/inference in the project's index)."""
    if not onto:
        raise PatchError("say where to: make patch-rebase ONTO=<upstream commit or tag>")
    pin = pinned_commit(project)
    require_checkout(upstream)
    target = resolve(upstream, onto)
    where = target[:12] if target.startswith(onto) else f"{target[:12]} ({onto})"
    refuse_stopped(upstream, f"run 'make patch-rebase ONTO={onto}' again")
    if branch(upstream) != EDIT_BRANCH:
        edit(upstream, series(patch_dir), pin)
    if not rebased(upstream, pin, target):
        before = commit_topics(upstream, f"{pin}..HEAD")
        proc = git("rebase", "--onto", target, pin, cwd=upstream, check=False)
        stopped = git("rev-parse", "-q", "--verify", "REBASE_HEAD", cwd=upstream, check=False)
        if proc.returncode != 0 and not stopped.stdout:
            raise PatchError(f"git rebase failed in {upstream}: {proc.stderr.strip()}")
        if proc.returncode != 0:
            topics = commit_topics(upstream, f"{pin}..{stopped.stdout.strip()}")
            name = f"{len(topics):04d}-{topics[-1]}.patch"
            files = git("diff", "--name-only", "--diff-filter=U", cwd=upstream).stdout.split()
            raise PatchError(
                f"{name} does not apply to {where}: {', '.join(files) or '?'}\n"
                f"{upstream} stops in that patch, on branch '{EDIT_BRANCH}'. Fix it, then:\n"
                f"  git -C {upstream} add <file>...\n"
                f"  git -C {upstream} rebase --continue\n"
                f"  make patch-rebase ONTO={onto}\n"
                f"or give up with 'git -C {upstream} rebase --abort', then 'make patch-export'"
            )
        after = commit_topics(upstream, f"{target}..HEAD")
        for topic in before:
            if topic not in after:  # git rebase drops a commit that changes nothing any more
                print(f"dropped {topic}: {where} has its changes already")
    export(upstream, patch_dir, base=target)
    git("update-index", "--cacheinfo", f"160000,{target},vendor/inference", cwd=project)
    print(
        f"pin moved: vendor/inference {pin[:12]} -> {where}, staged in the "
        "project's index. Review and commit it with the series: "
        f"git add -A patches && git commit -m 'Move upstream to {onto}'"
    )
    versions = [
        git("show", f"{commit}:loadgen/VERSION.txt", cwd=upstream, check=False).stdout.strip()
        for commit in (pin, target)
    ]
    if versions[0] != versions[1]:
        print(f"LoadGen {versions[0]} -> {versions[1]}: run 'make loadgen'")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "action",
        choices=["apply", "revert", "verify", "recorded", "check", "edit", "export", "rebase"],
    )
    parser.add_argument(
        "--upstream", type=Path, default=UPSTREAM, help="upstream checkout (default: %(default)s)"
    )
    parser.add_argument("--onto", default="", help="rebase: the upstream commit or tag")
    args = parser.parse_args()
    actions = {
        "apply": apply,
        "revert": revert,
        "verify": verify,
        "recorded": show_record,
        "check": check,
        "edit": edit,
        "export": export,
        "rebase": lambda upstream: rebase(args.onto, upstream),
    }
    try:
        actions[args.action](args.upstream)
    except PatchError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
