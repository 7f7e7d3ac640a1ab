"""User-facing errors.

A `UserError` is bad input: the CLI prints its message as one line (`distill: error: ...`) and exits 2,
with no traceback. Raise it before any compute and before anything is written.
"""


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and how to fix it."""


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""
