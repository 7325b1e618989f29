"""The documentation holds to the Makefile. The rules, each strict:

- Variables: every make variable (each `NAME ?=` line of the Makefile, and each run setting
  `python3 -m retinanet.settings_outputs makefile` prints) is documented by exactly one table row
  in docs/*.md: a line starting with `|` whose first cell holds the name in backticks
  (`NAME`; several names may share a cell: `A`, `B`). Nothing else counts: not prose, not
  other cells, not headings, not README.md. A variable with no such row, or with rows on
  two pages (or two rows on one), fails by name, and so does a row naming a variable the
  Makefile does not have.
- Targets: `make help` is their documentation. Every .PHONY target has a `## ` comment on
  its rule line, every target with one is .PHONY, and `make help` lists each once with it.
- Commands: every `make ...` line in the code blocks of README.md and docs/*.md, as a user
  types it in bash (a `<placeholder>` filled in), passes `make -n` (the target and
  variables exist, the line parses) and writes nothing into the checkout (git status,
  ignored files included, is the same after); `make help` runs for real. README.md's
  expected `make demo` output
  has the demo target's `== demo:` headers, in order, and under each only lines that the
  target's `sed -n` patterns for that part print.
- Links: every relative link in README.md, CONTRIBUTING.md and docs/*.md names a file or
  folder that exists.
"""

import re
import shlex
import subprocess

import pytest

from retinanet import PROJECT_ROOT

