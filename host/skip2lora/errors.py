"""The one exception type the CLI turns into a one-line message and exit status 2.

Every reader and checker raises UserError for bad input, with the file, what is wrong and
what to do, so a user never sees a traceback for a mistake of theirs.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""

    def __init__(self, message, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)
