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

from onnxq.errors import OnnxqError

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxq", description="Quantize ONNX models after export.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"onnxq.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"onnxq.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
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
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli_logging(args.verbose, args.quiet):
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except OnnxqError as exc:
        print(f"onnxq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