MAKEFILE = PROJECT_ROOT / "Makefile"
README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
NAME = re.compile(r"[A-Z][A-Z0-9_]*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def prose_lines(path):
    """(line number, line) of a Markdown file outside its fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def code_blocks(path):
    """The fenced code blocks of a Markdown file, each a list of lines."""
    blocks, block = [], None
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is not None:
            block.append(line)
    return blocks


def makefile_variables():
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", MAKEFILE.read_text(), re.M))
    # the run settings, read as make reads them
    words = subprocess.run(
        ["python3", "-m", "retinanet.settings_outputs", "makefile"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return names | {word.split("=", 1)[0] for word in words}


def documented_variables():
    """{name: ["docs/page.md:line", ...]} from the first cells of docs/*.md table rows."""
    rows = {}
    for page in DOCS:
        for number, line in prose_lines(page):
            if not line.startswith("|"):
                continue
            first_cell = line.split("|")[1]
            for name in re.findall(r"`([^`]+)`", first_cell):
                if NAME.fullmatch(name):
                    rows.setdefault(name, []).append(f"docs/{page.name}:{number}")
    return rows


def test_every_variable_is_documented_on_exactly_one_page():
    variables = makefile_variables()
    rows = documented_variables()
    assert variables, "no variable found in the Makefile"
    problems = [f"{name}: no table row in docs/*.md" for name in sorted(variables - rows.keys())]
    problems += [
        f"{name}: documented more than once, at {', '.join(where)}"
        for name, where in sorted(rows.items())
        if len(where) > 1
    ]
    problems += [
        f"{name}: not a make variable, documented at {', '.join(where)}"
        for name, where in sorted(rows.items())
        if name not in variables
    ]
    assert not problems, "\n".join(problems)


def test_every_target_is_in_make_help_with_its_comment():
    text = MAKEFILE.read_text()
    phony = {name for line in re.findall(r"^\.PHONY: (.+)$", text, re.M) for name in line.split()}
    commented = dict(re.findall(r"^([a-zA-Z_-]+):.*## (.+)$", text, re.M))
    assert sorted(phony - commented.keys()) == [], ".PHONY targets without a '## ' comment"
    assert sorted(commented.keys() - phony) == [], "targets with a '## ' comment but not .PHONY"
    proc = subprocess.run(["make", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = ANSI.sub("", proc.stdout).splitlines()
    for target, doc in commented.items():
        lines = [line for line in shown if re.fullmatch(rf"  {target} +{re.escape(doc)}", line)]
        assert len(lines) == 1, f"make help shows target {target} {len(lines)} times"
    for name in re.findall(r"^([A-Z][A-Z0-9_]*) \?=", text, re.M):
        assert any(re.match(rf"  {name} ", line) for line in shown), f"make help lacks {name}"


def make_lines(path):
    """Each `make ...` command in a Markdown file's code blocks, continuation lines joined."""
    commands = []
    for block in code_blocks(path):
        text = "\n".join(block).replace("\\\n", " ")
        commands += [line.strip() for line in text.splitlines() if re.match(r"make\b", line)]
    return commands


def checkout_state():
    """What git sees in the checkout and in upstream's, ignored files included."""
    status = ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"]
    state = subprocess.run(
        status, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    upstream = PROJECT_ROOT / "vendor" / "inference"
    if (upstream / ".git").exists():
        state += subprocess.run(
            status, cwd=upstream, capture_output=True, text=True, check=True
        ).stdout
    return state


@pytest.mark.slow  # a make -n per documented command: about 10 s
@pytest.mark.timeout(120)
def test_the_documented_commands_are_valid_and_make_n_writes_nothing():
    readme = make_lines(README)
    firsts = {" ".join(shlex.split(command, comments=True)[:2]) for command in readme}
    assert {"make demo", "make test", "make help"} <= firsts, readme
    commands = readme + [command for page in DOCS for command in make_lines(page)]
    # make help runs for real; it also leaves the bytecode of the settings table that make
    # imports on every call, so that what follows sees the checkout as it stays
    proc = subprocess.run(["make", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "Run settings" in proc.stdout, proc.stdout + proc.stderr
    before = checkout_state()
    for command in commands:
        # as typed in bash (which expands DIR=~/...), with make only printing its commands
        dry = "make -n" + re.sub(r"<[^>]*>", "x", command[len("make") :])
        proc = subprocess.run(["bash", "-c", dry], cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command!r}: make -n failed:\n{proc.stderr[-2000:]}"
        assert checkout_state() == before, f"{dry!r} wrote into the checkout"


def demo_target_output():
    """[(header, [sed patterns])] the Makefile's demo recipe prints, DEMO_DIR at its default."""
    text = MAKEFILE.read_text()
    demo_dir = re.search(r"^DEMO_DIR \?= (\S+)$", text, re.M).group(1)
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    parts = []
    for line in recipe.replace("$(DEMO_DIR)", demo_dir).splitlines():
        header = re.match(r'\t@echo "(== demo: .*)"$', line)
        if header:
            parts.append((header.group(1), []))
        elif line.startswith("\t@sed -n "):
            assert parts, "the demo recipe prints sed output before any '== demo:' header"
            parts[-1][1].extend(re.findall(r"/(\^[^/]*)/p", shlex.split(line[1:])[2]))
    return parts


def test_the_readme_demo_output_is_what_make_demo_prints():
    expected = demo_target_output()
    assert expected and all(patterns for _, patterns in expected), expected
    blocks = [block for block in code_blocks(README) if block and block[0].startswith("== demo:")]
    assert len(blocks) == 1, "README.md needs one code block of make demo's output"
    shown = []
    for line in blocks[0]:
        if line.startswith("== demo:"):
            shown.append((line, []))
        else:
            shown[-1][1].append(line)
    assert [header for header, _ in shown] == [header for header, _ in expected], (
        "README.md's make demo headers differ from the Makefile's demo target"
    )
    for (header, lines), (_, patterns) in zip(shown, expected):
        for line in lines:
            assert any(re.match(p, line) for p in patterns), f"{header}: {line!r} is not printed"
        for pattern in patterns:
            assert any(re.match(pattern, line) for line in lines), f"{header}: no {pattern!r} line"


def test_relative_links_point_to_existing_files():
    broken = []
    for page in [README, PROJECT_ROOT / "CONTRIBUTING.md", *DOCS]:
        for number, line in prose_lines(page):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue
                path = target.split("#", 1)[0]
                if not (page.parent / path).exists():
                    broken.append(f"{page.relative_to(PROJECT_ROOT)}:{number}: {target}")
    assert not broken, "links to no file:\n" + "\n".join(broken)
