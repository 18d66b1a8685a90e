"""Trained weights move at the Qwen recipes' learning rates (train.grpo.policy_dtype).

Each test parses the real recipe file and overrides only the model (a small random Qwen2 saved
in bf16, as the hub ships Qwen2.5), sizes and steps; the recipe's dtype (bfloat16), bf16
autocast, learning rate and generation path stay. AdamW on bf16 weights at lr 5e-7 rounds
nearly every update away; the snapshot-train-compare check (TRL's habit) counts the entries a
few steps changed. On CPU, use_cpu + bf16 gives torch's CPU bf16 autocast: the GPU code path.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.conftest import build_random_qwen2
from train import grpo

RECIPES = Path(__file__).parents[2] / "recipes"


def digit_share_reward(completions, **kwargs):
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A random Qwen2 saved in bf16: its values are exact in bf16, so only training moves them."""
    path = build_random_qwen2(tmp_path_factory.mktemp("bf16") / "model", hidden=64, ffn=128)
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
    return path


class TrainedWeights(TrainerCallback):
    """Snapshot the trained parameters when training begins; compare when it ends."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.buffers = {n: b.dtype for n, b in model.named_buffers()}

    def moved_share(self, only: str = "") -> float:
        names = [n for n in self.before if only in n]
        changed = sum((self.before[n].float() != self.after[n].float()).sum().item() for n in names)
        return changed / sum(self.before[n].numel() for n in names)

    def dtypes(self) -> set:
        return {p.dtype for p in self.after.values()}


def recipe_run(recipe: str, model: str, output_dir: Path, *flags: str) -> TrainedWeights:
    """Two GRPO steps of the recipe: 4 problems x 8 samples of 8 tokens, on CPU."""
    parsed = grpo.parse_args([
        "--config", str(RECIPES / recipe), "--model_name_or_path", model,
        "--output_dir", str(output_dir), "--dataset_limit", "4", "--max_prompt_tokens", "400",
        "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--steps_per_generation", "1", "--max_completion_length", "8", "--max_steps", "2",
        "--vllm_max_model_length", "512",
        # a small paged cache: by default it takes half of the free host memory on CPU (~1 min)
        "--transformers_continuous_batching_config", '{"num_blocks": 64, "max_batch_tokens": 512}',
        "--use_cpu", "true", "--report_to", "none", "--log_completions", "false",
        "--torch_threads", "1", "--disable_tqdm", "true", *flags,
    ])
    weights = TrainedWeights()
    grpo.run(*parsed, reward_funcs=[digit_share_reward], callbacks=[weights])
    return weights


# The recipes generate with vLLM colocate (its sync: tests/train/test_vllm_cpu.py, the rehearsal);
# here the two transformers paths, whose generation touches the trained weights themselves.
CONTINUOUS_BATCHING = ["--use_vllm", "false", "--use_transformers_continuous_batching", "true"]
GENERATE = ["--use_vllm", "false", "--use_transformers_continuous_batching", "false"]


@pytest.mark.parametrize("generation", [CONTINUOUS_BATCHING, GENERATE],
                         ids=["continuous-batching", "generate"])
def test_full_recipe_steps_move_most_weights_at_lr_5e7(generation, bf16_checkpoint, tmp_path):
    recipe = "Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"
    _, training_args, model_args = grpo.parse_args(["--config", str(RECIPES / recipe),
                                                    "--use_cpu", "true"])
    assert (model_args.dtype, training_args.bf16, training_args.learning_rate) == ("bfloat16", True, 5e-7)
    weights = recipe_run(recipe, bf16_checkpoint, tmp_path / "out", *generation)
    print(f"full fine-tuning at lr 5e-7: {weights.moved_share():.1%} of weight entries moved in 2 steps")
    assert weights.dtypes() == {torch.float32}
    assert set(weights.buffers.values()) == {torch.float32}  # RoPE frequencies not rounded to bf16
    assert weights.moved_share() > 0.5
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # saved unrounded


def test_lora_recipe_adapters_stay_fp32_through_generation(bf16_checkpoint, tmp_path):
    """TRL's continuous-batching path would cast the adapters to bf16 in place before generating."""
    weights = recipe_run("Qwen2.5-1.5B/grpo/config_lora.yaml", bf16_checkpoint, tmp_path / "out",
                         "--lora_r", "4", "--lora_alpha", "8", *CONTINUOUS_BATCHING)
    # lora_B starts at zero, which any update moves; lora_A starts random: count it
    share = weights.moved_share("lora_A")
    print(f"LoRA at lr 5e-6: {share:.1%} of lora_A entries moved in 2 steps")
    assert weights.dtypes() == {torch.float32}
    assert share > 0.5
