"""Exceptions shared across the package."""


class UserError(Exception):
    """An error the user can fix: printed as one line (no traceback), exit status 2.

    The message says what went wrong and what to do next.
    """
