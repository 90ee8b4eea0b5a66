"""The ``spyglass`` command: argparse subcommands, each from its own module.

A subcommand is a module (or a ``module:attribute`` object) with ``add_parser(subparsers)`` and
``run(args) -> int``. Adding one is one line in :data:`COMMANDS`; a module that is not installed
yet is skipped, so the list may name commands other helpers are still writing.

Only the chosen command's module is imported: the others bring the store, the API client and
their libraries, a few tenths of a second that `spyglass status` or a short `analyze` should not
pay. ``spyglass --help`` (or no command, or an unknown one) loads them all.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from spyglass import __version__
from spyglass.store.records import StoreError

COMMANDS: list[tuple[str, str]] = [
    ("analyze", "spyglass.cli.analyze"),
    ("devices", "spyglass.cli.query:DEVICES"),
    ("uploads", "spyglass.cli.query:UPLOADS"),
    ("simulate", "spyglass.cli.simulate:SIMULATE"),
    ("demo", "spyglass.cli.simulate:DEMO"),
    ("eval", "spyglass.cli.evaluate"),
    ("agent", "spyglass.cli.agent:AGENT"),
    ("status", "spyglass.cli.agent:STATUS"),
    ("intercept", "spyglass.cli.agent:INTERCEPT"),
]

GC_THRESHOLD = 10_000  # allocations between young-generation passes (CPython's default: 700)
# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# Commands that read packets in bulk (see _tune_malloc).
_PACKET_COMMANDS = frozenset({"analyze", "demo", "simulate", "agent"})
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
    commands: Sequence[tuple[str, str]] = COMMANDS, only: str | None = None
) -> tuple[argparse.ArgumentParser, dict[str, Subcommand]]:
    """The parser with every command, or with just ``only`` (a name in ``commands``)."""
    parser = argparse.ArgumentParser(
        prog="spyglass",
        description="See when your smart speakers upload audio.",
    )
    parser.add_argument("--version", action="version", version=f"spyglass {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Subcommand] = {}
    for name, target in commands:
        if only is not None and name != only:
            continue
        cmd = _load(target)
        if cmd is None:
            continue
        before = set(subparsers.choices)
        cmd.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            handlers[added] = cmd
    return parser, handlers


def chosen_command(
    argv: Sequence[str], commands: Sequence[tuple[str, str]] = COMMANDS
) -> str | None:
    """The command named on the command line (the first word that is not an option), if known."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in {name for name, _ in commands} else None


def _tune_gc() -> None:
    """Fewer garbage-collector passes, none over the modules just imported.

    Analysing a capture allocates many short-lived tuples while holding large dicts of flows and
    names; with the default threshold (700 allocations) the collector's passes over them took a
    quarter of a 1M-packet analysis. Nothing in Spyglass relies on prompt collection of cycles.
    """
    gc.freeze()  # what is alive now (imported modules) is never collected: skip it for good
    gc.set_threshold(GC_THRESHOLD, 20, 100)


def _tune_malloc() -> None:
    """Keep freed memory for the next batch instead of handing it back to the kernel.

    Every batch allocates and frees the same few dozen MB of arrays; with glibc's defaults the
    freed memory goes back to the kernel (trimmed, or unmapped when an array was mapped on its
    own) and the next batch faults it in again: 60k page faults and a third of the CPU of a
    1M-packet analysis. The same memory is reused instead (peak RSS ~15 MB higher). Not glibc:
    nothing to do.
    """
    import ctypes  # here: only the commands that read packets pay for it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TOP_PAD, 16 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # a chunk's arrays come from the heap, reused


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # numpy's OpenBLAS starts a thread per core at import, which spins for a while: 0.1 s of
    # CPU taken from the second core, which an analysis uses. Spyglass does no linear algebra.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser, handlers = build_parser(only=chosen_command(argv))
    _tune_gc()
    if chosen_command(argv) in _PACKET_COMMANDS:
        _tune_malloc()
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


def entry() -> NoReturn:
    """The console command (and ``python -m spyglass``): :func:`main`, then a quick exit.

    After a large analysis, tearing the interpreter down (every module and every result freed
    one object at a time) took 50-100 ms, a tenth of the run. By then main has closed the store
    and joined its processes, so the packet commands end at once once their output is flushed.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if chosen_command(argv) not in _PACKET_COMMANDS:
        sys.exit(code)
    atexit._run_exitfuncs()  # what registered to run at exit still runs
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away (spyglass ... | head): nothing more to say.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
