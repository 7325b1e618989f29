"""make patch-edit / patch-export / patch-rebase on the real pinned upstream, each test in its
own copy of the project: round trips change no byte, an amended or a new commit changes
only its own patch, a commit without Upstream-Status is refused, a replay moves the pin, a
conflict stops at the patch that causes it, a patch upstream has taken is dropped."""

import os
import subprocess
import sys

import pytest
from helpers import git_state, make, patch_series_in

from retinanet import patch_series

N = len(patch_series.series())  # patches in the series
PIN = patch_series.pinned_commit()[:12]
HARNESS = "vision/classification_and_detection"
# the project's maintainers, as the existing patches name them
IDENTITY = ("Seed f1b2ff61 maintainers", "maintainers@users.noreply.r-seed-f1b2ff61.example")
NEW_MESSAGE = (
    "README: mention the overlay\n\n"
    "Readers of the harness's README learn that this checkout carries the\n"
    "retinanet overlay's patches, and where they come from.\n"
)


def git(repo, *args, env=None, stdin=None):
    proc = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def patch_files(project):
    return {p.name: p.read_bytes() for p in sorted((project / "patches").glob("*.patch"))}


def pinned(project):
    return git(project, "ls-files", "--stage", "vendor/inference").split()[1]


def upstream_commit(repo, message, path, text):
    """A commit on the pin that writes text to path, made with plumbing: nothing checked out."""
    index = repo / git(repo, "rev-parse", "--git-dir").strip() / "scratch-index"
    env = {"GIT_INDEX_FILE": str(index)}
    pin = git(repo, "rev-parse", PIN).strip()
    git(repo, "read-tree", pin, env=env)
    blob = git(repo, "hash-object", "-w", "--stdin", stdin=text).strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
    tree = git(repo, "write-tree", "--missing-ok", env=env).strip()
    index.unlink()
    return git(repo, "commit-tree", "-p", pin, "-m", message, tree).strip()


@pytest.fixture
def project(project_copy, monkeypatch):
    """A project copy in the normal state: its upstream clone at the pin, the series applied.
    The clone says it is partial (blob:none), as setup.sh's is: only then does git commit
    in the sparse checkout without the blobs outside it."""
    upstream = project_copy / "vendor" / "inference"
    git(upstream, "config", "remote.origin.promisor", "true")
    git(upstream, "config", "remote.origin.partialclonefilter", "blob:none")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", IDENTITY[0])
        monkeypatch.setenv(f"GIT_{role}_EMAIL", IDENTITY[1])
    applied = patch_series_in(project_copy, "apply")
    assert applied.returncode == 0, applied.stderr
    return project_copy


@pytest.mark.timeout(60)
def test_edit_then_export_changes_no_byte(project):
    upstream = project / "vendor" / "inference"
    before, state = patch_files(project), git_state(upstream)

    edit = make("patch-edit", cwd=project)
    assert f"branch 'patches', {N} commits on {PIN}, one per patch" in edit.stdout
    assert git(upstream, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (upstream / patch_series.SERIES_RECORD).exists()  # not the applied series now
    # one commit per patch, with the patch's author, date and subject
    log = git(upstream, "log", "--reverse", "--format=%ae|%aD|%s", f"{PIN}..HEAD").splitlines()
    for line, text in zip(log, before.values(), strict=True):
        email, date, subject = line.split("|", 2)
        head = text.decode().partition("\n\n")[0]
        assert f"<{email}>" in head and f"\nDate: {date}\n" in head
        assert " ".join(head.partition("Subject: [PATCH] ")[2].split()) == subject

    export = make("patch-export", cwd=project)
    assert f"patches/: {N} patches, none changed" in export.stdout
    assert patch_files(project) == before
    assert git_state(upstream) == state  # detached at the pin, the series applied
    assert git(upstream, "branch", "--list", "patches") == ""
    assert (upstream / patch_series.SERIES_RECORD).is_file()
    assert patch_series_in(project, "verify").stdout == f"upstream {PIN} with {N} patches applied\n"
    assert f"{N} patches: headers complete" in make("check-patches", cwd=project).stdout


@pytest.mark.timeout(60)
def test_edit_refuses_edits_that_are_not_the_series(project):
    upstream = project / "vendor" / "inference"
    edited = upstream / HARNESS / "user.conf"
    edited.write_text(edited.read_text() + "# my tuning\n")
    state = git_state(upstream)
    proc = make("patch-edit", check=False, cwd=project)
    assert proc.returncode != 0
    [error] = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        f"error: {upstream} has local edits that are not the patch series ({HARNESS}/user.conf); "
    )
    assert error.endswith("then run 'make patch-edit'")
    assert git_state(upstream) == state and git(upstream, "branch", "--list", "patches") == ""


