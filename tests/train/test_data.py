import json
import os
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

import train.data
from train.data import BENCHMARKS, from_hub_row, load_problems, main
from train.errors import UserError

# Row counts of the local copies (../shared/data/README.md).
LOCAL_COUNTS = [
    ("math500", "test", 500),
    ("gsm8k", "test", 1319),
    ("gsm8k", "train", 7473),
    ("aime24", "test", 30),
    ("amc23", "test", 40),
    ("minerva_math", "test", 272),
    ("olympiadbench", "test", 675),
    ("simplerl_math_level3to5", "train", 8521),
]


@pytest.fixture(scope="module")
def data_dir():
    root = Path(os.environ["RAST_DATA_DIR"])  # set by tests/conftest.py unless given
    if not root.is_dir():
        pytest.fail(f"benchmark copies not found at {root}: set RAST_DATA_DIR")
    return root


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "split", "rows"), LOCAL_COUNTS)
def test_local_copies_load_with_their_row_counts_and_schema(data_dir, name, split, rows):
    problems = load_problems(name, split)
    assert len(problems) == rows
    assert problems.column_names[:3] == ["id", "problem", "answer"]
    assert problems.info.description == str(data_dir / name / f"{split}.jsonl")
    for column in ("id", "problem", "answer"):
        values = problems[column]
        assert all(isinstance(v, str) and v.strip() for v in values), column
    assert len(set(problems["id"])) == rows  # ids key results and seeds: unique per file


def test_default_splits_and_source_fields(data_dir):
    assert len(load_problems("gsm8k")) == 1319  # benchmarks default to test
    assert len(load_problems("simplerl_math_level3to5")) == 8521  # the training set to train
    math500 = load_problems("math500", limit=3)
    assert math500[0]["id"] == math500[0]["unique_id"] == "test/precalculus/807.json"
    assert isinstance(math500[0]["level"], int)
    amc23 = load_problems("amc23", limit=1)
    assert (amc23[0]["id"], amc23[0]["answer"], amc23[0]["answer_original"]) == ("0", "27", 27.0)
    olympiad = load_problems("olympiadbench", limit=1)
    assert olympiad[0]["final_answer"] == ["2"] and olympiad[0]["answer"] == "2"


def test_text_is_unchanged_including_unicode_line_separators(data_dir):
    # gsm8k train line 2382 holds U+2028 inside a string: it must not split the JSONL line.
    path = data_dir / "gsm8k" / "train.jsonl"
    with path.open(encoding="utf-8") as lines:
        raw = [json.loads(line) for line in lines]
    problems = load_problems(str(path))
    assert problems[2381]["solution"] == raw[2381]["solution"]
    assert "\u2028" in problems[2381]["problem"] + problems[2381]["solution"]
    assert problems["problem"] == [row["problem"] for row in raw]


def test_path_forms_file_directory_and_data_dir(data_dir, monkeypatch):
    aime_file = data_dir / "aime24" / "test.jsonl"
    assert load_problems(str(aime_file))["id"] == load_problems("aime24")["id"]
    assert len(load_problems(str(data_dir / "aime24"))) == 30
    assert len(load_problems(str(data_dir / "simplerl_math_level3to5"))) == 8521  # its train split
    assert len(load_problems(str(data_dir / "gsm8k"), split="train", limit=5)) == 5
    monkeypatch.delenv("RAST_DATA_DIR")
    assert len(load_problems("minerva_math", data_dir=str(data_dir))) == 272


def test_json_and_parquet_files_and_question_only_rows(tmp_path):
    rows = [{"question": "2+2?", "answer": 4.0}, {"question": "3*3?", "answer": 9, "id": 7}]
    (tmp_path / "probs.json").write_text(json.dumps(rows))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(
        [{"problem": "2+2?", "answer": "4"}, {"problem": "1/2+1/2?", "answer": "1"}]),
        tmp_path / "probs.parquet")
    from_json = load_problems(str(tmp_path / "probs.json"))
    assert from_json["id"] == ["probs-0", "7"]
    assert from_json["problem"] == ["2+2?", "3*3?"] and from_json["answer"] == ["4", "9"]
    assert from_json["question"] == ["2+2?", "3*3?"]
    assert load_problems(str(tmp_path / "probs.parquet"))["answer"] == ["4", "1"]


