"""One writer per output: a second run on the same output refuses in one line naming the holder.

Two evaluations on one output_dir both decoded and appended every sample, so the sample log held
each one twice. The lock is an flock on a small file next to the output holding the holder's pid
and host; the kernel drops it when the holder dies (kill -9 included), so a crash never leaves a
stale lock behind. On NFS, Linux maps flock onto fcntl locks, which the server arbitrates.

    with output_lock(Path("outputs/transfer-tiny/.lock"), "output_dir outputs/transfer-tiny"):
        ...  # decode and append
"""

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path

from train.errors import UserError


@contextlib.contextmanager
def output_lock(lock_file: Path, what: str):
    """Hold an exclusive lock on lock_file for the block; UserError when another process has it.

    `what` names the output for the message ("output_dir outputs/x", "--output out.jsonl").
    """
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot write {what}: {err.strerror} ({lock_file}); choose a writable "
                        f"location") from None
    with os.fdopen(descriptor, "r+") as handle:  # closing it releases the flock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "a process that has not written its name yet"
            raise UserError(f"{what} is in use by another run ({holder}): wait for it to finish, "
                            f"or give this run another output") from None
        handle.truncate()
        since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {since}\n")
        handle.flush()
        yield
