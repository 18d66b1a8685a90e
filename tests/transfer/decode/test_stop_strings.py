"""Stop strings: the pure rule (transfer.decode.stops) and the engine that applies it.

The tiny tokenizer has one character per token, so no token could straddle a stop string; the
engine tests decode through `WideText`, the same tokenizer with every id shown as two characters,
so a stop string can start or end in the middle of a token."""

import json
import math

import pytest
import torch

from tests.conftest import load_engine
from train.errors import UserError
from transfer.decode.decoder import SamplingParams
from transfer.decode.stops import completion_text, find_stop, new_stop_string
from transfer.generate import main as generate_main

PROMPTS = ["Q: 47*8=\nA: ", "Q: 3*4=\nA: ", "Q: 123*45=\nA: ", "Q: 9*9=\nA: Let's"]


def piece(token_id: int) -> str:
    return chr(65 + token_id % 26) + chr(97 + (7 * token_id) % 26)


class WideText:
    """The tiny tokenizer for prompts, two characters of text per generated id."""

    def __init__(self, tokenizer):
        self.inner, self.pad_token_id = tokenizer, tokenizer.pad_token_id

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def __len__(self):
        return len(self.inner)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(piece, ids))


def chars(ids):
    return "".join(map(chr, ids))


def to_ids(text):
    return [ord(c) for c in text]


def earliest_stop_string(text: str, stop_strings) -> tuple[int, str] | None:
    """The test's oracle for text in which no two strings end in one token: (index, string) of
    the stop string occurring earliest."""
    hits = [(text.find(stop), stop) for stop in stop_strings if stop in text]
    return min(hits) if hits else None


def test_one_token_completing_several_stop_strings_stops_at_the_first_listed_as_vllm():
    """vLLM checks the strings in list order, each from where the new text could complete it;
    the token's text was checked before only up to old_length."""
    assert new_stop_string("x user _end", 1, ["_end", "user"]) == (7, "_end")
    assert new_stop_string("x user _end", 1, ["user", "_end"]) == (2, "user")
    assert new_stop_string("x_start_end", 1, ["_end", "_start"]) == (7, "_end")
    assert new_stop_string("x user _end", 7, ["user", "_end"]) == (7, "_end")  # user: earlier
    assert new_stop_string("no stop here", 0, ["user"]) is None
    tokens = ["x", "_start_end"]  # one token completes both
    decode = lambda ids: "".join(tokens[i] for i in ids)
    assert find_stop([0, 1], 0, [], ["_end", "_start"], decode) == (2, "_end")
    assert completion_text([0, 1], "_end", ["_end", "_start"], decode) == "x_start"
    assert find_stop([0, 1], 0, [], ["_start", "_end"], decode) == (2, "_start")
    assert completion_text([0, 1], "_start", ["_start", "_end"], decode) == "x"


def test_find_stop_reports_the_first_token_that_completes_a_string_or_is_a_stop_id():
    tokens = ["The ", "answer", " is 4", ".", " us", "er:", " next"]  # "user" straddles 4..5
    decode = lambda ids: "".join(tokens[i] for i in ids)
    ids = list(range(len(tokens)))
    assert find_stop(ids, 0, [], ["user"], decode) == (6, "user")
    assert completion_text(ids[:6], "user", ["user"], decode) == "The answer is 4. "
    assert find_stop(ids, 0, [3], ["user"], decode) == (4, 3)  # the id comes first
    assert completion_text(ids[:4], 3, ["user"], decode) == "The answer is 4"
    assert find_stop(ids[:5], 0, [], ["user"], decode) is None  # " us" alone is no stop
    assert find_stop(ids, 0, [], [], decode) is None
    # a token straddling the string's END: text cut at the string, the token kept in the ids
    assert find_stop(ids, 0, [], ["s 4."], decode) == (4, "s 4.")
    assert completion_text(ids[:4], "s 4.", ["s 4."], decode) == "The answer i"


