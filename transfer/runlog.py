"""One run log for every command that decodes into an output: its lock, its append-only record
file, and the rule by which a re-run resumes it.

- `claim_output_dir` / `output_lock` (from train.outputs): one directory, one owner; one writer
  per output. Two evaluations on one output_dir both decoded and appended every sample, so the
  log held each one twice; an analysis pointed at an evaluation's directory replaced its
  samples.jsonl.
- `SampleLog` / `read_records`: records appended and fsynced per batch; a SIGKILL leaves at most
  one torn last line, dropped on the next open; a record written twice counts once.
- `changed_settings` / `write_json_atomic` (train.outputs): what a run was decoded with is
  recorded beside its log; a re-run with other settings is refused, never mixed in.
- `chunks_to_do`: prompts go to the decoder in fixed chunks of batch_size // n, the same chunks
  on every run, so an interrupted chunk is re-decoded with the same batch mates (padding changes
  floats) and the same per-sample seeds; only its missing samples are appended, and a resumed run
  ends identical to an uninterrupted one.

transfer.generate (one JSONL output) and transfer.eval.evaluate (an output_dir) both run on it.

    with output_lock(Path("outputs/transfer-tiny/.lock"), "output_dir outputs/transfer-tiny"):
        log = SampleLog(Path("outputs/transfer-tiny/samples.jsonl"), Sample)
        ...  # decode the chunks_to_do, log.append(records)
"""

import json
import logging
import os
from dataclasses import fields
from pathlib import Path

from train.errors import UserError

# Re-exported: transfer's commands take the lock, the owner claim and the atomic writer from here;
# they live in train.outputs so that train.grpo can claim its output_dir too (train never imports
# transfer).
from train.outputs import OWNER_FILE, claim_output_dir, output_lock, write_json_atomic  # noqa: F401

logger = logging.getLogger(__name__)


def parse_record(cls, line: bytes | str, where: str, optional: set[str], fix: str):
    """A dataclass record from its JSON line; a UserError naming the line and `fix` for a line
    that is not JSON or lacks a field that is not optional."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise UserError(f"{where} is not a JSON record; fix or delete that line, or use a new "
                        f"output_dir") from None
    required = [f.name for f in fields(cls) if f.name not in optional]
    missing = [name for name in required if name not in row] if isinstance(row, dict) else [
        "every field: not an object"]
    if missing:
        raise UserError(f"{where} is not a {cls.__name__.lower()} record (missing "
                        f"{', '.join(missing)}): {fix}")
    return cls(**{f.name: row.get(f.name) for f in fields(cls)})


class SampleLog:
    """Append-only JSONL of graded samples that survives SIGKILL.

    A kill mid-write leaves at most one torn last line (no trailing newline): it is dropped and
    cut from the file before appending, so the next record does not glue onto it. `others` are
    the files of other ranks (or of an earlier run with another layout): their records count as
    done, they are read but never written or repaired (their rank may be appending right now).
    """

    def __init__(self, path: Path, record, others: list[Path] = ()):
        self.path = path
        self.records = read_records(path, record, repair=True)
        self.records += [r for other in others
                         for r in read_records(other, record)]

    def append(self, records: list) -> None:
        """Append and fsync; a full disk is one line (a partial line it leaves is cut on the
        next open, and the resume re-decodes what it held)."""
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write("".join(record.to_json() + "\n" for record in records))
                file.flush()
                os.fsync(file.fileno())
        except OSError as err:
            raise UserError(f"cannot append to {self.path}: {err.strerror}; free space (or fix "
                            f"the directory) and run the same command again: it resumes from "
                            f"the last complete record") from None
        self.records += records


def read_records(path: Path, record, repair: bool = False) -> list:
    """The complete records of a samples JSONL, each key once: a torn last line is skipped (and
    cut if repair), and of a key written twice the first record is kept, with a warning.

    Every reader (resume, merge, report, analysis) reads through here, so duplicates count
    once everywhere; two runs that shared an output_dir before it was locked wrote every
    sample twice. `record`: the class of a line (transfer.eval.samples.Sample,
    transfer.generate.Row), with from_json(line, where) and a `key`.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, torn = data.split(b"\n")
    unique = {}
    for number, line in enumerate(lines, 1):
        parsed = record.from_json(line, f"{path}:{number}")
        unique.setdefault(parsed.key, parsed)
    records = list(unique.values())
    if len(records) < len(lines):
        logger.warning("%s holds %d duplicated sample record(s); counting each sample once (the "
                       "first)", path, len(lines) - len(records))
    if torn and not repair:
        logger.info("skipping an incomplete last line of %s (%d bytes): a run killed mid-write, "
                    "or one still writing", path, len(torn))
    if torn and repair:
        logger.warning("dropping a torn last line of %s (%d bytes) left by a killed run",
                       path, len(torn))
        with open(path, "r+b") as file:
            file.truncate(len(data) - len(torn))
    return records


def changed_settings(stored: dict, wanted: dict, defaults: dict | None = None) -> str:
    """"key: old -> new" for each setting of `wanted` that `stored` (what a run recorded) holds
    with another value, joined; "" when they agree. A key an older record lacks reads as its
    `defaults` entry (a setting added later, whose default is what that run did)."""
    defaults = defaults or {}
    return ", ".join(f"{key}: {stored.get(key, defaults.get(key))!r} -> {value!r}"
                     for key, value in wanted.items()
                     if stored.get(key, defaults.get(key)) != value)


def chunks_to_do(keys: list[str], n: int, batch_size: int, done: set[tuple[str, int]],
                 shard: tuple[int, int] = (0, 1)) -> tuple[list[list[str]], int]:
    """(chunks of keys with a sample not in `done`, number of chunks this shard owns).

    keys are split into fixed chunks of batch_size // n (the decoder's batches); done holds
    (key, sample index) of the samples already logged. shard = (rank, world_size): this process
    owns chunks rank, rank + world_size, ...: whole chunks, so the batches (and with them padding
    and floats) are those of a single-process run.
    """
    rank, world_size = shard
    per_chunk = max(1, batch_size // n)
    own = [keys[i:i + per_chunk] for i in range(0, len(keys), per_chunk)][rank::world_size]
    todo = [chunk for chunk in own
            if any((key, i) not in done for key in chunk for i in range(n))]
    return todo, len(own)
