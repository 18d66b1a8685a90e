"""Property-based tests (hypothesis) of the readers of user files and of answer extraction: any
input ends in success or in one UserError line (exit 2 at an entry point), never a traceback or
a hang. Examples are generated; each property runs a bounded number of them."""

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from train.data import load_problems
from train.errors import UserError
from train.grader import extract_answer
from train.recipe import check_recipe_values
from transfer.eval.evaluate import TransferConfig
from transfer.generate import read_prompts

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
ROWS = st.lists(st.dictionaries(st.sampled_from(["id", "prompt", "problem", "answer", "x"]),
                                JSON_VALUES, max_size=4) | JSON_VALUES, max_size=5)
LINES = st.lists(st.one_of(ROWS.map(lambda rows: "\n".join(map(json.dumps, rows))),
                           st.text(max_size=40)), max_size=4).map("\n".join)
FILES = st.one_of(LINES.map(lambda text: text.encode("utf-8")), st.binary(max_size=200),
                  LINES.map(lambda text: b"\xef\xbb\xbf" + text.encode("utf-8")))


def _only_user_errors(call) -> None:
    try:
        call()
    except UserError as err:
        assert "\n" not in str(err)  # one line


@SETTINGS
@given(content=FILES)
def test_any_prompt_file_is_read_or_refused_in_one_line(tmp_path, content):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    _only_user_errors(lambda: read_prompts(str(path)))


@SETTINGS
@given(content=FILES, suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_any_benchmark_file_loads_or_is_refused_in_one_line(tmp_path, content, suffix):
    path = tmp_path / f"bench{suffix}"
    path.write_bytes(content)
    _only_user_errors(lambda: load_problems(str(path)))


TRANSFER_FIELDS = ["lam", "stop_strings", "benchmarks", "limit", "samples", "stop_ids",
                   "combinations", "temperature", "seed", "target"]


@SETTINGS
@given(recipe=st.one_of(
    st.dictionaries(st.sampled_from(TRANSFER_FIELDS), JSON_VALUES, max_size=4).map(json.dumps),
    st.text(alphabet=string.printable, max_size=80)))
def test_any_recipe_text_is_checked_or_refused_in_one_line(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    _only_user_errors(lambda: check_recipe_values((TransferConfig,), str(path), "transfer"))


@settings(max_examples=200, deadline=2000)
@given(text=st.text(alphabet=string.printable + "\\{}$", max_size=300))
def test_answer_extraction_never_raises_or_hangs(text):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)


@pytest.mark.parametrize("text", ["\\boxed{" * 2000, "\\boxed{}" * 500 + "\\boxed{1}"])
def test_answer_extraction_of_pathological_boxes_is_bounded(text):
    extract_answer(text)  # returns (deadline-free: a pathological input must not hang)


def test_recipe_values_fit_the_dataclass_after_the_check(tmp_path):
    path = Path(tmp_path / "recipe.yaml")
    path.write_text("lam: [0.5, 1]\nstop_ids: [151643]\nlimit: null\n")
    check_recipe_values((TransferConfig,), str(path), "transfer")


def test_an_integer_beyond_64_bits_in_a_benchmark_is_one_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "a", "answer": "1", "x": 2**70}) + "\n")
    with pytest.raises(UserError, match="a column holds values a dataset cannot store"):
        load_problems(str(path))
