"""The one exception type users see: a one-line message, no traceback, from the CLI."""


class DiffpropError(Exception):
    """Bad input or an unrecoverable run condition, explained in one line."""
