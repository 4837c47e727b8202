"""The documentation: the site builds with ``--strict``, and every command in the README and docs/ matches the code.

The conventions checked here are written down in docs/contributing.md ("Commands in these pages"): an unmarked
command in a ``bash`` block is run as written, ``# long`` and ``# GPU`` ones and ``text`` synopses are only checked,
and a block after ``<!-- run by tests/FILE.py -->`` is run by that file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sensorium.bench.__main__ import parser as bench_parser
from sensorium.cli import build_parser, main

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKS = ("long", "GPU")
SHELL = ("bash", "sh", "shell")
RUN_BY = re.compile(r"<!-- run by (tests/\S+\.py) -->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
REPO_PATH = re.compile(r"(?<![\w./-])((?:recipes|docs|tests|scripts|src|bench)/[\w./-]*[\w-])")
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b")  # FILE, DIR, TARGET: a name the reader fills in
LINK = re.compile(r"\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
SYNOPSIS_PUNCTUATION = "[]|()"


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page: its language, first line number, text and the test that runs it, if any."""

    page: Path
    language: str
    line: int
    text: str
    run_by: str | None


@dataclass(frozen=True)
class Command:
    """One command of a block (continuation lines joined), without its trailing comment."""

    block: Block
    line: int
    text: str
    mark: str | None  # "long", "GPU" or None

    @property
    def runnable(self) -> bool:
        """Run by this file: an unmarked shell command no other test runs."""
        return self.block.language in SHELL and self.mark is None and self.block.run_by is None

    def __str__(self) -> str:
        return f"{shown(self.block.page)}:{self.line}: {self.text}"


def shown(page: Path) -> Path:
    """The page as the repository names it."""
    return page.relative_to(ROOT) if page.is_relative_to(ROOT) else page


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, indented ones (inside list items) included."""
    found, lines, index = [], page.read_text().splitlines(), 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, body, start = len(opening.group(1)), [], index
        index += 1
        while not FENCE.match(lines[index]):
            body.append(lines[index][indent:])
            index += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        run_by = RUN_BY.search(before)
        found.append(Block(page, opening.group(2), start + 2, "\n".join(body), run_by and run_by.group(1)))
        index += 1
    return found


def split_comment(line: str) -> tuple[str, str]:
    """The command and its trailing ``# comment``: the first ``#`` after a space, outside quotes."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip(), line[position + 1:].strip()
    return line.rstrip(), ""


def commands(block: Block) -> list[Command]:
    """The block's commands, each with the mark its trailing comment starts with."""
    found, pending, first = [], "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        text, comment = split_comment(raw)
        if not pending:
            first = block.line + offset
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text = (pending + text).strip()
        pending = ""
        if text:
            mark = next((m for m in MARKS if re.match(rf"{m}\b", comment)), None)
            found.append(Command(block, first, text, mark))
    return found


def all_commands() -> list[Command]:
    return [command for page in PAGES for block in blocks(page) if block.language in (*SHELL, "text")
            for command in commands(block)]


def words(command: Command) -> list[str]:
    """The command's words, without environment assignments in front (``OMP_NUM_THREADS=1``) or a ``&`` behind."""
    tokens = shlex.split(command.text)
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        tokens.pop(0)
    return tokens[:-1] if tokens[-1:] == ["&"] else tokens


def program_arguments(tokens: list[str]) -> tuple[str, list[str]] | None:
    """``("sensorium", argv)`` or ``("bench", argv)`` for a command of ours, however it is launched; else None."""
    if tokens[:1] == ["sensorium"]:
        return "sensorium", tokens[1:]
    if "-m" in tokens:
        module = tokens.index("-m") + 1
        if tokens[module:module + 1] == ["sensorium"]:
            return "sensorium", tokens[module + 1:]
        if tokens[module:module + 1] == ["sensorium.bench"]:
            return "bench", tokens[module + 1:]
    return None