def test_heterogeneous_source_field_is_stringified(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"problem": "a", "answer": "1", "level": 3, "tag": None},
        {"problem": "b", "answer": "2", "level": "Level 5", "tag": 0.5},
        {"problem": "c", "answer": "3", "extra": [1, 2]},  # a field only some rows have
    ])
    problems = load_problems(str(path))
    assert problems["level"] == ["3", "Level 5", None]
    assert problems["tag"] == [None, 0.5, None]
    assert problems["extra"] == [None, None, [1, 2]]


def test_a_load_names_the_rows_whose_gold_no_answer_can_match(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RAST_HOME", str(tmp_path / "rast"))
    path = write_jsonl(tmp_path / "golds.jsonl", [
        {"id": "ok", "problem": "a", "answer": r"\frac{1}{2}"},
        {"id": "equation", "problem": "b", "answer": "3 = 4"},
        {"id": "percent", "problem": "c", "answer": r"0.56 = 56\%"},  # read as 0.56: scorable
        {"id": "python", "problem": "d", "answer": "-1./3"},  # read as -1/3: scorable
        {"id": "text", "problem": "e", "answer": "E_{1},E_{2}"},
    ])
    with caplog.at_level("WARNING", logger="train.data"):
        assert len(load_problems(str(path))) == 5  # reported, not dropped
    assert caplog.messages == [(
        f"{path}: 2 of 5 gold answers are unscorable (no equivalent answer grades right against "
        "them): equation ('3 = 4': an (in)equation between two numbers: no answer equals it); "
        "text ('E_{1},E_{2}': math-verify keeps it as text: only the same string matches it)")]


@pytest.mark.parametrize(("bad_row", "field"), [
    ({"problem": "3*3?"}, "answer"),
    ({"problem": "3*3?", "answer": "  "}, "answer"),
    ({"problem": "3*3?", "answer": ["9"]}, "answer"),
    ({"question": "", "answer": "9"}, "problem"),
])
def test_row_without_problem_or_answer_names_file_and_row(tmp_path, bad_row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "2+2?", "answer": "4"}, bad_row])
    with pytest.raises(UserError) as err:
        load_problems(str(path))
    message = str(err.value)
    assert "\n" not in message
    assert f"{path}: row 2 has no non-empty '{field}'" in message and "fix or remove" in message


def test_malformed_json_and_duplicate_ids(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", \n')
    with pytest.raises(UserError, match=r"broken.jsonl: line 3 is not valid JSON"):
        load_problems(str(path))
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "problem": "a", "answer": "1"},
                                                {"id": "1", "problem": "b", "answer": "2"}])
    with pytest.raises(UserError, match=r"rows 1 and 2 share the id '1'"):
        load_problems(str(path))


