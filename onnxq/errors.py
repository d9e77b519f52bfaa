"""The one exception type for user errors.

The CLI turns an :class:`OnnxqError` into one line on stderr and exit status 2; anything else is a bug.
"""


class OnnxqError(Exception):
    """A problem with the user's input: says what is wrong and how to mend it."""


def require_at_least(what: str, value: float | None, minimum: float) -> None:
    """A user error ``"<what> must be at least <minimum>, got <value>"`` when ``value`` is given and below
    ``minimum``: the one wording of every range check on counts, sizes and thread numbers."""
    if value is not None and value < minimum:
        raise OnnxqError(f"{what} must be at least {minimum}, got {value}")
