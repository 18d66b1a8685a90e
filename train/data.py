"""Math problems for training and evaluation, in one schema: id, problem, answer (+ source fields).

`load_problems` takes 'tiny' (the embedded task), a benchmark name (math500, gsm8k, aime24, amc23, minerva_math,
olympiadbench, simplerl_math_level3to5), a .jsonl/.json/.parquet file, or a directory holding
<split>.jsonl. A name reads the local copy <data_dir or $RAST_DATA_DIR>/<name>/<split>.jsonl when
it exists, else its Hugging Face dataset (mapped into the same schema by `from_hub_row`).
Benchmarks default to the "test" split, the SimpleRL training set to "train".

    python -m train.data                   # row count of every local copy under $RAST_DATA_DIR
    python -m train.data math500           # one benchmark, or a path: python -m train.data f.jsonl
"""

import argparse
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from train.errors import UserError, exit_on_user_error
from train.grader import unscorable_golds
from train.tiny import task as tiny_task

logger = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet")
ID_KEYS = ("id", "unique_id", "idx")  # the first one a row has (non-empty) becomes its id


def as_text(value: Any) -> str | None:
    """A gold answer as a string: 27.0 -> "27" (amc23 stores integers as floats); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def after_hashes(solution: str) -> str:
    """GSM8K: the final answer is what follows "####" at the end of the worked solution."""
    return solution.split("####")[-1].strip()


def first_without_dollars(final_answer: list[str]) -> str:
    """OlympiadBench: final_answer is a one-element list like ["$69$"] (Qwen2.5-Math's rule)."""
    return final_answer[0].strip("$") if final_answer else ""


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark lives on the Hugging Face Hub and how its columns map onto ours."""

    hub_id: str
    default_split: str = "test"
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"test": "test"})  # ours -> hub's
    hub_data_files: str | None = None  # "{split}" pattern, for hub repos with one folder per subset
    problem_key: str = "problem"  # dotted for a nested column, e.g. "extra_info.question"
    answer_key: str = "answer"
    answer_rule: Callable[[Any], str | None] = as_text
    keep_raw_answer_as: str | None = None  # when answer_rule rewrites "answer", keep the original
    drop_empty_answers: bool = False  # known gaps in the hub copy, dropped with a warning


BENCHMARKS: dict[str, BenchmarkSource] = {
    "math500": BenchmarkSource("HuggingFaceH4/MATH-500"),  # id from unique_id
    "gsm8k": BenchmarkSource("openai/gsm8k", hub_config="main",
                             hub_splits={"test": "test", "train": "train"}, problem_key="question",
                             answer_rule=after_hashes, keep_raw_answer_as="solution"),
    # The hub copy holds the 30 AIME 2024 problems as its only split, "train".
    "aime24": BenchmarkSource("HuggingFaceH4/aime_2024", hub_splits={"test": "train"}),
    "amc23": BenchmarkSource("math-ai/amc23", problem_key="question",
                             keep_raw_answer_as="answer_original"),  # answer is a float (27.0)
    "minerva_math": BenchmarkSource("math-ai/minervamath", problem_key="question"),
    "olympiadbench": BenchmarkSource("math-ai/olympiadbench", problem_key="question",
                                     answer_key="final_answer", answer_rule=first_without_dollars),
    # SimpleRL-Zoo's parquet is in verl format: question and answer sit inside extra_info. Two of
    # its 8523 rows have an empty gold answer (idx 5054 and 5158), hence 8521 usable problems.
    "simplerl_math_level3to5": BenchmarkSource(
        "hkust-nlp/SimpleRL-Zoo-Data", default_split="train",
        hub_splits={"train": "train", "test": "test"},
        hub_data_files="simplelr_qwen_level3to5/{split}.parquet",
        problem_key="extra_info.question", answer_key="extra_info.answer", drop_empty_answers=True),
}


def _lookup(row: dict, dotted_key: str) -> Any:
    value = row
    for key in dotted_key.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def from_hub_row(source: BenchmarkSource, row: dict) -> dict:
    """One hub row -> a row with `problem` and `answer` (strings, possibly empty), fields kept."""
    mapped = dict(row)
    if source.keep_raw_answer_as:
        mapped[source.keep_raw_answer_as] = row.get(source.answer_key)
    mapped["problem"] = _lookup(row, source.problem_key)
    answer = _lookup(row, source.answer_key)
    mapped["answer"] = "" if answer is None else (source.answer_rule(answer) or "")
    return mapped


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number as a person would count it, raw row) for every row of a local JSONL, JSON array
    or parquet file: the one reader of user files (benchmarks, prompts). Anything it cannot read
    is one UserError naming the file and what to fix."""
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        try:
            return list(enumerate(pyarrow.parquet.read_table(path).to_pylist(), start=1))
        except (pyarrow.ArrowException, OSError) as err:
            raise UserError(f"{path} is not a readable parquet file ({str(err)[:120]}): "
                            f"re-export it") from None
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is not JSON
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not a valid JSON array (line {err.lineno}: {err.msg}); "
                            f"fix it, or write one JSON object per line") from None
    numbered = []
    # split on "\n" only: str.splitlines also breaks at U+2028, which GSM8K's text contains
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            numbered.append((line_number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {line_number} is not valid JSON ({err.msg}); "
                            f"fix or delete that line") from None
    return numbered


def _read_hub(name: str, source: BenchmarkSource, split: str, data_root: str | None):
    if split not in source.hub_splits:
        raise UserError(f"{name} has no split {split!r} on the hub ({source.hub_id}): use one of "
                        f"{', '.join(source.hub_splits)}")
    hub_split = source.hub_splits[split]
    try:
        if source.hub_data_files:
            data_files = source.hub_data_files.format(split=hub_split)
            hub_rows = datasets.load_dataset(source.hub_id, data_files=data_files, split="train")
        else:
            hub_rows = datasets.load_dataset(source.hub_id, source.hub_config, split=hub_split)
    except OSError as err:  # ConnectionError (offline, not cached) and dataset-not-found alike
        local = f"at {data_root}/{name}/{split}.jsonl" if data_root else "(RAST_DATA_DIR unset)"
        raise UserError(f"{name}: no local copy {local} and {source.hub_id} is not in the Hugging "
                        f"Face cache ({type(err).__name__}: hub offline?); pass a local "
                        f".jsonl path or set RAST_DATA_DIR to a folder holding {name}/{split}.jsonl"
                        ) from None
    rows = [from_hub_row(source, row) for row in hub_rows]
    if source.drop_empty_answers:
        kept = [row for row in rows if str(row["answer"]).strip()]
        if len(kept) < len(rows):
            logger.warning("%s: dropped %d hub rows with an empty answer",
                           name, len(rows) - len(kept))
        rows = kept
    return list(enumerate(rows, start=1))


def _resolve_path(name_or_path: str, split: str | None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        known = BENCHMARKS.get(path.name)
        split = split or (known.default_split if known else "test")
        file = path / f"{split}.jsonl"
        if not file.is_file():
            present = ", ".join(sorted(p.stem for p in path.glob("*.jsonl"))) or "none"
            raise UserError(f"{file} does not exist (splits in {path}: {present}); choose one "
                            f"of those as the split, or pass a file path")
        return file
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
        return path
    if path.suffix in SUFFIXES or os.sep in name_or_path:
        raise UserError(f"{path} does not exist: pass an existing .jsonl/.json/.parquet file, or "
                        f"a benchmark name with RAST_DATA_DIR set to the folder of "
                        f"<name>/<split>.jsonl")
    raise UserError(f"unknown dataset {name_or_path!r}: use one of {', '.join(BENCHMARKS)}, or a "
                    f".jsonl/.json/.parquet path or a directory holding <split>.jsonl")


def _normalise(numbered_rows: list[tuple[int, Any]], name: str, origin: str) -> list[dict]:
    problems, row_of_id = [], {}
    for index, (number, row) in enumerate(numbered_rows):
        if not isinstance(row, dict):
            raise UserError(f"{origin}: row {number} is not a JSON object; every row needs "
                            f"\"problem\" and \"answer\" fields")
        problem = row.get("problem", row.get("question"))
        answer = as_text(row.get("answer"))
        for field_name, value in (("problem", problem), ("answer", answer)):
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{origin}: row {number} has no non-empty {field_name!r} (a string"
                                f"{' or number' if field_name == 'answer' else ''}); fix or remove "
                                f"that row")
        source_id = next((row[key] for key in ID_KEYS if row.get(key) not in (None, "")), None)
        problem_id = str(source_id) if source_id is not None else f"{name}-{index}"
        if problem_id in row_of_id:
            raise UserError(f"{origin}: rows {row_of_id[problem_id]} and {number} share the id "
                            f"{problem_id!r}; ids key results and sampling seeds, make them unique")
        row_of_id[problem_id] = number
        problems.append({"id": problem_id, "problem": problem, "answer": answer}
                        | {k: v for k, v in row.items() if k not in ("id", "problem", "answer")})
    if not problems:
        raise UserError(f"{origin}: no rows; point at a file with one JSON object per line")
    return problems


def _columns(problems: list[dict]) -> dict[str, list]:
    """Column lists over the union of all rows' fields, missing fields as None.

    A source field whose values mix types across rows (say int and str) cannot be one Arrow
    column; such a field is stringified (JSON for non-strings) rather than dropped. None and an
    int/float mix are fine as they are. None of the seven shipped files needs this.
    """
    names = list(dict.fromkeys(key for row in problems for key in row))
    columns = {name: [row.get(name) for row in problems] for name in names}
    for name, values in columns.items():
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            columns[name] = [v if v is None or isinstance(v, str) else json.dumps(v)
                             for v in values]
    return columns


SHOWN_UNSCORABLE = 20  # rows named in the load-time warning; the count covers all


def _report_unscorable_golds(problems: list[dict], origin: str) -> None:
    """Warn, naming the rows, about gold answers no answer can grade right against (they stay:
    every system scores 0 on them, and the benchmark keeps its size). See
    train.grader.unscorable_golds; a gold that only its own string matches is one of them."""
    unscorable = unscorable_golds([problem["answer"] for problem in problems])
    if not unscorable:
        return
    shown = [f"{problems[i]['id']} ({problems[i]['answer'][:80]!r}: {why})"
             for i, why in list(unscorable.items())[:SHOWN_UNSCORABLE]]
    more = len(unscorable) - len(shown)
    logger.warning("%s: %d of %d gold answers are unscorable (no equivalent answer grades right "
                   "against them): %s%s", origin,
                   len(unscorable), len(problems), "; ".join(shown),
                   f"; and {more} more" if more else "")


def load_problems(name_or_path: str, split: str | None = None, limit: int | None = None,
                  data_dir: str | None = None) -> datasets.Dataset:
    """Problems with columns id, problem, answer (all str) plus the source's other fields.

    The dataset's info.description says where the rows came from (file path or hub id). Golds
    that no answer can grade right against are logged as a warning naming their rows.
    'tiny' is the embedded multiplication task (train.tiny.task), split "train" or "test".
    """
    if limit is not None and limit < 1:  # 0 gave NaN metrics, -1 silently dropped the last row
        raise UserError(f"limit must be >= 1 (leave it empty for every problem), got {limit}")
    if name_or_path == "tiny":
        problems = tiny_task.problems(split or "test")
        return problems.select(range(min(limit, len(problems)))) if limit is not None else problems
    if name_or_path in BENCHMARKS:
        source = BENCHMARKS[name_or_path]
        split = split or source.default_split
        data_root = data_dir or os.environ.get("RAST_DATA_DIR")
        local = Path(data_root, name_or_path, f"{split}.jsonl") if data_root else None
        if local is not None and local.is_file():
            rows, origin = read_rows(local), str(local)
        else:
            rows = _read_hub(name_or_path, source, split, data_root)
            origin = f"{source.hub_id} ({source.hub_splits[split]} split)"
        name = name_or_path
    else:
        path = _resolve_path(name_or_path, split)
        rows, origin = read_rows(path), str(path)
        # "<name>/test.jsonl" -> ids "<name>-<index>"; "probs.jsonl" -> "probs-<index>"
        name = path.parent.name if path.stem in ("train", "test", "validation") else path.stem
    if limit is not None:
        rows = rows[:limit]
    problems = _normalise(rows, name, origin)
    _report_unscorable_golds(problems, origin)
    import pyarrow

    try:
        return datasets.Dataset.from_dict(_columns(problems),
                                          info=datasets.DatasetInfo(description=origin))
    except (OverflowError, pyarrow.ArrowException) as err:  # e.g. an integer beyond 2^63
        raise UserError(f"{origin}: a column holds values a dataset cannot store ({err}): make "
                        f"that field a string, or drop it") from None


def load_benchmark(name_or_path: str, split: str | None = None,
                   limit: int | None = None) -> list[dict]:
    """Rows {id, problem, answer} (all str) of an evaluation benchmark; see load_problems."""
    return [{"id": str(row["id"]), "problem": row["problem"], "answer": str(row["answer"])}
            for row in load_problems(name_or_path, split, limit)]


def benchmark_label(name_or_path: str) -> str:
    """Short name of a benchmark for tables and sample keys: a path's stem, else the name."""
    is_path = "/" in name_or_path or name_or_path.endswith(SUFFIXES)
    return Path(name_or_path).stem if is_path else name_or_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print row counts of benchmark data.")
    parser.add_argument("name_or_path", nargs="?", help="benchmark name or file/dir; default: all")
    parser.add_argument("--split", default=None)
    parser.add_argument("--data_dir", "--data-dir", default=None, help="default: $RAST_DATA_DIR")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if args.name_or_path:
            known = BENCHMARKS.get(args.name_or_path)
            targets = [(args.name_or_path, args.split or (known.default_split if known else None))]
        else:
            data_root = args.data_dir or os.environ.get("RAST_DATA_DIR")
            if not data_root or not Path(data_root).is_dir():
                raise UserError(f"no data directory ({data_root or 'RAST_DATA_DIR unset'}): set "
                                f"RAST_DATA_DIR or --data-dir to the folder holding "
                                f"<name>/<split>.jsonl")
            targets = []
            for name, source in BENCHMARKS.items():
                splits = sorted(p.stem for p in Path(data_root, name).glob("*.jsonl"))
                if not splits:
                    raise UserError(f"no local copy of {name} under {data_root}: expected "
                                    f"{data_root}/{name}/{source.default_split}.jsonl")
                targets += [(name, split) for split in splits]
        for name_or_path, split in targets:
            problems = load_problems(name_or_path, split, data_dir=args.data_dir)
            print(f"{name_or_path:<24} {split or '-':<6} {len(problems):>6} rows  "
                  f"{problems.info.description}")


if __name__ == "__main__":
    main()
