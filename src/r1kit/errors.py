"""User-facing errors.

A `UserError` is a mistake the user can fix (a missing model directory, an unknown task, a bad flag value,
an unreadable data file). The CLI prints its message on one line and exits with status 2; no traceback.
Messages say what is wrong and what to do.
"""


class UserError(Exception):
    """A mistake in the user's input; the message says what to do about it."""
