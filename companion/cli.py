"""The `companion` console script.

Each subcommand declares its arguments here and imports its implementation only when run, so
`companion --help` and `companion run` start fast and never pull in torch. Implementations
raise CompanionError for bad input; main() prints its one sentence and returns 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from companion import __version__
from companion.errors import CompanionError

# name -> (module:function, one-line help, function that adds the arguments)
_COMMANDS: dict[str, tuple[str, str, object]] = {}


def command(name: str, target: str, help: str):
    """Register a subcommand whose implementation is `module:function(args) -> int`."""

    def deco(add_arguments):
        _COMMANDS[name] = (target, help, add_arguments)
        return add_arguments

    return deco


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="companion",
        description="A real-time MIDI companion for your DAW: call and response and live "
                    "accompaniment from ONNX models.")
    parser.add_argument("--version", action="version", version=f"midi-companion {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_, add_arguments) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_target=target)
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_target", None):
        parser.print_help()
        return 0
    module, func = args._target.split(":")
    try:
        return int(getattr(import_module(module), func)(args) or 0)
    except CompanionError as err:
        if args.debug:
            raise
        print(f"companion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ---- subcommands -------------------------------------------------------------------------
