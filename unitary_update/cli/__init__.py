"""The command line: ``python -m unitary_update COMMAND`` (also installed as ``unitary-update``).

:data:`COMMANDS` is the table of commands.  Each is a module of this package with two functions
and a plain-text docstring:

``add_arguments(parser: argparse.ArgumentParser) -> None``
    Adds the command's options to its parser.  An option that sets a parameter of the library
    function the command calls is named after that parameter (``dest=``).
``run(args: argparse.Namespace) -> int``
    Runs the command with the parsed options (and ``args.argv``, the command line's words) and
    returns the exit status.
the module docstring
    The command's ``--help`` description; its first line is the command's line in the list of
    commands.

:func:`main` builds the parser from the table and runs one command; without a command, ``demo``.

A mistake in what the user asked for (a bad option, an invalid setting rejected by the library
with ValueError or TypeError, a missing file or folder, an optional library that is not
installed) ends the command with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from . import bench, bench_gpu, bench_jax, bench_rnn, bench_torch, conv_bench, conv_demo, demo, plot, soak, train
from ._common import MissingExtraError, UsageError

__all__ = ["COMMANDS", "main"]

PROG = "python -m unitary_update"

COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "soak": soak,
    "bench": bench,
    "bench-gpu": bench_gpu,
    "bench-jax": bench_jax,
    "bench-torch": bench_torch,
    "conv-bench": conv_bench,
    "conv-demo": conv_demo,
    "train": train,
    "plot": plot,
    "bench-rnn": bench_rnn,
}
"""The commands by name: each module has ``add_arguments(parser)``, ``run(args)`` and a plain docstring."""

DEFAULT_COMMAND = "demo"

_DESCRIPTION = """\
projUNN: O(kN^2) low-rank updates that keep a matrix exactly unitary (or orthogonal).

The commands demonstrate and measure the updates and train a unitary RNN with them.  Without a
command, the demo runs.  python -m unitary_update COMMAND --help describes a command."""

# MemoryError: sizes beyond the machine's memory (``demo --n 100000000``), a user's mistake too
_USER_ERRORS = (UsageError, MissingExtraError, ValueError, TypeError, OSError, MemoryError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised (as :class:`UsageError`), for :func:`main` to report."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, module in COMMANDS.items():
        description = module.__doc__ or ""  # None under python -OO
        command = commands.add_parser(
            name,
            help=description.split("\n", 1)[0],
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
    return parser


def _one_line(error: BaseException) -> str:
    """The message of a user's mistake, in one line."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.strerror}: {error.filename}"
    message = " ".join(str(error).split()) or type(error).__name__
    return f"out of memory: {message}" if isinstance(error, MemoryError) else message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m unitary_update`` and the ``unitary-update`` script.

    Parameters
    ----------
    argv : sequence of str, optional
        The command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        The process exit status: 0 on success, 2 for a mistake in what was asked for (the
        message is printed to stderr in one line), or the command's own status.

    Examples
    --------
    >>> from unitary_update.cli import main
    >>> main(["demo", "--n", "32"])  # doctest: +ELLIPSIS
    projUNN demo: N = 32, rank 1, float64; best of 3 runs each
    update ...
    project ...
    transport ...
    0
    >>> main(["demo", "--n", "thirty-two"])  # the message goes to stderr
    2
    """
    words = list(sys.argv[1:] if argv is None else argv)
    prog = PROG
    try:
        args = _parser().parse_args(words or [DEFAULT_COMMAND])
        args.argv = words
        prog = f"{PROG} {args.command}"
        status: int = COMMANDS[args.command].run(args)
        return status
    except _USER_ERRORS as error:
        prog = getattr(error, "prog", None) or prog
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