def test_unknown_name_missing_file_and_missing_split(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'math501': use one of math500, gsm8k"):
        load_problems("math501")
    missing = tmp_path / "nowhere" / "test.jsonl"
    with pytest.raises(UserError, match=f"{missing} does not exist: .*RAST_DATA_DIR"):
        load_problems(str(missing))
    write_jsonl(tmp_path / "train.jsonl", [{"problem": "a", "answer": "1"}])
    with pytest.raises(UserError, match=r"test.jsonl does not exist \(splits in .*: train\)"):
        load_problems(str(tmp_path))


def test_benchmark_without_local_copy_and_offline_hub_says_pass_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_problems("math500", data_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"no local copy at {tmp_path}/math500/test.jsonl" in message
    assert "HuggingFaceH4/MATH-500 is not in the Hugging Face cache" in message
    with pytest.raises(UserError, match="has no split 'validation' on the hub"):
        load_problems("math500", split="validation", data_dir=str(tmp_path))


# Rows shaped like each hub dataset's schema (from their dataset cards / loaders).
HUB_ROWS = {
    "math500": ({"problem": "Convert (0,3).", "solution": "... \\boxed{(3,\\frac{\\pi}{2})}",
                 "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus",
                 "level": 2, "unique_id": "test/precalculus/807.json"},
                "Convert (0,3).", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    "gsm8k": ({"question": "Janet's ducks?", "answer": "16-3-4=<<16-3-4=9>>9\n#### 1,018 "},
              "Janet's ducks?", "1,018"),
    "aime24": ({"id": 60, "problem": "Aya walks.", "solution": "... \\boxed{204}", "answer": "204",
                "url": "https://artofproblemsolving.com/...", "year": "2024"}, "Aya walks.", "204"),
    "amc23": ({"id": 0, "question": "Cities A and B?", "answer": 27.0, "url": "https://..."},
              "Cities A and B?", "27"),
    "minerva_math": ({"question": "Magellan telescopes?", "answer": "1.6"},
                     "Magellan telescopes?", "1.6"),
    "olympiadbench": ({"id": 1606, "question": "Xenia and Sergey?", "final_answer": ["$69$,$84$"],
                       "solution": ["..."], "is_multiple_answer": True, "unit": None},
                      "Xenia and Sergey?", "69$,$84"),
    "simplerl_math_level3to5": (
        {"data_source": "simplelr", "ability": "math",
         "prompt": [{"role": "user", "content": "<|im_start|>system..."}],
         "reward_model": {"style": "rule", "ground_truth": "118"},
         "extra_info": {"question": "Let $a$ and $b$ ...", "answer": "118"}},
        "Let $a$ and $b$ ...", "118"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_from_hub_row_maps_each_hub_schema(name):
    hub_row, problem, answer = HUB_ROWS[name]
    mapped = from_hub_row(BENCHMARKS[name], hub_row)
    assert (mapped["problem"], mapped["answer"]) == (problem, answer)
    assert all(mapped[key] == value for key, value in hub_row.items()
               if key != "answer" or BENCHMARKS[name].keep_raw_answer_as is None)


def test_raw_answer_is_kept_where_the_rule_rewrites_it():
    gsm8k_row, _, _ = HUB_ROWS["gsm8k"]
    assert from_hub_row(BENCHMARKS["gsm8k"], gsm8k_row)["solution"] == gsm8k_row["answer"]
    amc_row, _, _ = HUB_ROWS["amc23"]
    assert from_hub_row(BENCHMARKS["amc23"], amc_row)["answer_original"] == 27.0


def test_hub_path_maps_splits_and_drops_known_empty_answers(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(hub_id, config=None, split=None, data_files=None):
        calls.append((hub_id, config, split, data_files))
        if hub_id == "hkust-nlp/SimpleRL-Zoo-Data":
            good, _, _ = HUB_ROWS["simplerl_math_level3to5"]
            empty = {**good, "extra_info": {"question": "Which?", "answer": ""}}
            return [good, empty, {**good, "extra_info": {"question": "Q2", "answer": "7"}}]
        return [HUB_ROWS[name][0] for name in BENCHMARKS if BENCHMARKS[name].hub_id == hub_id]

    monkeypatch.setattr(train.data.datasets, "load_dataset", fake_load_dataset)
    aime = load_problems("aime24", data_dir=str(tmp_path))  # no local copy there -> hub
    assert calls[-1] == ("HuggingFaceH4/aime_2024", None, "train", None)
    assert (aime["id"], aime["answer"]) == (["60"], ["204"])
    assert aime.info.description == "HuggingFaceH4/aime_2024 (train split)"
    gsm8k = load_problems("gsm8k", split="train", data_dir=str(tmp_path))
    assert calls[-1] == ("openai/gsm8k", "main", "train", None)
    assert (gsm8k["id"], gsm8k["answer"]) == (["gsm8k-0"], ["1,018"])
    simplerl = load_problems("simplerl_math_level3to5", data_dir=str(tmp_path))
    assert calls[-1] == ("hkust-nlp/SimpleRL-Zoo-Data", None, "train",
                         "simplelr_qwen_level3to5/train.parquet")
    assert simplerl["answer"] == ["118", "7"]
    assert simplerl["id"] == ["simplerl_math_level3to5-0", "simplerl_math_level3to5-1"]
    olympiad = load_problems("olympiadbench", data_dir=str(tmp_path))
    assert olympiad["final_answer"] == [["$69$,$84$"]]


def test_cli_prints_every_local_count(data_dir, capsys):
    main([])
    lines = capsys.readouterr().out.splitlines()
    counts = {tuple(line.split()[:2]): int(line.split()[2]) for line in lines}
    assert counts == {(name, split): rows for name, split, rows in LOCAL_COUNTS}


def test_cli_one_dataset_and_one_line_error(data_dir, capsys):
    main(["amc23"])
    assert capsys.readouterr().out.split() == [
        "amc23", "test", "40", "rows", str(data_dir / "amc23" / "test.jsonl")]
    with pytest.raises(SystemExit) as exit_info:
        main(["math501"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'math501'")
