"""The commands and examples of README.md and docs/*.md stay true, and the README stays short."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import build_parser
from distill.config import describe

README = Path("README.md")
PAGES = [README, *sorted(Path("docs").glob("*.md"))]
README_MAX_LINES = 250  # a user's page; the lab notebook lives in docs/
FOREIGN_OPTIONS = {"distill.launch"}  # its options are `accelerate launch`'s, read by accelerate's own parser


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _code(text: str) -> list[str]:
    """Every fenced code line (backslash continuations joined) and every inline `code` span, as one line each."""
    pieces = []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    for block in fenced:
        pieces += re.sub(r"\\\n\s*", " ", block).splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    pieces += [" ".join(span.split()) for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", prose)]
    return pieces


def _subparsers() -> dict:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices


def _distill_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(subcommand, the words after it) for every `distill SUB ...` written in a page's code."""
    found = []
    for piece in _code(_text(page)):
        for m in re.finditer(r"(?<![\w./-])distill ([a-z][\w-]*)(.*)", piece):
            rest = re.split(r"\s#\s|\s\|\s", m[2])[0]  # a comment or a pipe ends the command
            found.append((m[1], rest.split()))
    return found


def _module_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(module, the words after it) for every `python -m distill...` written in a page's code."""
    found = []
    for piece in _code(_text(page)):
        for m in re.finditer(r"python -m (distill(?:\.\w+)*)(.*)", piece):
            rest = re.split(r"\s#\s|\s-m\s", m[2])[0]  # `-m distill train ...` is the launched command's
            found.append((m[1], rest.split()))
    return found


def _flags(words: list[str]) -> set[str]:
    return {re.match(r"--[\w-]+", w.lstrip("["))[0] for w in words if re.match(r"--[a-z]", w.lstrip("["))}


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_swap_examples_are_what_distill_swap_prints(page):
    for said, printed in re.findall(r"echo \"(.+)\" \| distill swap\n# (.+)\n", _text(page)):
        out = subprocess.run([sys.executable, "-m", "distill", "swap"], input=said + "\n", capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == printed.strip(), page


def test_the_readme_shows_the_swap_example():
    assert re.search(r"echo \".+\" \| distill swap\n# .+\n", _text(README))


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_every_recipe_and_make_target_named_exists(page):
    text = _text(page)
    for recipe in set(re.findall(r"recipes/[\w./]+\.yaml", text)):
        assert Path(recipe).is_file(), (page, recipe)
    makefile = Path("Makefile").read_text()
    for target in set(re.findall(r"(?:^|`)make ([a-z-]+)", text, re.M)):
        assert re.search(rf"^{target}:", makefile, re.M), (page, target)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_every_distill_command_names_a_real_subcommand_options_and_recipe_keys(page):
    subs = _subparsers()
    keys = {row[0] for row in describe()}
    for sub, words in _distill_commands(page):
        assert sub in subs, (page, sub, words)
        unknown = _flags(words) - set(subs[sub]._option_string_actions)
        assert not unknown, (page, f"distill {sub}", sorted(unknown))
        if sub in ("train", "corpus"):
            for key in re.findall(r"^([a-z_]+(?:\.[a-z_]+)*)=", "\n".join(words), re.M):
                assert key in keys, (page, f"distill {sub}", key)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_every_python_module_command_exists_with_its_options(page):
    for module, words in _module_commands(page):
        assert importlib.util.find_spec(module) is not None, (page, module)
        flags = _flags(words)
        if not flags or not words[0].startswith("-") or module in FOREIGN_OPTIONS:
            continue  # a subcommand or a positional comes first: its own --help lists its options
        helptext = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True).stdout
        unknown = {f for f in flags if not re.search(rf"{re.escape(f)}\b", helptext)}
        assert not unknown, (page, module, sorted(unknown))


def test_readme_is_at_most_250_lines():
    lines = _text(README).count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_help_recipe_lists_keys():
    out = subprocess.run([sys.executable, "-m", "distill", "train", "--recipe", "x", "--help-recipe"],
                         capture_output=True, text=True, check=True).stdout
    assert "train.max_steps" in out and "crr.teacher" in out