def verbs_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's verbs (sub-parsers) by name; none for a verb's own parser."""
    return next((action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction)), {})


def subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub-)parser that reads ``argv`` after its verbs (``data make-scenes``), or an unknown verb's problem."""
    while verbs := verbs_of(parser):
        verb = next((word for word in argv if not word.startswith("-")), None)
        if verb is None or PLACEHOLDER.fullmatch(verb):  # `sensorium.bench SUITE`: the reader picks one
            break
        if verb not in verbs:
            return parser, [f"no verb {verb!r} (verbs: {', '.join(verbs)})"]
        parser, argv = verbs[verb], argv[argv.index(verb) + 1:]
    return parser, []


def flag_problems(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Every ``--flag`` of ``argv`` the (sub-)parser does not know."""
    target, problems = subcommand(parser, argv)
    for word in argv:
        flag = word.strip(SYNOPSIS_PUNCTUATION).split("=")[0]
        if flag.startswith("--") and flag not in target._option_string_actions:
            problems.append(f"no flag {flag} in `{target.prog}`")
    return problems


def parse_problems(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """argparse's own complaint about a whole command line (choices, types, bounds, required options), if any."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code:
            return [errors.getvalue().strip().splitlines()[-1]]
    return []


def make_targets() -> set[str]:
    rules = re.findall(r"^([\w.-]+(?: [\w.-]+)*):(?!=)", (ROOT / "Makefile").read_text(), flags=re.M)
    return {target for rule in rules for target in rule.split()}


def command_problems(command: Command) -> list[str]:
    """What no longer exists of what the command names: verb, flags, make target, files."""
    try:
        tokens = words(command)
    except ValueError as error:  # an unclosed quote
        return [f"not a command: {error}"]
    problems = missing_paths(command.text)
    ours = program_arguments(tokens)
    if ours:
        parser = build_parser() if ours[0] == "sensorium" else bench_parser()
        problems += flag_problems(parser, ours[1])
        if command.block.language in SHELL and not problems:
            problems += parse_problems(parser, ours[1])
    elif tokens[:1] == ["make"]:
        problems += [f"no make target {target!r}" for target in tokens[1:] if target not in make_targets()]
    elif command.runnable:
        problems.append("an unmarked command this suite cannot run: mark it `# long` or `# GPU`")
    return problems


def missing_paths(text: str) -> list[str]:
    return [f"no file {path}" for path in REPO_PATH.findall(text)
            if not PLACEHOLDER.search(path) and not (ROOT / path.rstrip("/.")).exists()]


def prose_problems(page: Path) -> list[str]:
    """Repository paths and `make TARGET`s named in the page's inline code, and its relative links, that are gone."""
    text = page.read_text()
    problems = [problem for code in INLINE_CODE.findall(text) for problem in missing_paths(code)]
    problems += [f"no make target {t!r}" for t in re.findall(r"`make ([\w-]+)`", text)
                 if not PLACEHOLDER.fullmatch(t) and t not in make_targets()]
    for link in LINK.findall(text):
        target = link.split("#")[0]
        if target and "://" not in link and not (page.parent / target).exists():
            problems.append(f"broken link {link}")
    return problems


def python_problems(block: Block) -> list[str]:
    """A Python block must compile, and what it takes from ``sensorium`` must exist."""
    try:
        tree = ast.parse(block.text)
    except SyntaxError as error:
        return [f"line {block.line + (error.lineno or 1) - 1}: {error.msg}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sensorium":
            try:
                module = importlib.import_module(node.module)
            except ModuleNotFoundError:
                problems.append(f"no module {node.module}")
                continue
            problems += [f"no {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sensorium"
              and not hasattr(importlib.import_module("sensorium"), node.attr)):
            problems.append(f"no sensorium.{node.attr}")
    return problems


def page_problems(page: Path) -> list[str]:
    problems = [f"{command}: {problem}" for block in blocks(page) if block.language in (*SHELL, "text")
                for command in commands(block) for problem in command_problems(command)]
    problems += [f"{shown(page)}:{block.line}: {problem}" for block in blocks(page)
                 if block.language == "python" for problem in python_problems(block)]
    problems += [f"{shown(block.page)}:{block.line}: no {block.run_by}" for block in blocks(page)
                 if block.run_by and not (ROOT / block.run_by).exists()]
    return problems + [f"{shown(page)}: {problem}" for problem in prose_problems(page)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_what_a_page_names_exists(page):
    problems = page_problems(page)
    assert not problems, "\n".join(problems)


RUNNABLE = [command for command in all_commands() if command.runnable]


@pytest.mark.parametrize("command", RUNNABLE, ids=str)
def test_unmarked_commands_run(command, tmp_path, monkeypatch, capsys):
    """As a user types them, from a scratch folder where recipes/ is the repository's."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    kind, argv = program_arguments(words(command))
    assert kind == "sensorium"
    try:
        code = main(argv)
    except SystemExit as exit_:  # --help
        code = exit_.code
    assert code == 0, capsys.readouterr().err


def test_the_checks_catch_what_is_gone(tmp_path):
    """A renamed flag, an unknown verb, a missing recipe, make target, file or import, and an unmarked long command."""
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "```bash", "sensorium train recipes/easy-vqa.yaml --dry-runn", "sensorium trian recipes/easy-vqa.yaml",
        "sensorium eval runs/a --data easy-vqa:test --limt 5  # long", "make demoo  # long",
        "python -m sensorium.bench generation --repeat 3  # long", "curl http://127.0.0.1:8000/v1/adapters",
        "sensorium train recipes/no-such.yaml --dry-run", "```", "",
        "```python", "from sensorium.model import PerceptualLLM", "from sensorium.modell import load",
        "model = sensorium.lod('x')", "```", "",
        "<!-- run by tests/test_nothing_here.py -->", "```bash", "sensorium models", "```", "",
        "See `tests/test_nothing.py`, `make nothing` and [a page](nowhere.md).", ""]))
    problems = "\n".join(page_problems(page))
    for expected in ("no flag --dry-runn in `sensorium train`", "no verb 'trian'", "no flag --limt in `sensorium eval`",
                     "no make target 'demoo'", "no flag --repeat in `python -m sensorium.bench generation`",
                     "an unmarked command this suite cannot run", "no file recipes/no-such.yaml",
                     "no sensorium.model.PerceptualLLM", "no module sensorium.modell", "no sensorium.lod",
                     "no tests/test_nothing_here.py", "no file tests/test_nothing.py",
                     "no make target 'nothing'", "broken link nowhere.md"):
        assert expected in problems


def test_every_verb_is_in_the_synopsis():
    """docs/getting-started.md lists every verb of the command line, so a new one gets its line."""
    synopsis = [command.text for block in blocks(ROOT / "docs" / "getting-started.md") if block.language == "text"
                for command in commands(block)]
    verbs = verbs_of(build_parser())
    data_verbs = verbs_of(verbs["data"])
    named = {" ".join(text.split()[1:3]) if text.startswith("sensorium data ") else text.split()[1] for text in synopsis
             if text.startswith("sensorium ")}
    assert {*(v for v in verbs if v != "data"), *(f"data {v}" for v in data_verbs)} <= named


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_module_has_a_reference_page():
    """A ``::: module`` line of docs/reference/ names it, or its package (rendered with its submodules)."""
    documented = set(re.findall(r"^::: ([\w.]+)", "\n".join(
        page.read_text() for page in (ROOT / "docs" / "reference").glob("*.md")), flags=re.M))
    packages = documented - {"sensorium"}  # the top package's page shows its own names only
    modules = {".".join(path.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
               for path in (ROOT / "src" / "sensorium").rglob("*.py") if path.name != "__main__.py"}
    assert sorted(m for m in modules if m not in documented and not any(m.startswith(p + ".") for p in packages)) == []


def test_the_site_builds_strictly(tmp_path):
    """mkdocs with --strict: a broken link or anchor, a page outside the navigation, a missing module fail."""
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr
    reference = (site / "reference" / "model" / "index.html").read_text()
    assert "sensorium.model.PerceptualLM" in reference  # generated from the source, not written by hand
    assert (site / "serving-easy-vqa.png").exists()
