"""The engine's own checks of what it is given, through its Python API (transfer.generate's table
in tests/transfer/test_generate.py covers the same through the command line)."""

import logging

import pytest
import torch
from transformers import Qwen2ForCausalLM

from tests.conftest import load_engine
from train.errors import UserError
from train.models import load_tokenizer
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine

LONG = "Q: " + "12*3=36 " * 40  # 323 characters, one token each: past the 256-position context


@pytest.fixture(scope="module")
def engine(tiny_models):
    torch.set_num_threads(1)
    return load_engine(tiny_models["large"], tiny_models["small_base"],
                       tiny_models["small_rl"], lam=1.0)


@pytest.mark.parametrize("field, value", [("temperature", float("nan")),
                                          ("temperature", float("inf")),
                                          ("top_p", float("nan"))])
def test_sampling_params_refuse_non_finite_values(field, value):
    with pytest.raises(UserError, match=f"{field} must be a finite number, got {value}"):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), float("-inf"), -0.5])
def test_non_finite_or_negative_lambda_is_refused_before_any_model_loads(lam, tiny_models,
                                                                         monkeypatch):
    monkeypatch.setattr(Qwen2ForCausalLM, "from_pretrained", None)  # loading would fail loudly
    with pytest.raises(UserError, match=f"lambda must be a finite number >= 0, got {lam}"):
        load_engine(tiny_models["large"], tiny_models["small_base"],
                    tiny_models["small_rl"], lam=lam)


def test_a_prompt_that_is_not_text_is_refused_by_key(engine):
    with pytest.raises(UserError, match="prompt 'b' is a list, not a string"):
        engine.generate(["Q: 1*2=", ["Q: 3*4="]], SamplingParams(max_new_tokens=4), keys=["a", "b"])


def test_a_prompt_past_the_context_is_refused_unless_truncation_is_asked_for(engine, caplog):
    params = SamplingParams(temperature=0, max_new_tokens=16)
    with pytest.raises(UserError, match="prompt 'long' has 323 tokens, more than the 240"):
        engine.generate(["Q: 1*2=", LONG], params, keys=["short", "long"])
    with caplog.at_level(logging.WARNING, logger="transfer.decode.engine"):
        truncated = engine.generate([LONG], SamplingParams(temperature=0, max_new_tokens=16,
                                                           truncate_prompts=True))
    assert "truncating 1 prompt(s) to their last 240 tokens" in caplog.text
    assert truncated[0].token_ids == engine.generate([LONG[-240:]], params)[0].token_ids


def test_a_model_with_fewer_embedding_rows_than_the_tokenizer_is_refused(tiny_models):
    narrow = Qwen2ForCausalLM.from_pretrained(tiny_models["small_base"])
    narrow.resize_token_embeddings(64)
    with pytest.raises(UserError, match="large has 64 embedding rows, fewer than the 98 tokens"):
        RastEngine(narrow, tokenizer=load_tokenizer(tiny_models["small_base"]))
