"""README's Usage block and the CLI cannot drift: the same commands, the same options, defaults shown in --help."""
import re
from pathlib import Path

import click
import pytest

from weightsmith.cli import main

UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3: an option without a default
README = Path(__file__).resolve().parent.parent / "README.md"


def usage() -> dict[str, list[str]]:
    """command -> its tokens in README's Usage block (continuation lines joined)."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## Usage", 1)[1].split("\n\n", 2)[1]
    cmds: dict[str, list[str]] = {}
    for line in block.splitlines():
        words = line.split()
        if words[:1] == ["weightsmith"]:
            cur = cmds.setdefault(words[1], [])
            cur += words[2:]
        elif words:
            cur += words
    return cmds


def readme_options(tokens: list[str]) -> dict[str, str | None]:
    """--option -> the word after it (a placeholder, choices or a default), or None for a flag."""
    words = [w.strip("[]") for w in tokens]
    out = {}
    for i, w in enumerate(words):
        if w.startswith("-"):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            out[w] = None if not nxt or nxt.startswith("-") or nxt in {"|", "..."} or tokens[i].endswith("]") \
                else nxt
    return out


def click_options(cmd: click.Command) -> dict[str, click.Option]:
    return {name: p for p in cmd.params if isinstance(p, click.Option) and name_ok(name := longest(p))}


def longest(p: click.Option) -> str:
    return max(p.opts, key=len)


def name_ok(name: str) -> bool:
    return name not in {"--help"}


def test_same_commands():
    assert set(usage()) == set(main.commands)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_options_match_readme(name):
    cmd = main.commands[name]
    documented = readme_options(usage().get(name, []))
    opts = click_options(cmd)
    names = {o: p for p in opts.values() for o in p.opts}
    assert set(documented) <= set(names), f"README names options {name} lacks"
    missing = {longest(p) for p in opts.values()} - {longest(names[d]) for d in documented}
    assert not missing, f"{name} has options README's Usage does not name: {sorted(missing)}"
    for opt, word in documented.items():
        p = names[opt]
        if word is None or p.is_flag:
            continue
        if re.fullmatch(r"[A-Z][A-Z_=.]*", word):  # a placeholder (N, TYPE, FILE, SIZE)
            continue
        if "|" in word:  # choices
            if isinstance(p.type, click.Choice):
                assert set(word.split("|")) == set(p.type.choices), opt
            continue
        assert str(p.default) == word, f"{name} {opt}: README says {word}, the CLI's default is {p.default}"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_shows_defaults(name):
    """Every option with a default says it in --help."""
    for p in click_options(main.commands[name]).values():
        if not p.is_flag and p.default is not None and p.default is not UNSET:
            assert p.show_default, f"{name} {longest(p)}: default {p.default!r} not shown in --help"