def test_a_stop_string_longer_than_many_tokens_is_still_seen():
    ids = to_ids("a" * 50 + "<|im_end|>" + "b" * 5)
    assert find_stop(ids, 0, [], ["<|im_end|>"], chars) == (60, "<|im_end|>")
    assert completion_text(ids[:60], "<|im_end|>", ["<|im_end|>"], chars) == "a" * 50


def test_sampling_params_refuse_an_empty_stop_string():
    with pytest.raises(UserError, match="stop_strings"):
        SamplingParams(stop_strings=("user", ""))


@pytest.fixture(scope="module")
def wide_engine(tiny_models):
    torch.set_num_threads(1)
    engine = load_engine(tiny_models["large"], tiny_models["small_base"],
                         tiny_models["small_rl"], lam=1.0)
    engine.tokenizer = WideText(engine.tokenizer)
    return engine


def test_the_engine_cuts_a_stop_string_exactly_where_it_starts_even_mid_token(wide_engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    free = wide_engine.generate(PROMPTS, params, n=2, stop_ids=[3])
    longest = max(free, key=lambda c: len(c.text))
    assert len(longest.text) >= 14
    # one from a token's 2nd character to a token's end, one from a token's start to mid-token
    for stops in ((longest.text[9:12],), (longest.text[6:9],)):
        params = SamplingParams(temperature=1.0, max_new_tokens=24, stop_strings=stops)
        stopped = wide_engine.generate(PROMPTS, params, n=2, stop_ids=[3])
        hits = 0
        for before, after in zip(free, stopped, strict=True):
            hit = earliest_stop_string(before.text, stops)
            if hit is None:  # never wrote one: untouched
                assert (after.token_ids, after.text, after.stop) == (
                    before.token_ids, before.text, before.stop)
                continue
            hits += 1
            index, stop = hit
            kept = math.ceil((index + len(stop)) / 2)  # up to the token holding the string's end
            assert after.token_ids == before.token_ids[:kept]
            assert after.text == before.text[:index] and after.stop == stop and after.finished
            assert "".join(map(piece, after.token_ids)).startswith(after.text + stop)
        assert hits >= 1


def test_no_stop_strings_decodes_exactly_as_before(wide_engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    plain = wide_engine.generate(PROMPTS, params, n=2, stop_ids=[3])
    never = SamplingParams(temperature=1.0, max_new_tokens=12, stop_strings=("\x00never",))
    unmatched = wide_engine.generate(PROMPTS, never, n=2, stop_ids=[3])
    assert [(c.token_ids, c.text, c.stop) for c in plain] == [
        (c.token_ids, c.text, c.stop) for c in unmatched]
    for c in plain:  # the stop id: last of token_ids, not in the text
        assert (c.stop == 3) == c.finished == (c.token_ids[-1] == 3)


def test_generate_cli_takes_stop_strings(tiny_models, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["--target", tiny_models["large"], "--input", str(prompts), "--n", "2",
            "--max_new_tokens", "16", "--stop_ids", "0"]
    generate_main(args + ["--output", str(tmp_path / "free.jsonl")])
    free = [json.loads(line) for line in (tmp_path / "free.jsonl").read_text().splitlines()]
    stop = max(free, key=lambda r: len(r["text"]))["text"][3:5]
    generate_main(args + ["--output", str(tmp_path / "cut.jsonl"), "--stop_strings", stop])
    rows = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert any(r["stop"] == stop for r in rows)
    for before, row in zip(free, rows, strict=True):
        assert stop not in row["text"] and before["text"].startswith(row["text"])
        assert row["stop"] in (stop, 0, None) and row["finished"] == (row["stop"] is not None)


def test_speculative_decoding_cuts_at_stop_strings_by_the_same_rule(tiny_models):
    """The speculative loop emits several tokens a round; its samples with stop strings are its
    samples without them, cut before the first stop string (mid-token included)."""
    engine = load_engine(tiny_models["large"], tiny_models["small_base"],
                         tiny_models["small_rl"], lam=1.0, speculative=True)
    engine.tokenizer = WideText(engine.tokenizer)
    free = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=24), n=2,
                           stop_ids=[3])
    stops = (max(free, key=lambda c: len(c.text)).text[9:12],)
    cut = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=24,
                                                  stop_strings=stops), n=2, stop_ids=[3])
    hits = 0
    for before, after in zip(free, cut, strict=True):
        hit = earliest_stop_string(before.text, stops)
        if hit is None:
            assert (after.token_ids, after.text, after.stop) == (before.token_ids, before.text,
                                                                 before.stop)
            continue
        hits += 1
        kept = math.ceil((hit[0] + len(hit[1])) / 2)
        assert after.token_ids == before.token_ids[:kept] and after.text == before.text[:hit[0]]
        assert after.stop == hit[1] and after.finished
    assert hits >= 1


