"""What an entry point's main() does with a bad input: exit code, error line, files it changed.

Not a test module: each entry point's table of bad inputs (tests/transfer/test_generate.py,
tests/transfer/eval/test_bad_inputs.py, ...) compares `outcome(...)` with
`(2, "error: <the expected line>", [])`, so a failure shows what the code did instead (a
traceback's exception, exit 0, or which of the user's files it touched).
"""

import hashlib
import shlex
import traceback
from pathlib import Path


def file_digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def outcome(main, argv: str, capsys, root: Path) -> tuple:
    """(exit code or "traceback <Exception>: <message>", last stderr line, the files under root
    that existed before and were changed or deleted) of main(shlex.split(argv))."""
    before = file_digests(root)
    capsys.readouterr()
    try:
        main(shlex.split(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    except Exception as err:  # noqa: BLE001 (a traceback is the outcome being tested for)
        frame = traceback.extract_tb(err.__traceback__)[-1]
        code = (f"traceback {type(err).__name__}: {str(err)[:150]} "
                f"({Path(frame.filename).name}:{frame.lineno})")
    lines = capsys.readouterr().err.strip().splitlines()
    after = file_digests(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    return code, lines[-1] if lines else "", changed
