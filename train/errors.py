"""Errors a user can cause (bad recipe, missing file, unknown model), reported in one line.

Entry points wrap their main() in `exit_on_user_error` so that these print
`error: <what to change>` and exit 2 instead of a traceback; anything else is a bug and
keeps its traceback.
"""

import contextlib
import sys


class UserError(Exception):
    """Something the user can fix; the message says what."""


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
