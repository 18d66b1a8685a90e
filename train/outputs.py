"""Output directories: one writer, one owner. Every command that writes a directory (train.grpo,
transfer.eval.evaluate, transfer.analysis.analyze) claims it here; transfer.generate locks its
one output file. It lives in train/ because train.grpo claims its output_dir too, and train never
imports transfer (transfer.runlog re-exports these).

- `claim_output_dir`: one directory, one owner. A command that writes a directory takes its lock
  and refuses a directory that holds another command's artefacts: an analysis pointed at an
  evaluation's directory replaced its samples.jsonl, an evaluation pointed at a model's
  directory overwrote the model's config.json, a GRPO run pointed at an evaluation's directory
  wrote its checkpoints among the samples. The owner is recorded in OWNER_FILE; directories
  written before owner files are known by their files (ARTEFACTS).
- `output_lock`: one writer per output. Two evaluations on one output_dir both decoded and
  appended every sample, so the log held each one twice. The lock is an flock on a small file
  next to the output holding the holder's pid and host; the kernel drops it when the holder dies
  (kill -9 included), so a crash never leaves a stale lock behind. On NFS, Linux maps flock onto
  fcntl locks, which the server arbitrates.
- `write_json_atomic`: a kill leaves the old file or the new one, never a torn one.

    with claim_output_dir(Path("outputs/tiny-s-grpo"), "training"):
        ...  # train; a second run, or an evaluation, on this directory is refused in one line
"""

import contextlib
import datetime
import fcntl
import json
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


OWNER_FILE = ".rast-owner"  # which command's directory this is: {"command": "evaluation"}
# What marks a directory as another command's when it has no OWNER_FILE (older runs, models):
# glob patterns, the first owner that matches wins. rast_pair.json is written by train.grpo
# alone; checkpoint-<step>/ are its Trainer's checkpoints, there before rast_pair.json is.
ARTEFACTS = {"evaluation": ("systems.json",), "analysis": ("positions.jsonl",),
             "training": ("rast_pair.json", "checkpoint-*"),
             "model": ("adapter_config.json", "trainer_state.json", "model.safetensors",
                       "pytorch_model.bin", "generation_config.json")}
OWNERS = {"evaluation": "an evaluation (transfer.eval)", "analysis": "an analysis",
          "training": "a GRPO training run (train.grpo)", "model": "a model or a training run"}


@contextlib.contextmanager
def claim_output_dir(output_dir: Path, command: str, lock_name: str = ".lock"):
    """Create output_dir, lock it (lock_name), and refuse it when it holds what another command
    wrote (OWNER_FILE, else ARTEFACTS); then record `command` as its owner for the block.

    command: "training", "evaluation" or "analysis". Only the holder of ".lock" writes
    OWNER_FILE (the other ranks of a sharded evaluation lock ".lock.rank<k>"); a directory
    of its own written before owner files gets one.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir {output_dir} is a file: give a directory path")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output_dir {output_dir}: {err.strerror}") from None
    with output_lock(output_dir / lock_name, f"output_dir {output_dir}"):
        owner = directory_owner(output_dir)
        if owner not in (None, command):
            raise UserError(f"output_dir {output_dir} holds the files of "
                            f"{OWNERS.get(owner, owner)}, which this {command} would overwrite: "
                            f"give it a directory of its own")
        if lock_name == ".lock" and not (output_dir / OWNER_FILE).is_file():
            write_json_atomic(output_dir / OWNER_FILE, {"command": command})
        yield


def directory_owner(directory: Path) -> str | None:
    """The command whose directory this is, by its OWNER_FILE or its artefacts; None if none."""
    try:
        return json.loads((directory / OWNER_FILE).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return next((owner for owner, patterns in ARTEFACTS.items()
                 if any(any(directory.glob(pattern)) for pattern in patterns)), None)


def write_json_atomic(path: Path, value) -> None:
    """Write JSON to path through a temporary file and a rename: a kill leaves the old file or
    the new one, never a torn one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)
