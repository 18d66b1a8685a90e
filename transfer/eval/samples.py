"""The crash-safe log of graded samples that evaluation appends to, and its merge across ranks.

Each record is one graded sample (system, benchmark, problem_id, sample_index, seed, text,
extracted, correct, ...). Records are appended and fsynced per batch; a SIGKILL leaves at most one
torn last line, which is dropped on the next open. Under torchrun each rank appends to its own
samples.rank<k>.jsonl and rank 0 merges them into samples.jsonl in a single process's order.
"""

import json
import logging
import os
from pathlib import Path

from train.errors import UserError

logger = logging.getLogger(__name__)

# What identifies a record, and what every reader (metrics, report, resume, analysis) takes
# from one.
KEY = ("system", "benchmark", "problem_id", "sample_index")
REQUIRED = (*KEY, "text", "correct", "num_tokens", "finished")


class SampleLog:
    """Append-only JSONL of graded samples that survives SIGKILL (see read_records).

    A kill mid-write leaves at most one torn last line (no trailing newline): it is dropped and
    cut from the file before appending, so the next record does not glue onto it. `others` are
    the files of other ranks (or of an earlier run with another layout): their records count as
    done, they are read but never written or repaired (their rank may be appending right now).
    """

    def __init__(self, path: Path, others: list[Path] = (), key: tuple[str, ...] = KEY,
                 required: tuple[str, ...] = REQUIRED):
        self.path = path
        self.records = read_records(path, repair=True, key=key, required=required)
        self.records += [r for other in others
                         for r in read_records(other, repair=False, key=key, required=required)]

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write("".join(json.dumps(record) + "\n" for record in records))
            file.flush()
            os.fsync(file.fileno())
        self.records += records


def read_records(path: Path, repair: bool, key: tuple[str, ...] = KEY,
                 required: tuple[str, ...] = REQUIRED) -> list[dict]:
    """The complete records of a samples JSONL, each key once.

    A torn last line is skipped with a warning (and cut from the file if repair). A record of a
    key seen before is dropped with a warning, the first kept: two runs that shared an
    output_dir before it was locked wrote every sample twice. A line that is not an object with
    the `required` fields is a UserError naming it.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, torn = data.split(b"\n")
    records = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number} is not a JSON record; fix or delete that "
                            f"line, or use a new output_dir") from None
        if not isinstance(record, dict):
            why = f"a {type(record).__name__}, not an object"
        elif missing := [field for field in required if field not in record]:
            why = f"no {', '.join(missing)}"
        else:
            records.setdefault(tuple(record[field] for field in key), record)
            continue
        raise UserError(f"{path}:{number} is not a sample record ({why}); fix or delete that "
                        f"line, or use a new output_dir")
    if len(records) < len(lines):
        logger.warning("%s holds %d duplicated sample record(s); counting each sample once (the "
                       "first)", path, len(lines) - len(records))
    if torn:
        logger.warning("%s a torn last line of %s (%d bytes) left by a killed run",
                       "cutting" if repair else "skipping", path, len(torn))
    if torn and repair:
        with open(path, "r+b") as file:
            file.truncate(len(data) - len(torn))
    return list(records.values())


def sample_files(output_dir: Path) -> list[Path]:
    return [output_dir / "samples.jsonl", *sorted(output_dir.glob("samples.rank*.jsonl"))]


def merge_samples(output_dir: Path, system_names: list[str], benchmarks: dict) -> list[dict]:
    """Every rank's records, duplicates dropped, in a single-process run's order, written to
    samples.jsonl (atomically); the rank files are deleted after. Returns the records."""
    order = {name: i for i, name in enumerate(system_names)}
    bench_order = {label: i for i, label in enumerate(benchmarks)}
    problem_order = {(label, p["id"]): i for label, problems in benchmarks.items()
                     for i, p in enumerate(problems)}
    unknown = len(order) + len(problem_order)  # records of systems no longer configured: last
    merged = {}
    for path in sample_files(output_dir):
        for r in read_records(path, repair=False):
            merged.setdefault(tuple(r[field] for field in KEY), r)
    records = sorted(merged.values(), key=lambda r: (
        order.get(r["system"], unknown), bench_order.get(r["benchmark"], unknown),
        problem_order.get((r["benchmark"], r["problem_id"]), unknown), r["sample_index"]))
    partial = output_dir / "samples.jsonl.merging"
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(partial, output_dir / "samples.jsonl")
    for path in sample_files(output_dir)[1:]:
        path.unlink()
    return records
