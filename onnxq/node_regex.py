"""Node-name regexes (``--exclude-node``, ``--include-node``, ``[regex."..."]``) run on a linear-time engine.

Python's ``re`` backtracks: ``^(a+)+$`` against a 29-character node name took 86 s. Patterns are compiled with
RE2 (the ``google-re2`` package, a core dependency), whose matching time is linear in the name's length whatever
the pattern (RE2 documentation, "Why RE2": "guarantees linear-time execution"); RE2 has no backreferences or
lookaround, so such patterns are refused with one line. Without ``google-re2`` installed, Python's ``re`` is used
and node names are cut to ``FALLBACK_MAX_NAME`` characters before matching, which bounds the work.
"""

from __future__ import annotations

import functools
import logging

from onnxq.errors import OnnxqError

log = logging.getLogger(__name__)

FALLBACK_MAX_NAME = 256
MAX_PATTERN = 4096

try:
    import re2 as _re2
except ImportError:  # pragma: no cover - google-re2 is a core dependency
    _re2 = None
    import re as _re


def engine() -> str:
    return "re2" if _re2 is not None else "re (bounded)"


@functools.lru_cache(maxsize=1024)
def compile_node_regex(pattern: str):
    """The compiled pattern; an invalid or unsupported one is an :class:`OnnxqError` naming it."""
    if len(pattern) > MAX_PATTERN:
        raise OnnxqError(f"node-name regex is {len(pattern)} characters long, over the {MAX_PATTERN} limit")
    if _re2 is not None:
        options = _re2.Options()
        options.log_errors = False  # RE2 would print its own error line to stderr
        try:
            return _re2.compile(pattern, options)
        except _re2.error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise OnnxqError(f"invalid node-name regex {pattern!r} ({detail}); onnxq uses RE2, which has no "
                             "backreferences or lookaround") from exc
    try:
        return _re.compile(pattern)
    except _re.error as exc:
        raise OnnxqError(f"invalid node-name regex {pattern!r}: {exc}") from exc


def search(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``name`` (``re.search`` semantics)."""
    compiled = compile_node_regex(pattern)
    if _re2 is None:
        name = name[:FALLBACK_MAX_NAME]
    return compiled.search(name) is not None