@pytest.mark.timeout(60)
def test_amended_commit_changes_only_its_patch(project):
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    make("patch-edit", cwd=project)
    # the only patch of run_local.sh, not the last one: the commits after it are replayed
    [name] = [name for name in before if name.endswith("-run-local-quoting.patch")]
    commit = git(upstream, "log", "--format=%H", "--grep=^Patch-Topic: run-local-quoting$")
    script = upstream / HARNESS / "run_local.sh"
    script.write_text(script.read_text() + "# the overlay's run_eval.sh calls this script\n")
    git(upstream, "commit", "-q", "-a", f"--fixup={commit.strip()}")
    git(upstream, "rebase", "-q", "-i", "--autosquash", PIN, env={"GIT_SEQUENCE_EDITOR": "true"})

    export = make("patch-export", cwd=project)
    assert f"wrote {name}\n" in export.stdout
    after = patch_files(project)
    assert after.keys() == before.keys()
    assert [changed for changed in after if after[changed] != before[changed]] == [name]
    assert b"\n+# the overlay's run_eval.sh calls this script\n" in after[name]
    assert patch_series_in(project, "verify").returncode == 0
    make("check-patches", cwd=project)


@pytest.mark.timeout(90)
def test_new_commit_becomes_a_numbered_patch(project, tmp_path):
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    make("patch-edit", cwd=project)
    readme = upstream / HARNESS / "README.md"
    readme.write_text(readme.read_text() + "\nPatched by the retinanet overlay.\n")
    message = NEW_MESSAGE + "\nUpstream-Status: Inappropriate [overlay layout]\n"
    git(upstream, "commit", "-q", "-a", "-m", message)
    # move it to the front of the series: every patch after it takes the next number
    first = tmp_path / "first.py"
    first.write_text(
        "import sys\n"
        "lines = open(sys.argv[1]).read().splitlines(True)\n"
        "picks = [line for line in lines if line.startswith('pick ')]\n"
        "rest = [line for line in lines if not line.startswith('pick ')]\n"
        "open(sys.argv[1], 'w').writelines(picks[-1:] + picks[:-1] + rest)\n"
    )
    git(
        upstream,
        "rebase",
        "-q",
        "-i",
        PIN,
        env={"GIT_SEQUENCE_EDITOR": f"{sys.executable} {first}"},
    )

    make("patch-export", cwd=project)
    after = patch_files(project)
    new = "0001-readme-mention-the-overlay.patch"
    assert list(after) == [new] + [
        f"{number + 2:04d}{name[4:]}" for number, name in enumerate(before)
    ]
    assert list(after.values())[1:] == list(before.values())
    text = after[new].decode()
    assert text.startswith(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        f"From: {IDENTITY[0]}\n <{IDENTITY[1]}>\n"
    )
    assert "\nUpstream-Status: Inappropriate [overlay layout]\n---\n" in text
    assert "Patch-Topic" not in text and "\n-- \n" not in text
    assert (
        patch_series_in(project, "verify").stdout
        == f"upstream {PIN} with {N + 1} patches applied\n"
    )
    make("check-patches", cwd=project)

    # from now on the new patch keeps its name and bytes too
    make("patch-edit", cwd=project)
    assert f"patches/: {N + 1} patches, none changed" in make("patch-export", cwd=project).stdout
    assert patch_files(project) == after


@pytest.mark.timeout(60)
def test_export_refuses_a_commit_without_upstream_status(project):
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    make("patch-edit", cwd=project)
    readme = upstream / HARNESS / "README.md"
    readme.write_text(readme.read_text() + "\nPatched by the retinanet overlay.\n")
    git(upstream, "commit", "-q", "-a", "-m", NEW_MESSAGE)
    head = git(upstream, "rev-parse", "HEAD").strip()

    proc = make("patch-export", check=False, cwd=project)
    assert proc.returncode != 0
    assert "nothing exported, patches/ unchanged:\n" in proc.stdout
    assert (
        f"{N + 1:04d}-readme-mention-the-overlay.patch: no valid 'Upstream-Status:' trailer "
        "(Pending, Accepted, Denied, Backport [..], Submitted [..], Inappropriate [..]) "
        f"(commit {head[:12]})" in proc.stdout
    )
    assert patch_files(project) == before
    assert git(upstream, "rev-parse", "HEAD").strip() == head
    assert git(upstream, "branch", "--show-current") == "patches\n"

    # the trailer added, and a topic of the maintainer's own in a paragraph of its own
    message = NEW_MESSAGE + "\nUpstream-Status: Pending\n\nPatch-Topic: overlay-readme\n"
    git(upstream, "commit", "-q", "--amend", "-m", message)
    name = f"{N + 1:04d}-overlay-readme.patch"
    assert f"wrote {name}" in make("patch-export", cwd=project).stdout
    assert "\nUpstream-Status: Pending\n---\n" in patch_files(project)[name].decode()


