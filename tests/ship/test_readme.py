"""The README's commands are real: every `make` target exists, every CLI
command parses with the real argument parser (subcommand, flags, required
arguments, choices), every repository path and link it names exists."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLIS = {"trainer": "trainer.cli", "edge-runtime": "edge_runtime.cli", "deploy": "deploy.cli"}
REPO_DIRS = ("deploy/", "sample/", "docs/", "examples/", "bench/", "models/", "trainer/",
             "edge_runtime/", "tests/")
# Paths the README creates or that live on the device, not in the repository.
NOT_IN_REPO = ("out/", "runs/", "releases/", "keys/", "demo-out/")


def _blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def _commands() -> list[list[str]]:
    out = []
    for block in _blocks("sh"):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                out.append(tokens)
    return out


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def _parser_for(tool: str, sub: str) -> argparse.ArgumentParser:
    cli = importlib.import_module(CLIS[tool])
    assert sub in cli.COMMANDS, f"README: `{tool} {sub}` is not a {tool} subcommand"
    module = importlib.import_module(cli.COMMANDS[sub][0])
    p = argparse.ArgumentParser(prog=f"{tool} {sub}")
    module.add_arguments(p)
    return p


def _parses(parser: argparse.ArgumentParser, args: list[str], line: str) -> None:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"README command does not parse: {line}") from exc


def test_readme_has_the_two_setup_commands():
    first = _commands()[:2]
    assert first == [["make", "demo"], ["make", "test"]]


def test_make_targets_exist():
    targets = _makefile_targets()
    for tokens in _commands():
        if tokens[0] == "make":
            names = [t for t in tokens[1:] if "=" not in t and not t.startswith("-")]
            assert set(names) <= targets, f"README: make {names} (Makefile has {sorted(targets)})"


@pytest.mark.parametrize("tool", sorted(CLIS))
def test_cli_commands_parse(tool):
    lines = [t for t in _commands() if t[0] == tool]
    if not lines:
        pytest.skip(f"README names no {tool} command")
    for tokens in lines:
        _parses(_parser_for(tool, tokens[1]), tokens[2:], shlex.join(tokens))


def test_example_commands_parse():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        subscriber = importlib.import_module("subscriber")
    finally:
        sys.path.pop(0)
    seen = 0
    for tokens in _commands():
        if tokens[:2] == ["python", "examples/subscriber.py"]:
            _parses(subscriber.build_parser(), tokens[2:], shlex.join(tokens))
            seen += 1
    assert seen


def test_repository_paths_exist():
    missing = []
    for tokens in _commands():
        for tok in tokens:
            for part in re.split(r"[=,]", tok):
                if part.startswith(REPO_DIRS) and not part.startswith(NOT_IN_REPO):
                    if not (ROOT / part).exists():
                        missing.append(f"{part} (in: {shlex.join(tokens)})")
    assert not missing, missing


def test_links_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        headings = [re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                    for h in re.findall(r"^#+ (.+)$", text, re.M)]
        assert anchor in headings, f"README links to missing section #{anchor}"


def test_toml_snippets_are_valid_kiosk_config():
    from edge_runtime.config import parse_config

    for block in _blocks("toml"):
        parse_config(tomllib.loads(block), where="README toml snippet")
