"""The crash-safe log of graded samples that evaluation appends to, and its merge across ranks.

Each line of samples.jsonl is one `Sample`: what decoded it (system, its role and deltas), which
problem and sample it is, the completion and its grade. Evaluation writes it, analysis and every
report read it, through this module and transfer.runlog (the append-only log: a SIGKILL leaves
at most one torn last line, dropped on the next open; a sample written twice counts once).
Under torchrun each rank appends to its own
samples.rank<k>.jsonl and rank 0 merges them into samples.jsonl in a single process's order.
"""

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from transfer.deltas import Delta
from transfer.runlog import parse_record, read_records

ROLES = ("S", "S_RL", "L", "RAST", "L_RL")  # small base, small RL, target, target + delta, target RL


def system_name(role: str, lam: float) -> str:
    """How a system is shown and keyed: its role, and for the swept pair's RAST its lambda
    ("L+RAST(lam=0.5)"); a combination of pairs spells its terms (evaluate.System.name)."""
    return f"L+RAST(lam={lam:g})" if role == "RAST" else role


@dataclass
class Sample:
    """One graded sample, a line of samples.jsonl."""

    system: str  # display name, unique within a run: "L", "L+RAST(lam=0.5)", ...
    role: str  # one of ROLES; with deltas, what analysis and reports select on
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
    # the grade under the paper runner's rule (train.grader RULES "paper": relative 1e-4, x100
    # and /100); `correct` is the default rule's. None: written before both were kept.
    correct_paper: bool | None = None
    # The system's deltas (transfer.deltas), () for a model decoded alone (S_RL of a LoRA pair
    # decodes as S + 1 x its delta); None in a file written before samples recorded them.
    deltas: tuple[Delta, ...] | None = ()

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.system, self.benchmark, self.problem_id, self.sample_index

    def of(self, role: str, deltas: tuple[Delta, ...] = ()) -> bool:
        """Whether this sample was decoded by the system with this role and, for RAST, exactly
        these deltas (a combination of several pairs is not its first pair's system)."""
        return self.role == role and (role != "RAST" or self.deltas == tuple(deltas))

    def to_json(self) -> str:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "deltas"}
        row = {k: v for k, v in row.items() if v is not None or k not in OPTIONAL}
        # lam, the first delta's strength, for readers of earlier files; deltas say it all
        lam = getattr(self, "legacy_lam", 0.0) if self.deltas is None else (
            self.deltas[0].lam if self.deltas else 0.0)
        row = {"system": row.pop("system"), "role": row.pop("role"), "lam": lam, **row}
        if self.deltas is not None:
            row["deltas"] = [delta.to_dict() for delta in self.deltas]
        return json.dumps(row)

    @classmethod
    def from_json(cls, line: bytes | str, where: str) -> "Sample":
        sample = parse_record(cls, line, where, OPTIONAL, "point to a samples.jsonl written by "
                              "transfer.eval, or re-run the evaluation into a new output_dir")
        if sample.deltas is not None:
            sample.deltas = tuple(Delta.from_dict(row) for row in sample.deltas)
        else:  # an earlier file: its lam is written back as read (merge rewrites records)
            sample.legacy_lam = json.loads(line).get("lam", 0.0)
        return sample


OPTIONAL = {"token_ids", "stop", "careful", "correct_paper", "deltas"}


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
        for r in read_records(path, Sample):
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
