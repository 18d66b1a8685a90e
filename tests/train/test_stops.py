"""Every GRPO generation path stops at <|endoftext|> (151643) and <|im_end|> (151645).

The model is a Qwen2.5-1.5B stand-in (tests/rehearsal/standins.py): 151936 embedding rows, the
real Qwen2.5 tokenizer, bf16 weights, and ~8% of every next-token distribution on the two stop
ids, so completions do reach them. The recipe is the real SimpleRL-Zoo file (qwen-boxed prompts,
MATH problems); only the model, sizes and steps are overridden, plus, for speed on CPU, bf16 and
beta (no reference model to score: the run ends once the first completions are generated). transformers generate() and
continuous batching run here; vLLM is not installed, so its paths are checked by configuration:
the ids must be in the generation_kwargs TRL 1.16 turns into vLLM's SamplingParams (colocate)
and into the server's /v1/completions request (server).
"""

import inspect
from pathlib import Path

import pytest
from trl import GRPOTrainer
from trl.generation import vllm_client, vllm_generation

from tests.rehearsal.standins import build_model, write_checkpoint
from train import grpo
from train.qwen_tokenizer import ENDOFTEXT_ID, IM_END_ID

RECIPE = Path(__file__).parents[2] / "recipes" / "Qwen2.5-1.5B" / "grpo" / "config_simplerl_zoo.yaml"
STOPS = [ENDOFTEXT_ID, IM_END_ID]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen") / "Qwen2.5-1.5B"
    write_checkpoint(build_model("1.5B", seed=0), directory, "1.5B", rl=False)
    return str(directory)


class Generated(Exception):
    pass


class CompletionRecorder:
    """A reward function that keeps every completion's token ids, then ends the run: the stops
    are all this checks, and on CPU scoring 151936-entry logits would take minutes."""

    __name__ = "recorder"

    def __init__(self):
        self.completions = []

    def __call__(self, completions, completion_ids, **kwargs):
        self.completions.extend(list(ids) for ids in completion_ids)
        raise Generated


def recipe_run(model: str, output_dir: Path, *flags: str) -> list[list[int]]:
    parsed = grpo.parse_args([
        "--config", str(RECIPE), "--model_name_or_path", model, "--output_dir", str(output_dir),
        "--dataset_limit", "2", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "2", "--steps_per_generation", "2", "--beta", "0",
        "--max_completion_length", str(MAX_TOKENS), "--max_steps", "1", "--vllm_max_model_length", "2048",
        "--transformers_continuous_batching_config", '{"num_blocks": 64, "max_batch_tokens": 1024}',
        "--use_cpu", "true", "--bf16", "false",  # CPU bf16 matmuls are slow; stops don't care
        "--report_to", "none", "--log_completions", "false",
        "--torch_threads", "1", "--disable_tqdm", "true",
        "--use_vllm", "false",  # the transformers paths here; vLLM's stop ids: the tests below
        *flags,
    ])
    recorder = CompletionRecorder()
    with pytest.raises(Generated):
        grpo.run(*parsed, reward_funcs=[recorder])
    return recorder.completions


def continued_past_a_stop(completion: list[int]) -> bool:
    return any(token in STOPS for token in completion[:-1])


@pytest.mark.parametrize("generation", [["--use_transformers_continuous_batching", "false"],
                                        ["--use_transformers_continuous_batching", "true"]],
                         ids=["generate", "continuous-batching"])
def test_completions_never_continue_past_a_stop(generation, standin, tmp_path):
    completions = recipe_run(standin, tmp_path / "out", *generation)
    assert len(completions) == 16
    assert not [c for c in completions if continued_past_a_stop(c)]
    # the check is not vacuous: completions do end early, at both stop ids
    assert {c[-1] for c in completions if len(c) < MAX_TOKENS} == set(STOPS)


def test_the_check_sees_a_completion_run_past_im_end(standin, tmp_path, monkeypatch):
    """Control: with <|endoftext|> as the only stop (the base model's eos), generation runs past
    <|im_end|>, which the check above would catch."""
    monkeypatch.setattr(grpo, "stop_token_ids", lambda tokenizer, config=None: [ENDOFTEXT_ID])
    completions = recipe_run(standin, tmp_path / "out", "--use_transformers_continuous_batching", "false")
    assert any(IM_END_ID in c[:-1] for c in completions)


class Built(Exception):
    pass


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_generation_kwargs_carry_the_stop_ids(mode, standin, tmp_path, monkeypatch):
    captured = {}

    def capture(self, *args, **kwargs):  # stop before TRL starts vLLM
        captured.update(kwargs)
        raise Built

    monkeypatch.setattr(GRPOTrainer, "__init__", capture)
    # what vLLM on CPU needs (train.vllm_cpu) is not tested here
    monkeypatch.setattr(grpo, "prepare_vllm", lambda training_args: False)
    with pytest.raises(Built):
        grpo.run(*grpo.parse_args([
            "--config", str(RECIPE), "--model_name_or_path", standin, "--output_dir", str(tmp_path),
            "--use_vllm", "true", "--vllm_mode", mode, "--use_transformers_continuous_batching",
            "false", "--use_cpu", "true", "--report_to", "none", "--dataset_limit", "2"]))
    assert captured["args"].generation_kwargs["stop_token_ids"] == STOPS


def test_trl_passes_generation_kwargs_to_every_vllm_request():
    """How the ids travel in TRL 1.16 (a TRL upgrade that changes this fails here)."""
    assert "generation_kwargs=args.generation_kwargs" in inspect.getsource(GRPOTrainer.__init__)
    generate = inspect.getsource(vllm_generation.VLLMGeneration.generate)
    assert "generation_kwargs.update(self.generation_kwargs)" in generate  # colocate: SamplingParams
    assert '"generation_kwargs": self.generation_kwargs' in generate  # server: to the client
    client = inspect.getsource(vllm_client.VLLMClient.generate)
    assert "sampling_params.update(generation_kwargs or {})" in client  # into the request body
