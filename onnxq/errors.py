"""The one exception type for user errors.

The CLI turns an :class:`OnnxqError` into one line on stderr and exit status 2; anything else is a bug.
"""


class OnnxqError(Exception):
    """A problem with the user's input: says what is wrong and how to mend it."""
