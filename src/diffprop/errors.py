"""The one exception type users see: a one-line message, no traceback, from the CLI."""


class DiffpropError(Exception):
    """Bad input or an unrecoverable run condition, explained in one line."""


def one_line(exc: BaseException) -> str:
    """An exception's text collapsed onto one line, for embedding in a DiffpropError."""
    return " ".join(str(exc).split()) or type(exc).__name__
