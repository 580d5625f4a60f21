"""The one exception type the CLI turns into a one-line message and exit code 2."""


class DarknetpyError(Exception):
    """Bad input from the user: a cfg, weights, corpus or option problem.

    `str(err)` is the complete one-line message, already prefixed with
    `PATH:LINE: ` or `PATH: ` where a file is involved.
    """

    def __init__(self, message, path=None, line=None):
        self.path, self.line = path, line
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path is not None else "")
        super().__init__(where + message)
