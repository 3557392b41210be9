"""The README and docs/: every relative link resolves (file and #anchor, inside the repository) and every command
they show exists and answers ``--help`` with exit code 0.

Commands are taken from fenced code blocks and inline code spans of the form ``python -m missrec_recbole...``,
``python run_missrec.py``, ``python recommend.py``, ``python benchmarks/<x>.py`` and ``missrec <cmd>``, deduplicated
by the program (and, for ``run_missrec.py`` / ``missrec``, its sub-command); ``torchrun`` and ``pip`` lines are not
run. The quick test answers every ``--help`` in one Python process (torch and RecBole imported once); the slow one
runs each command in its own process, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
        ROOT / "dataset" / "README.md"]
README_MAX_LINES = 120

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


# ----------------------------------------------------------------------------- markdown parsing
def split_markdown(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code-block lines) of a markdown text; fenced blocks go to the second list."""
    prose, code, fence = [], [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
            continue
        (code if fence else prose).append(line)
    return prose, code


def without_inline_code(line: str) -> str:
    return INLINE_CODE.sub("", line)


def links(text: str) -> list[str]:
    """Link targets of a markdown text, outside code blocks and inline code."""
    prose, _ = split_markdown(text)
    return [match.group(1) for line in prose for match in LINK.finditer(without_inline_code(line))]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown removed, lower case, everything but letters, digits, spaces, '-' and
    '_' dropped, each space a '-' (no collapsing: 'a ← b' is 'a--b')."""
    parts = re.split(r"(`+[^`]*`+)", heading)   # inline code keeps its text as it is, without the backticks
    text = "".join(part.strip("`") if part.startswith("`") else _without_markup(part) for part in parts)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _without_markup(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)    # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)                          # html tags
    return re.sub(r"(?<!\w)[*_]+|[*_]+(?!\w)", "", text)           # *emphasis*, _emphasis_; not snake_case


def anchors(text: str) -> set[str]:
    """Every #anchor GitHub makes for the headings of a markdown text (repeated headings get -1, -2, ...)."""
    prose, _ = split_markdown(text)
    seen: dict[str, int] = {}
    result = set()
    for line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``doc`` that do not resolve to a file (or heading) inside ``root``."""
    problems = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if path_part.startswith("/") or not path.is_relative_to(root.resolve()):
            problems.append(f"{target}: points outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading '#{anchor}' in {path.relative_to(root.resolve())}")
    return problems


# ----------------------------------------------------------------------------- commands
PROGRAM = re.compile(r"^(?:python3? (?:-m (missrec_recbole(?:\.[a-z_][a-z0-9_]*)*)|(run_missrec\.py|recommend\.py|benchmarks/\w+\.py))"
                     r"|(missrec))(?=\s|$)")
PREFIXES = ("nohup", "time", "exec")


def command_lines(text: str) -> list[str]:
    """Candidate command lines: code-block lines (backslash continuations joined, comments dropped, split at
    && ; |) and inline code spans."""
    prose, code = split_markdown(text)
    joined, buffer = [], ""
    for line in code:
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        joined.append(buffer + line)
        buffer = ""
    if buffer:
        joined.append(buffer)
    spans = [match.group(2) for line in prose for match in INLINE_CODE.finditer(line)]
    segments = []
    for line in joined + spans:
        line = re.sub(r"(^|\s)#.*$", "", line)
        segments += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return segments


def command_key(segment: str) -> tuple[str, ...] | None:
    """('module', name) / ('script', path) / ('missrec', sub-command or '') for a command segment, else None."""
    words = segment.split()
    while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] in PREFIXES):  # OMP_NUM_THREADS=1, nohup
        words = words[1:]
    if words[:1] == ["timeout"]:
        words = words[2:]
    if not words or words[0] in ("torchrun", "pip", "pip3"):
        return None
    match = PROGRAM.match(" ".join(words))
    if not match:
        return None
    module, script, missrec = match.groups()
    rest = " ".join(words).split()[1 if missrec else (3 if module else 2):]
    sub = rest[0] if rest and re.fullmatch(r"[a-z][a-z_]*", rest[0]) else ""
    if module:
        return ("module", module)
    if missrec:
        return ("missrec", sub)
    return ("script", script, sub) if script == "run_missrec.py" and sub == "recommend" else ("script", script)


def documented_commands(docs=DOCS) -> dict[tuple[str, ...], str]:
    """Every distinct command of the docs -> the first place it is shown."""
    found = {}
    for doc in docs:
        for segment in command_lines(doc.read_text(encoding="utf-8")):
            key = command_key(segment)
            if key is not None:
                found.setdefault(key, f"{doc.relative_to(ROOT)}: {segment}")
    return found


def help_argv(key: tuple[str, ...]) -> list[str]:
    """The command line that asks ``key`` for its help."""
    if key[0] == "module":
        return [sys.executable, "-m", key[1], "--help"]
    if key[0] == "script":
        return [sys.executable, *key[1:], "--help"]
    code = "import sys; from missrec_recbole.cli import missrec; sys.exit(missrec(sys.argv[1:]))"
    return [sys.executable, "-c", code, *([key[1]] if key[1] else []), "--help"]


# Answers every --help in one process: modules and scripts through runpy (as `python -m` / `python FILE` would),
# `missrec` through its function; prints {command: exit code or error} as JSON on the last line.
IN_PROCESS = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    results = {}
    for kind, name, *sub in json.loads(sys.argv[1]):
        old_argv, old_path = sys.argv, list(sys.path)
        sys.argv = [name, *sub, "--help"]
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
                if kind == "module":
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                elif kind == "script":
                    sys.path.insert(0, str(__import__("pathlib").Path(name).resolve().parent))
                    runpy.run_path(name, run_name="__main__")
                else:
                    from missrec_recbole.cli import missrec
                    sys.exit(missrec(([name] if name else []) + ["--help"]))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else repr(exit_.code)
            code = code or 0
        except BaseException as error:
            code = f"{type(error).__name__}: {error}"
        finally:
            sys.argv, sys.path[:] = old_argv, old_path
        if code == 0 and not printed.getvalue().strip():
            code = "--help printed nothing"
        results[" ".join([kind, name, *sub])] = code
    print(json.dumps(results))
""")


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "OMP_NUM_THREADS": "1"}


