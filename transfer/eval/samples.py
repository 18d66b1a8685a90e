"""The crash-safe log of graded samples that evaluation appends to, and its merge across ranks.

Each line of samples.jsonl is one `Sample`: what decoded it (system, its role and lambda), which
problem and sample it is, the completion and its grade. Evaluation writes it, analysis and every
report read it, through this module only. Records are appended and fsynced per batch; a SIGKILL
leaves at most one torn last line, which is dropped on the next open; a sample written twice
counts once. Under torchrun each rank appends to its own
samples.rank<k>.jsonl and rank 0 merges them into samples.jsonl in a single process's order.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from train.errors import UserError

logger = logging.getLogger(__name__)


ROLES = ("S", "S_RL", "L", "RAST", "L_RL")  # small base, small RL, target, target + delta, target RL


def system_name(role: str, lam: float) -> str:
    """How a system is shown and keyed: its role, and for RAST its lambda ("L+RAST(lam=0.5)")."""
    return f"L+RAST(lam={lam:g})" if role == "RAST" else role


@dataclass
class Sample:
    """One graded sample, a line of samples.jsonl."""

    system: str  # display name, unique within a run: "L", "L+RAST(lam=0.5)", ...
    role: str  # one of ROLES; with lam, what analysis and reports select on
    lam: float  # RAST strength (of the first pair when several); 0 for a model decoded alone
    # (S_RL of a LoRA pair decodes at 1)
    benchmark: str
    problem_id: str
    sample_index: int
    seed: int
    text: str
    extracted: str | None
    correct: bool
    reason: str
    num_tokens: int
    finished: bool  # False: cut at max_new_tokens
    token_ids: list[int] | None = None  # every sampled id, the one that stopped it included
    stop: int | str | None = None  # what ended it: a stop id or stop string; None: max_new_tokens
    careful: bool | None = None  # tiny task only: the answer took the careful style

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.system, self.benchmark, self.problem_id, self.sample_index

    def of(self, role: str, lam: float) -> bool:
        """Whether this sample was decoded by the system with this role (and, for RAST, lam:
        the swept pair's system, not a combination of several pairs whose first lam is lam)."""
        return self.role == role and (role != "RAST" or (
            self.lam == lam and self.system == system_name(role, lam)))

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items()
                           if v is not None or k not in OPTIONAL})

    @classmethod
    def from_json(cls, line: bytes | str, where: str) -> "Sample":
        return parse_record(cls, line, where, OPTIONAL, "point to a samples.jsonl written by "
                            "transfer.eval, or re-run the evaluation into a new output_dir")


OPTIONAL = {"token_ids", "stop", "careful"}


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

    def __init__(self, path: Path, others: list[Path] = (), record=Sample):
        self.path = path
        self.records = read_records(path, repair=True, record=record)
        self.records += [r for other in others
                         for r in read_records(other, repair=False, record=record)]

    def append(self, records: list) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write("".join(record.to_json() + "\n" for record in records))
            file.flush()
            os.fsync(file.fileno())
        self.records += records


def read_records(path: Path, repair: bool = False, record=Sample) -> list:
    """The complete records of a samples JSONL, each key once: a torn last line is skipped (and
    cut if repair), and of a key written twice the first record is kept, with a warning.

    Every reader (resume, merge, report, analysis) reads through here, so duplicates count
    once everywhere; two runs that shared an output_dir before it was locked wrote every
    sample twice. `record`: the class of a line (Sample; transfer.generate's rows).
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


def sample_files(output_dir: Path) -> list[Path]:
    return [output_dir / "samples.jsonl", *sorted(output_dir.glob("samples.rank*.jsonl"))]


def merge_samples(output_dir: Path, system_names: list[str], benchmarks: dict) -> list[Sample]:
    """Every rank's records, duplicates dropped, in a single-process run's order, written to
    samples.jsonl (atomically); the rank files are deleted after. Returns the records."""
    order = {name: i for i, name in enumerate(system_names)}
    bench_order = {label: i for i, label in enumerate(benchmarks)}
    problem_order = {(label, p["id"]): i for label, problems in benchmarks.items()
                     for i, p in enumerate(problems)}
    unknown = len(order) + len(problem_order)  # records of systems no longer configured: last
    merged = {}
    for path in sample_files(output_dir):
        for r in read_records(path):
            merged.setdefault(r.key, r)
    records = sorted(merged.values(), key=lambda r: (
        order.get(r.system, unknown), bench_order.get(r.benchmark, unknown),
        problem_order.get((r.benchmark, r.problem_id), unknown), r.sample_index))
    partial = output_dir / "samples.jsonl.merging"
    partial.write_text("".join(r.to_json() + "\n" for r in records))
    os.replace(partial, output_dir / "samples.jsonl")
    for path in sample_files(output_dir)[1:]:
        path.unlink()
    return records
