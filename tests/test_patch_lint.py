"""The patch series' lint (patch_series.header_problems), which make check-patches runs before
it applies anything: the real series passes, and each way a patch file can be wrong is named,
alone, on the patch it is in. No upstream needed."""

import shutil

import pytest

from retinanet import patch_series

SERIES = patch_series.series()
GOOD = SERIES[1]  # 0002: a message of several lines and one trailer
GAP = "numbering has a gap or repeat, expected 0002-"


def test_the_series_and_a_renumbered_copy_pass(tmp_path):
    assert patch_series.header_problems(SERIES) == []
    for number, patch in enumerate(SERIES[3:6], start=1):
        shutil.copy(patch, tmp_path / f"{number:04d}{patch.name[4:]}")
    assert patch_series.header_problems(patch_series.series(tmp_path)) == []


def first_line_out(text):
    return text.split("\n", 1)[1]


def subject_out(text):
    head, rest = text.split("\nSubject: ", 1)
    return head + "\nTopic: " + rest


def short_message(text):
    headers, rest = text.split("\n\n", 1)
    _, diff = rest.split("\n---\n", 1)
    return f"{headers}\n\nFix it.\n\nUpstream-Status: Pending\n---\n{diff}"


def trailer_out(text):
    return text.replace("Upstream-Status: Pending\n", "")


def trailer_without_reason(text):
    return text.replace("Upstream-Status: Pending\n", "Upstream-Status: Inappropriate\n")


def diff_out(text):
    return text.split("\ndiff --git ", 1)[0] + "\n"


@pytest.mark.parametrize(
    "edit, problem",
    [
        (first_line_out, "not git format-patch output (no 'From <sha>' line)"),
        (subject_out, "no 'Subject: [PATCH] ...' line"),
        (short_message, "the message must say what the patch changes and why"),
        (
            trailer_out,
            "no valid 'Upstream-Status:' trailer (Pending, Accepted, Denied, Backport [..], "
            "Submitted [..], Inappropriate [..])",
        ),
        (
            trailer_without_reason,
            "no valid 'Upstream-Status:' trailer (Pending, Accepted, Denied, Backport [..], "
            "Submitted [..], Inappropriate [..])",
        ),
        (diff_out, "contains no diff"),
    ],
)
def test_each_broken_header_is_named_alone(tmp_path, edit, problem):
    assert "Upstream-Status: Pending\n" in GOOD.read_text()
    shutil.copy(SERIES[0], tmp_path / "0001-first.patch")
    (tmp_path / "0002-broken.patch").write_text(edit(GOOD.read_text()))
    assert patch_series.header_problems(patch_series.series(tmp_path)) == [
        f"0002-broken.patch: {problem}"
    ]


@pytest.mark.parametrize(
    "names, problem",
    [
        (
            ["0001-first.patch", "0002_second.patch"],
            "0002_second.patch: name is not NNNN-topic.patch",
        ),
        (
            ["0001-first.patch", "0002-Second.patch"],
            "0002-Second.patch: name is not NNNN-topic.patch",
        ),
        (["0001-first.patch", "0003-gap.patch"], "0003-gap.patch: " + GAP),
        (["0001-first.patch", "0001-again.patch"], "0001-first.patch: " + GAP),
    ],
)
def test_names_and_numbering(tmp_path, names, problem):
    for name in names:
        shutil.copy(GOOD, tmp_path / name)
    assert patch_series.header_problems(patch_series.series(tmp_path)) == [problem]
