"""The ``onnxq`` command line: parse arguments, set up logging, call the library.

Each sub-command lives in ``onnxq/commands/<name>.py`` and exposes ``add_parser(subparsers)`` (which sets
``func`` on its parser to a ``run(args) -> int``). A user error (:class:`onnxq.errors.OnnxqError`) becomes one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator

from onnxq import progress
from onnxq.atomic import Terminated, terminate_cleanly
from onnxq.commands.console import ConsoleListener
from onnxq.errors import OnnxqError
from onnxq.version import __version__


def one_line(message: str) -> str:
    """The message on one line: newlines folded, other control characters escaped."""
    text = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

COMMAND_MODULES = (
    "quantize",
    "calibrate",
    "validate",
    "inspect",
    "lint",
    "build_engine",
    "export_scales",
    "import_qdq",
    "models",
    "demo",
    "sensitivity",
    "compare",
)


class HelpFormatter(argparse.HelpFormatter):
    """Help texts end with the option's default where it has a meaningful one and the text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, True, [], argparse.SUPPRESS)
                or "default" in text or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)"


def _add_output_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q, accepted before or after the sub-command (after it, they do not reset what was given before)."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="errors and results only: no progress, no summary, no warnings")


def _finish_subparsers(parser: argparse.ArgumentParser) -> None:
    """Every (nested) sub-command gets the output flags and the help formatter."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                sub.formatter_class = HelpFormatter
                _add_output_flags(sub, top=False)
                _finish_subparsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxq", description="Quantize ONNX models after export.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_output_flags(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"onnxq.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"onnxq.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
    _finish_subparsers(parser)
    return parser


@contextlib.contextmanager
def cli_logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Log records to the current ``sys.stderr`` for the duration of one command; the root logger's handlers and
    level are restored afterwards, so ``main`` can run in-process (tests, notebooks) any number of times."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    # Python warnings (numpy, onnx, torch) go to the log, shown with -v only: stderr stays one line per problem
    warnings_logger = logging.getLogger("py.warnings")
    previous_warnings = warnings_logger.level
    logging.captureWarnings(True)
    warnings_logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        logging.captureWarnings(False)
        warnings_logger.setLevel(previous_warnings)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli_logging(args.verbose, args.quiet), progress.listening(ConsoleListener(quiet=args.quiet)):
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        # numpy floating-point warnings (overflow, invalid) never leak as extra stderr lines (onnxq checks values
        # itself); SIGTERM removes temporary files and ends with one line
        with terminate_cleanly(), np.errstate(all="ignore"):
            return int(args.func(args) or 0)
    except OnnxqError as exc:
        print(f"onnxq: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Terminated:
        print("onnxq: terminated; no output written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
