"""The ``spyglass`` command: argparse subcommands, each from its own module.

A subcommand is a module (or a ``module:attribute`` object) with ``add_parser(subparsers)`` and
``run(args) -> int``. Adding one is one line in :data:`COMMANDS`; a module that is not installed
yet is skipped, so the list may name commands other helpers are still writing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from spyglass import __version__
from spyglass.store.db import StoreError

COMMANDS: list[tuple[str, str]] = [
    ("analyze", "spyglass.cli.analyze"),
    ("devices", "spyglass.cli.query:DEVICES"),
    ("uploads", "spyglass.cli.query:UPLOADS"),
    ("simulate", "spyglass.cli.analyze:SIMULATE"),
    ("demo", "spyglass.cli.analyze:DEMO"),
    ("eval", "spyglass.cli.evaluate"),
    ("agent", "spyglass.cli.agent:AGENT"),
    ("status", "spyglass.cli.agent:STATUS"),
]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Subcommand(Protocol):
    def add_parser(self, subparsers: Any, /) -> Any: ...
    def run(self, args: argparse.Namespace, /) -> int: ...


@dataclass(frozen=True)
class Command:
    """A subcommand defined by two functions (for modules holding more than one)."""

    add_parser: Callable[[Any], Any]
    run: Callable[[argparse.Namespace], int]


def _load(target: str) -> Subcommand | None:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # not written yet
        raise
    obj: Subcommand = getattr(module, attr) if attr else module
    return obj


def build_parser(
    commands: Sequence[tuple[str, str]] = COMMANDS,
) -> tuple[argparse.ArgumentParser, dict[str, Subcommand]]:
    parser = argparse.ArgumentParser(
        prog="spyglass",
        description="See when your smart speakers upload audio.",
    )
    parser.add_argument("--version", action="version", version=f"spyglass {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Subcommand] = {}
    for _name, target in commands:
        cmd = _load(target)
        if cmd is None:
            continue
        before = set(subparsers.choices)
        cmd.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            handlers[added] = cmd
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(handlers[args.command].run(args) or 0)
    except StoreError as exc:
        print(f"spyglass: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("spyglass: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