def test_a_speculative_row_stops_at_its_stop_string_and_leaves_the_batch(tiny_models, wide_engine):
    """Greedy: the speculative loop's completions with a stop string are the plain loop's, and a
    row that writes the string stops decoding there (fewer rows computed than without it)."""
    engine = load_engine(tiny_models["large"], tiny_models["small_base"],
                         tiny_models["small_rl"], lam=1.0, speculative=True,
                         draft_tokens=3)
    engine.tokenizer = WideText(engine.tokenizer)

    def decode_rows(params):
        before = sum(c["decode_rows"] for c in engine.forward_counts().values())
        completions = engine.generate(PROMPTS, params, stop_ids=[3])
        return completions, sum(c["decode_rows"] for c in engine.forward_counts().values()) - before

    free, free_rows = decode_rows(SamplingParams(temperature=0, max_new_tokens=48))
    text = max(free, key=lambda c: len(c.token_ids)).text
    params = SamplingParams(temperature=0, max_new_tokens=48, stop_strings=(text[5:8],))
    cut, cut_rows = decode_rows(params)
    plain = wide_engine.generate(PROMPTS, params, stop_ids=[3])
    assert [(c.token_ids, c.text, c.stop) for c in cut] == [
        (c.token_ids, c.text, c.stop) for c in plain]
    assert any(c.stop == text[5:8] for c in cut)
    assert cut_rows < free_rows


def test_special_tokens_add_no_text_as_in_vllm(qwen_tokenizer):
    """The paper's vLLM decodes with skip_special_tokens=True: "<|im_start|>" does not complete
    the runner's "_start" (the completion stopped inside it, leaving "...\\boxed{5}<|im"), and a
    completion's text holds no special token."""
    from functools import partial

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    decode = partial(tokenizer.decode, skip_special_tokens=True)
    ids = tokenizer("The answer is \\boxed{5}.<|im_end|>\n<|im_start|>user\nNext")["input_ids"]
    runner = ["</s>", "<|im_end|>", "<|endoftext|>", "assistant", "user", "_end", "_start"]
    end, stop = find_stop(ids, 0, [], runner, decode)
    assert stop == "user" and tokenizer.decode(ids[end - 1]) == "user"
    assert completion_text(ids[:end], stop, runner, decode) == "The answer is \\boxed{5}.\n"
    # what keeping special tokens in the text did: a stop inside <|im_end|>
    assert find_stop(ids, 0, [], runner, tokenizer.decode)[1] == "<|im_end|>"


def test_the_engine_matches_stop_strings_in_text_without_special_tokens(tiny_models):
    engine = load_engine(tiny_models["large"], tiny_models["small_base"], tiny_models["small_rl"])
    seen, decode = [], engine.tokenizer.decode
    engine.tokenizer.decode = lambda ids, **options: seen.append(options) or decode(ids, **options)
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_strings=("zz",)), n=2)
    assert seen and all(options == {"skip_special_tokens": True} for options in seen)
