"""The thin-CLI pattern shared by `trainer`, `edge-runtime` and `deploy`:
one module per subcommand with ``add_arguments(parser)`` and ``run(args) -> int``,
imported lazily (so `edge-runtime match` never pays for unrelated imports), and
user errors turned into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from models.errors import KioskError

__all__ = ["run_cli", "OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, description: str, commands: dict[str, tuple[str, str]],
            argv: Sequence[str] | None = None, version: str = "") -> int:
    """``commands`` maps a subcommand to (module path, one-line help)."""
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if version:
        parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the command asked for; list the rest by help text.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name, (module_path, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            modules[name] = importlib.import_module(module_path)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(modules[args.command].run(args) or 0)
    except KioskError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
