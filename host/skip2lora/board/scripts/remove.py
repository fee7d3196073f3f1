# Remove a board file; with missing_ok, a file that is not there is no error (errno 2, ENOENT).
import os


def remove(path, missing_ok=False):
    try:
        os.remove(path)
    except OSError as e:
        if not (missing_ok and e.args and e.args[0] == 2):
            raise