def help_exit_codes_in_process(keys) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, json.dumps([list(k) for k in keys])], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- tests
def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert broken_links(doc) == []


def test_docs_do_not_point_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/" not in text, doc


def test_link_checker_catches_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Transfer: A ← B (in progress)\n\n## Transfer: A ← B (in progress)\n")
    doc = tmp_path / "README.md"
    doc.write_text("[ok](docs/a.md) [ok](docs/a.md#title) [ok](docs/a.md#transfer-a--b-in-progress-1) [web](https://x.org)\n"
                   "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [out](../elsewhere.md) ![img](pic.png)\n"
                   "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n# not a heading\n```\n")
    assert broken_links(doc, tmp_path) == ["docs/b.md: no such file", "docs/a.md#nope: no heading '#nope' in docs/a.md",
                                           "../elsewhere.md: points outside the repository", "pic.png: no such file"]


def test_github_slugs():
    assert github_slug("1. Pipeline and package layout") == "1-pipeline-and-package-layout"
    assert github_slug("Transfer on real data: Office ← Scientific and Scientific ← Office (in progress)") == \
        "transfer-on-real-data-office--scientific-and-scientific--office-in-progress"
    assert github_slug("Demo domains (`Demo-A` … `Demo-D`)") == "demo-domains-demo-a--demo-d"
    assert github_slug("Tuning on validation (Scientific-mm)") == "tuning-on-validation-scientific-mm"
    assert github_slug("The [docs](docs/x.md) of split_users, *really*") == "the-docs-of-split_users-really"
    assert github_slug("`__init__` and _this_") == "__init__-and-this"


def test_command_extraction():
    text = ("```bash\npip install -e . && python run_missrec.py   # main job\n"
            "OMP_NUM_THREADS=1 python benchmarks/tune.py -d X \\\n    --seeds 3\n"
            "torchrun --nproc_per_node=2 run_missrec.py --stage=pretrain\n"
            "python -m missrec_recbole.tools.prepare <datasets>/Office -o data/\n"
            "python run_missrec.py recommend -p M.pth\npython -m pytest -m \"not slow\"\n```\n"
            "Then `missrec train -d X` or `python -m missrec_recbole.bench ...`; `missrec COMMAND` too.\n")
    keys = {command_key(s) for s in command_lines(text)} - {None}
    assert keys == {("script", "run_missrec.py"), ("script", "benchmarks/tune.py"),
                    ("module", "missrec_recbole.tools.prepare"), ("script", "run_missrec.py", "recommend"),
                    ("missrec", "train"), ("module", "missrec_recbole.bench"), ("missrec", "")}


def test_docs_show_the_main_commands():
    keys = documented_commands()
    for key in [("script", "run_missrec.py"), ("script", "recommend.py"), ("module", "missrec_recbole.tools.prepare"),
                ("module", "missrec_recbole.bench")]:
        assert key in keys


BOGUS = [("module", "missrec_recbole.tools.no_such_tool"), ("script", "benchmarks/no_such_script.py"),
         ("missrec", "no_such_command")]


@pytest.fixture(scope="module")
def help_codes():
    """The --help exit codes of every documented command and of three that do not exist, from one process."""
    return help_exit_codes_in_process([*documented_commands(), *BOGUS])


def test_every_documented_command_answers_help(help_codes):
    """Quick: one process answers every command's --help (torch and RecBole imported once)."""
    failed = {where: help_codes[" ".join(key)] for key, where in documented_commands().items()
              if help_codes[" ".join(key)] != 0}
    assert failed == {}


def test_help_check_catches_a_missing_command(help_codes):
    assert all(help_codes[" ".join(key)] != 0 for key in BOGUS), help_codes


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(documented_commands()), ids=" ".join)
def test_documented_command_help_in_its_own_process(key):
    """As a user runs it: each command in a fresh process, ``--help`` exits 0 and prints a usage text."""
    out = subprocess.run(help_argv(key), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{shlex.join(help_argv(key))}: {out.stderr[-1000:]}"
    assert out.stdout.strip(), "--help printed nothing"
