"""Every recipe under recipes/ parses through the parser of the entry point that runs it.

Recipes live at recipes/<model>/<method>/config_<variant>.yaml and the <method> folder picks the
parser. Nothing is loaded or downloaded: this only proves the keys and values are ones the
dataclasses accept and that TRL's own validation (batch divisibility, ...) passes.
"""

from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from train import grpo
from train.data import BENCHMARKS
from train.prompts import TEMPLATES
from transfer.analysis.analyze import parse_config as parse_analyze_config
from transfer.eval.evaluate import parse_config

RECIPES_DIR = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("**/*.yaml"))


def parse_grpo_recipe(path: Path):
    argv = ["--config", str(path)]
    if yaml.safe_load(path.read_text()).get("bf16") and not torch.cuda.is_available():
        # TrainingArguments refuses bf16 on a machine without a GPU unless use_cpu is set;
        # the GPU recipes are still checked field by field.
        argv += ["--use_cpu", "true"]
    return grpo.parse_args(argv)


def parse_rast_recipe(path: Path):
    return parse_config(["--config", str(path)])


PARSERS = {
    "grpo": parse_grpo_recipe,  # python -m train.grpo --config ...
    "rast": parse_rast_recipe,  # python -m transfer.eval.evaluate --config ...
    "analyze": lambda path: parse_analyze_config(["--config", str(path)]),  # python -m transfer.analysis.analyze
    # accelerate launch --config_file ...: accelerate's own loader rejects unknown keys
    "accelerate_configs": lambda path: load_config_from_file(str(path)),
}


def recipe_id(path: Path) -> str:
    return str(path.relative_to(path.parents[2]))


@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_recipe_parses(path):
    method = path.parent.name
    assert method in PARSERS, f"{recipe_id(path)}: no parser for recipes/*/{method}/ in PARSERS"
    PARSERS[method](path)


GRPO_RECIPES = [path for path in RECIPES if path.parent.name == "grpo"]


def test_there_are_grpo_recipes_for_the_tiny_family_and_qwen():
    names = {recipe_id(path) for path in GRPO_RECIPES}
    assert {"tiny/grpo/config_cpu.yaml", "Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml",
            "Qwen2.5-0.5B/grpo/config_simplerl_zoo.yaml", "Qwen2.5-1.5B/grpo/config_lora.yaml"} <= names


@pytest.mark.parametrize("path", GRPO_RECIPES, ids=recipe_id)
def test_grpo_recipe_names_known_data_and_templates(path):
    args, training_args, _ = parse_grpo_recipe(path)
    assert args.dataset == "tiny" or args.dataset in BENCHMARKS
    assert args.prompt_template in TEMPLATES
    assert (args.dataset == "tiny") == (args.prompt_template == "tiny")
    assert training_args.output_dir.startswith("outputs/")
    assert "wandb" in training_args.report_to and training_args.log_completions
    if args.dataset == "tiny":  # runs on CPU as written
        assert training_args.use_cpu and not training_args.bf16
        assert not training_args.gradient_checkpointing


@pytest.mark.parametrize("path", [p for p in GRPO_RECIPES if "Qwen" in str(p)], ids=recipe_id)
def test_simplerl_zoo_batch_mapping(path):
    """SimpleRL-Zoo: 1024 prompts x 8 rollouts per step, 4 updates of 256 prompts, on the
    processes of one node as the accelerate configs launch them."""
    _, training_args, model_args = parse_grpo_recipe(path)
    gpus = load_config_from_file(str(RECIPES_DIR / "accelerate_configs/zero2.yaml")).num_processes
    completions_per_update = (training_args.per_device_train_batch_size * gpus
                              * training_args.gradient_accumulation_steps)
    assert completions_per_update == 256 * training_args.num_generations == 2048
    assert training_args.steps_per_generation == 4 * training_args.gradient_accumulation_steps
    assert training_args.num_generations == 8 and training_args.temperature == 1.0
    assert (training_args.beta, training_args.epsilon, training_args.entropy_coef) == (1e-4, 0.2, 0.001)
    assert training_args.lr_scheduler_type == "constant"
    assert model_args.dtype == "bfloat16"
    # generation: vLLM colocate, with the room the memory plan (train/memory.py) gives it
    assert training_args.use_vllm and training_args.vllm_mode == "colocate"
    assert not training_args.use_transformers_continuous_batching
    assert (training_args.vllm_gpu_memory_utilization, training_args.vllm_max_model_length) == (0.3, 9216)
    if model_args.use_peft:
        assert training_args.output_dir.endswith("lora")


# A recipe value of the wrong type is one line naming the key, before anything is resolved; a
# string where a list is meant was split into characters (stop_strings: "box" stopped every
# answer at its first "b"), a scalar list was a traceback.
BAD_VALUES = [
    ('stop_strings: "box"', "stop_strings: 'box' is not a list of strings"),
    ("benchmarks: tiny", "benchmarks: 'tiny' is not a list of strings"),
    ('combinations: "1*outputs/x"', "combinations: '1*outputs/x' is not a list of strings"),
    ("lam: 1.0", "lam: 1.0 is not a list of numbers"),
    ("lam: [.nan]", "lam: [nan] is not a list of numbers"),
    ("stop_ids: 5", "stop_ids: 5 is not a list of integers"),
    ("stop_ids: [true]", "stop_ids: [True] is not a list of integers"),
    ("limit: 2.5", "limit: 2.5 is not an integer or null"),
    ("samples: '4'", "samples: '4' is not an integer"),
    ("target: [tiny-l", "is not valid YAML at line 3, column 1"),
    ("- a list", "must be a YAML mapping"),
]


@pytest.mark.parametrize("line, message", BAD_VALUES, ids=[line for line, _ in BAD_VALUES])
def test_a_recipe_value_of_the_wrong_type_is_one_line(tmp_path, capsys, line, message):
    from tests.bad_inputs import outcome
    from transfer.eval.evaluate import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(line + "\n" if line.startswith("-") else f"target: tiny-l\n{line}\n")
    code, error, changed = outcome(main, f"--config {recipe} --dry-run", capsys, tmp_path)
    assert code == 2 and error.startswith(f"error: transfer recipe {recipe}") and message in error
    assert not changed


def test_an_analysis_or_grpo_recipe_is_checked_the_same_way(tmp_path, capsys):
    from tests.bad_inputs import outcome
    from train.grpo import main as grpo_main
    from transfer.analysis.analyze import main as analyze_main

    (tmp_path / "analyze.yaml").write_text("small_rl: outputs/tiny-s-grpo\n")
    code, error, _ = outcome(analyze_main, f"--config {tmp_path / 'analyze.yaml'}", capsys,
                             tmp_path)
    assert code == 2 and "small_rl: 'outputs/tiny-s-grpo' is not a list of strings" in error
    (tmp_path / "grpo.yaml").write_text("model_name_or_path: tiny-s\ndataset_limit: ten\n")
    code, error, _ = outcome(grpo_main, f"--config {tmp_path / 'grpo.yaml'}", capsys, tmp_path)
    assert code == 2 and "dataset_limit: 'ten' is not an integer" in error