@pytest.mark.timeout(60)
def test_rebase_onto_a_later_upstream_commit_moves_the_pin(project, tmp_path):
    """Upstream's origin gets a tag on a commit after the pin that touches a file no patch
    touches (a test of the mechanism); patch-rebase fetches it, replays, moves the pin."""
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", "--shared", str(upstream), str(origin))
    git(origin, "config", "uploadpack.allowFilter", "true")  # a blob:none fetch, as from GitHub
    news = f"{HARNESS}/NEWS.md"
    later = upstream_commit(origin, "upstream: news", news, "News of the harness.\n")
    git(origin, "tag", "v9.9.9", later)
    git(upstream, "remote", "set-url", "origin", str(origin))

    proc = make("patch-rebase", "ONTO=v9.9.9", cwd=project)
    assert "fetching v9.9.9 from the origin of" in proc.stdout
    assert f"pin moved: vendor/inference {PIN} -> {later[:12]} (v9.9.9), staged" in proc.stdout
    assert pinned(project) == later
    assert patch_files(project) == before  # nothing around the patches changed
    assert git(upstream, "rev-parse", "HEAD").strip() == later
    assert (upstream / news).read_text() == "News of the harness.\n"
    assert (
        patch_series_in(project, "verify").stdout
        == f"upstream {later[:12]} with {N} patches applied\n"
    )
    assert f"apply and revert cleanly on {later[:12]}" in make("check-patches", cwd=project).stdout


@pytest.mark.timeout(60)
def test_rebase_drops_a_patch_upstream_has_taken(project):
    """Upstream takes run-local-quoting as it is: the replay drops it and says so, and the
    patches after it move up one number."""
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    script = f"{HARNESS}/run_local.sh"  # only run-local-quoting patches it
    taken = upstream_commit(upstream, "upstream: quoting", script, (upstream / script).read_text())

    proc = make("patch-rebase", f"ONTO={taken}", cwd=project)
    assert f"dropped run-local-quoting: {taken[:12]} has its changes already" in proc.stdout
    names = list(before)
    dropped = [name.endswith("-run-local-quoting.patch") for name in names].index(True)
    expected = {name: before[name] for name in names[:dropped]}
    for number, name in enumerate(names[dropped + 1 :], start=dropped + 1):
        expected[f"{number:04d}{name[4:]}"] = before[name]
    assert patch_files(project) == expected
    assert pinned(project) == taken
    assert (
        patch_series_in(project, "verify").stdout
        == f"upstream {taken[:12]} with {N - 1} patches applied\n"
    )


@pytest.mark.timeout(90)
def test_rebase_stops_at_the_patch_that_conflicts(project):
    """An upstream commit changes a line that images-in-validation-data changes too: the
    replay stops there, names it, and continues as the message says once it is fixed."""
    upstream = project / "vendor" / "inference"
    before = patch_files(project)
    [name] = [name for name in before if name.endswith("-images-in-validation-data.patch")]
    dataset = f"{HARNESS}/python/openimages.py"
    old = "src = os.path.join(data_path, image_name)"
    text = git(upstream, "show", f"{PIN}:{dataset}")
    conflicting = upstream_commit(
        upstream,
        "upstream: str paths",
        dataset,
        text.replace(old, "src = os.path.join(data_path, str(image_name))"),
    )

    proc = make("patch-rebase", f"ONTO={conflicting}", check=False, cwd=project)
    assert proc.returncode != 0
    assert f"error: {name} does not apply to {conflicting[:12]}: {dataset}\n" in proc.stdout
    for step in (
        f"git -C {upstream} add <file>...",
        f"git -C {upstream} rebase --continue",
        f"make patch-rebase ONTO={conflicting}",
        f"git -C {upstream} rebase --abort",
    ):
        assert step in proc.stdout
    assert pinned(project).startswith(PIN) and patch_files(project) == before
    refused = patch_series_in(project, "verify")
    assert refused.returncode == 1 and "write them back with 'make patch-export'" in refused.stderr

    # the maintainer's fix: the patch's version of the file, with upstream's change in it
    git(upstream, "checkout", "--theirs", "--", dataset)
    source = (upstream / dataset).read_text()
    new = "src = os.path.join(self.image_dir, str(image_name))"
    (upstream / dataset).write_text(
        source.replace(new.replace("str(image_name)", "image_name"), new)
    )
    git(upstream, "add", dataset)
    git(upstream, "rebase", "--continue", env={"GIT_EDITOR": "true"})

    done = make("patch-rebase", f"ONTO={conflicting}", cwd=project)
    assert f"pin moved: vendor/inference {PIN} -> {conflicting[:12]}, staged" in done.stdout
    assert pinned(project) == conflicting
    assert f"+                {new}\n".encode() in patch_files(project)[name]
    assert patch_series_in(project, "verify").returncode == 0
    make("check-patches", cwd=project)
