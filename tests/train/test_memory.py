"""The GRPO memory plan (train/memory.py): arithmetic, launchers, dry run, refusal, recipes.

Nothing here loads a model or needs a GPU: the plan is arithmetic on the registry's Qwen2.5
architectures and the recipe's numbers.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from train import grpo
from train.launches import launch_table
from train.memory import launcher_from_config, launcher_from_env, plan_training
from train.models import MODELS

REPO = Path(__file__).resolve().parents[2]
QWEN_GRPO = sorted(REPO.glob("recipes/Qwen2.5-*/grpo/*.yaml"))
LAUNCHERS = ["plain", "ddp", "zero2", "zero3"]


def parse(recipe: Path, *flags: str):
    return grpo.parse_args(["--config", str(recipe), "--use_cpu", "true", *flags])


def plan_of(recipe: Path, launcher: str, card_gb: float = 80.0, *flags: str):
    args, training_args, model_args = parse(recipe, *flags)
    arch = MODELS[model_args.model_name_or_path].architecture
    return plan_training(arch, args, training_args, model_args, launcher_from_config(launcher), card_gb)


def test_architecture_arithmetic_matches_the_published_qwen_numbers():
    arch = MODELS["1.5B"].architecture
    assert arch.params == 1_543_714_304  # Qwen2.5-1.5B's model card: 1.54B
    assert MODELS["32B"].architecture.params == 32_763_876_352  # 32.8B
    assert arch.kv_bytes_per_token() == 28 * 2 * 128 * 2 * 2 == 28 * 1024
    assert arch.kv_bytes_per_token(4) == 2 * arch.kv_bytes_per_token()


def test_launchers_from_the_accelerate_env_and_configs():
    assert (launcher_from_env({}).name, launcher_from_env({}).processes) == ("plain", 1)
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "32"}
    assert (launcher_from_env(env).zero_stage, launcher_from_env(env).processes) == (3, 32)
    assert launcher_from_env({"WORLD_SIZE": "8"}).name == "ddp"
    assert (launcher_from_config("zero2").zero_stage, launcher_from_config("zero2").processes) == (2, 8)
    assert launcher_from_config("ddp").zero_stage == 0
    assert launcher_from_config("zero3", processes=32).processes == 32


def test_states_per_launcher_follow_the_byte_counts():
    recipe = REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"
    params = MODELS["1.5B"].architecture.params
    plain, zero2, zero3 = (plan_of(recipe, name).resident for name in ("plain", "zero2", "zero3"))
    assert plain["weights"][0] == pytest.approx(4 * params / 1e9)  # fp32: the master weights
    assert plain["optimizer states"][0] == pytest.approx(8 * params / 1e9)
    assert zero2["weights"][0] == pytest.approx(2 * params / 1e9)  # bf16, whole
    assert zero2["master weights"][0] == pytest.approx(4 * params / 8 / 1e9)
    assert zero3["weights"][0] == pytest.approx(2 * params / 8 / 1e9)
    assert plain["reference model"][0] == pytest.approx(2 * params / 1e9)  # beta 1e-4: bf16 copy


def test_one_generate_call_at_the_simplerl_settings_does_not_fit():
    """The issue's numbers: 1024 rows x 9216 tokens in one generate() call, bf16 KV (ZeRO-2)."""
    recipe = REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"
    plan = plan_of(recipe, "zero2", 80.0, "--use_vllm", "false",
                   "--use_transformers_continuous_batching", "false")
    kv_gb = plan.generation["generation KV"][0]
    assert kv_gb == pytest.approx(1024 * 9216 * 28 * 1024 / 1e9)  # 270.6 GB = 252 GiB
    assert not plan.fits and "use_transformers_continuous_batching: true" in plan.refusal


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("recipe", QWEN_GRPO, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_qwen_recipe_fits_80gb_gpus_under_every_launcher(recipe, launcher):
    plan = plan_of(recipe, launcher)
    assert plan.fits, plan.refusal
    assert plan.concurrent_rows and plan.concurrent_rows >= 1


def test_dry_run_prints_the_plan_and_loads_nothing(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run loaded something")

    monkeypatch.setattr(grpo, "load_model", refuse)
    monkeypatch.setattr(grpo, "load_tokenizer", refuse)
    grpo.main(["--config", str(REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"),
               "--dry-run", "--launcher", "zero2", "--gpu_memory_gb", "80"])
    out = capsys.readouterr().out
    for item in ("weights", "master weights", "optimizer states", "gradients", "reference model",
                 "activations", "logits", "vLLM \\(colocated\\)"):
        assert re.search(rf"^  {item} +\d+\.\d GB", out, re.MULTILINE), item
    assert "launcher zero2, 8 process(es)" in out and out.rstrip().endswith("fits")


def test_dry_run_of_the_1_5b_recipe_prints_vllms_share_and_fits_one_80gb_gpu(capsys):
    """The issue's command: `make train-small RECIPE=<1.5B simplerl_zoo> ARGS=--dry-run`."""
    grpo.main(["--config", str(REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"),
               "--dry-run", "--gpu_memory_gb", "80"])
    out = capsys.readouterr().out
    assert re.search(r"^  vLLM \(colocated\) +24\.0 GB", out, re.MULTILINE)
    assert "0.3 x 80 GB = 24.0 GB for vLLM (bf16 weights 3.1 GB + paged KV)" in out
    assert out.rstrip().endswith("fits")


def test_a_vllm_share_below_its_weights_is_refused():
    recipe = REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"
    plan = plan_of(recipe, "zero2", 80.0, "--vllm_gpu_memory_utilization", "0.03")  # 2.4 < 3.1 GB
    assert plan.concurrent_rows == 0 and not plan.fits
    assert "raise vllm_gpu_memory_utilization" in plan.refusal


def test_a_run_that_does_not_fit_refuses_in_one_line_naming_the_knob():
    """Before anything loads (the hub model is not here): exit 2, one `error:` line."""
    result = subprocess.run(
        [sys.executable, "-m", "train.grpo", "--config",
         "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml", "--use_cpu", "true",
         "--use_vllm", "false", "--use_transformers_continuous_batching", "false",
         "--gpu_memory_gb", "80"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # plain python: the fp32 policy generates with an fp32 KV cache, 1024 x 9216 x 56 KiB
    assert len(errors) == 1 and "generation needs 542 GB per GPU" in errors[0]
    assert "use_transformers_continuous_batching: true" in errors[0]


def test_make_dry_run_with_a_launcher_runs_one_plain_process():
    dry_make = ["make", "--no-print-directory", "-n", "-o", "setup", "train-small", "RECIPE=r.yaml"]
    result = subprocess.run([*dry_make, "ACCELERATE=zero3", "NODES=4", "ARGS=--dry-run"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert re.sub(r"\s+", " ", result.stdout.strip().splitlines()[-1]) == (
        ".venv/bin/python -m train.grpo --config r.yaml --launcher zero3 --processes 32 --dry-run")


def test_the_recipes_readme_shows_the_plan_of_every_launch():
    readme = (REPO / "recipes" / "README.md").read_text()
    assert launch_table() in readme  # regenerate with `python -m train.launches`


@pytest.mark.parametrize("flags, knob", [
    (("--per_device_train_batch_size", "64", "--gradient_accumulation_steps", "4",
      "--steps_per_generation", "16"), "lower per_device_train_batch_size"),
    (("--use_vllm", "true", "--vllm_gpu_memory_utilization", "0.8"), "lower vllm_gpu_memory_utilization"),
])
def test_refusals_name_the_knob_of_the_largest_item(flags, knob):
    recipe = REPO / "recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml"
    plan = plan_of(recipe, "plain", 80.0, *flags)
    assert not plan.fits and knob in plan.refusal and "\n" not in plan.refusal
