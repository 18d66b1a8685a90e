"""GRPO training (train/grpo.py) end to end on tiny random Qwen2 models, a few steps each.

A random model almost never answers right, so these runs reward the share of digits in a
completion instead: it varies inside every group, which is what gives GRPO a signal.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import axes_shown_as_panels, wandb_inspect
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.bad_inputs import outcome
from train import grpo
from train.errors import UserError
from train.models import load_tokenizer
from train.outputs import OWNER_FILE, claim_output_dir, output_lock
from train.pairing import resolve_pair
from train.tracking import ARTIFACT_FILE


def digit_share_reward(completions, **kwargs):
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def tiny_flags(model, output_dir, *flags) -> list[str]:
    """The tiny task: 4 prompts x 4 samples of 8 tokens per step, lr high enough to see."""
    return [
        "--model_name_or_path", str(model), "--output_dir", str(output_dir),
        "--dataset", "tiny", "--dataset_limit", "16", "--prompt_template", "tiny",
        "--per_device_train_batch_size", "16", "--num_generations", "4",
        "--max_completion_length", "8", "--learning_rate", "1e-2", "--max_steps", "2",
        "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
        "--save_steps", "1", "--logging_steps", "1", "--report_to", "none",
        "--torch_threads", "1", "--disable_tqdm", "true", *flags,
    ]


def grpo_run(model, output_dir, *flags, callbacks=None):
    """run() on the tiny task (tiny_flags)."""
    parsed = grpo.parse_args(tiny_flags(model, output_dir, *flags))
    return grpo.run(*parsed, reward_funcs=[digit_share_reward], callbacks=callbacks)


@pytest.fixture(scope="module")
def full_run(tiny_models, tmp_path_factory):
    """2 steps with W&B (offline) and the before/after evaluation on 4 held-out problems."""
    output_dir = tmp_path_factory.mktemp("grpo") / "full"
    summary = grpo_run(tiny_models["small_base"], output_dir, "--report_to", "wandb",
                       "--log_completions", "true", "--eval_problems", "4", "--eval_samples", "2")
    return output_dir, summary


def test_every_trainable_parameter_changes(full_run, tiny_models):
    output_dir, summary = full_run
    assert summary["global_step"] == 2 and summary["trained_steps"] == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_models["small_base"])
    trained = dict(AutoModelForCausalLM.from_pretrained(output_dir).named_parameters())
    for name, param in base.named_parameters():
        assert not torch.equal(param, trained[name]), f"{name} did not change"


def test_output_pairs_with_its_base_and_keeps_the_tokenizer(full_run, tiny_models):
    output_dir, _ = full_run
    pair = json.loads((output_dir / "rast_pair.json").read_text())
    assert pair["small_base"] == str(Path(tiny_models["small_base"]).resolve())
    assert pair["global_step"] == 2 and not resolve_pair(str(output_dir)).lora
    assert (output_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert load_tokenizer(str(output_dir)).eos_token_id == 0  # round trip asserted inside
    assert json.loads((output_dir / OWNER_FILE).read_text()) == {"command": "training"}


def test_before_after_evaluation_is_saved(full_run):
    output_dir, summary = full_run
    saved = json.loads((output_dir / "eval_before_after.json").read_text())
    assert saved == summary["eval"]
    for when in ("before", "after"):
        assert saved[when]["n"] == 4 * 2
        assert 0.0 <= saved[when]["accuracy"] <= 1.0 and 0.0 <= saved[when]["careful_share"] <= 1.0
    assert saved["gain"] == pytest.approx(saved["after"]["accuracy"] - saved["before"]["accuracy"])


def test_wandb_offline_run_has_reward_and_length_history(full_run):
    output_dir, _ = full_run
    (run_file,) = (output_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_inspect(run_file, "--json").splitlines()
    history = [json.loads(line)["history"]["item"] for line in records if '"type":"history"' in line]
    # wandb's _step counts log calls, not trainer steps: key on train/global_step
    rewards = {row["train/global_step"]: row["train/reward"] for row in history if "train/reward" in row}
    lengths = {row["train/global_step"]: row["train/completions/mean_length"]
               for row in history if "train/completions/mean_length" in row}
    assert sorted(rewards) == sorted(lengths) == [1, 2]
    assert all(0 < length <= 8 for length in lengths.values())
    assert any(row.get("completions._type") == "table-file" for row in history)


def test_resume_continues_from_the_saved_step_and_a_finished_run_is_not_retrained(
        full_run, tiny_models, tmp_path):
    source, _ = full_run
    output_dir = tmp_path / "resumed"
    # without its owner file: a run from before train.grpo claimed its output_dir, known as a
    # training run by its checkpoints and rast_pair.json
    shutil.copytree(source, output_dir, ignore=shutil.ignore_patterns("wandb", OWNER_FILE))
    counter = StepCounter()
    summary = grpo_run(tiny_models["small_base"], output_dir, "--max_steps", "3", callbacks=[counter])
    assert counter.steps == 1  # steps 1-2 came from checkpoint-2
    assert summary["global_step"] == 3 and summary["trained_steps"] == 1
    assert json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((output_dir / OWNER_FILE).read_text()) == {"command": "training"}

    again = grpo_run(tiny_models["small_base"], output_dir, "--max_steps", "3", callbacks=[counter])
    assert again["trained_steps"] == 0 and counter.steps == 1


def test_lora_run_saves_an_adapter_that_learned(tiny_models, tmp_path):
    output_dir = tmp_path / "lora"
    grpo_run(tiny_models["small_base"], output_dir, "--use_peft", "true", "--lora_r", "4",
             "--lora_alpha", "8", "--lora_dropout", "0", "--max_steps", "1")
    assert (output_dir / "adapter_config.json").is_file()
    assert not (output_dir / "model.safetensors").exists()
    assert resolve_pair(str(output_dir)).lora  # adapter_config.json: the one sign of LoRA
    lora_b = {k: v for k, v in load_file(output_dir / "adapter_model.safetensors").items()
              if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # lora_B starts at zero


@pytest.mark.slow
def test_tiny_recipe_gains_a_quarter_of_held_out_accuracy(tmp_path):
    """make train-small's recipe, end to end (~1-2 min once tiny-s is built; building it ~3 min)."""
    subprocess.run([sys.executable, "-m", "train.tiny.family", "--members", "tiny-s"], check=True)
    recipe = Path(__file__).parents[2] / "recipes" / "tiny" / "grpo" / "config_cpu.yaml"
    parsed = grpo.parse_args(["--config", str(recipe), "--output_dir", str(tmp_path / "out"),
                              "--report_to", "none"])
    evaluation = grpo.run(*parsed)["eval"]
    assert evaluation["before"]["n"] == 300 * 4
    assert evaluation["after"]["accuracy"] - evaluation["before"]["accuracy"] >= 0.25
    assert evaluation["after"]["careful_share"] > 0.8


def test_wandb_run_hides_its_x_axis_train_global_step(full_run):
    """transformers charts every metric against train/global_step: that axis is hidden as a
    panel of its own before the first history row, so every panel is a result."""
    output_dir, _ = full_run
    (run_dir,) = (output_dir / "wandb").glob("offline-run-*")
    assert axes_shown_as_panels(run_dir) == []


def test_the_final_checkpoint_is_a_wandb_model_artifact_that_consumers_find(full_run):
    output_dir, summary = full_run
    (run_file,) = (output_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = [json.loads(line) for line in wandb_inspect(run_file, "--json").splitlines()]
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"
                   and r["artifact"]["type"] == "model"]
    run_id = run_file.stem.removeprefix("run-")
    assert artifact["name"] == "full" and f"run-{run_id}" in artifact["aliases"]
    entries = {e["path"]: e for e in artifact["manifest"]["contents"]}
    weights = "weights/model.safetensors"
    assert set(entries) == {"rast_pair.json", "config.json", "generation_config.json",
                            "eval_before_after.json", weights}  # no checkpoint-*/, no wandb/
    assert entries[weights]["ref"] == (output_dir / "model.safetensors").resolve().as_uri()
    recorded = json.loads((output_dir / ARTIFACT_FILE).read_text())
    assert recorded["artifact"] == summary["artifact"] == f"rast-grpo/full:run-{run_id}"


def test_a_save_killed_midway_is_skipped_on_resume(tiny_models, tmp_path, monkeypatch, caplog):
    """The Trainer's save is not atomic: a kill after the weights but before trainer_state.json
    leaves checkpoint-2 torn. Resume takes checkpoint-1, names what it skipped, and finishes."""
    from transformers import Trainer

    output_dir = tmp_path / "killed"
    real_save_rng_state = Trainer._save_rng_state

    def die_inside_the_second_save(self, output_dir):
        if self.state.global_step == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
        real_save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", die_inside_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        grpo_run(tiny_models["small_base"], output_dir)
    monkeypatch.undo()
    torn = output_dir / "checkpoint-2"
    assert (torn / "model.safetensors").is_file() and not (torn / "trainer_state.json").exists()

    counter = StepCounter()
    with caplog.at_level("WARNING", logger="train.grpo"):
        summary = grpo_run(tiny_models["small_base"], output_dir, callbacks=[counter])
    assert f"skipping {torn}: its save did not finish" in caplog.text
    assert counter.steps == 1 and summary["global_step"] == 2 and summary["trained_steps"] == 1
    assert grpo.saved_step(str(torn)) == 2  # the resumed run saved it again, complete


def test_a_torn_checkpoint_named_explicitly_is_refused_in_one_line(tiny_models, tmp_path):
    torn = tmp_path / "out" / "checkpoint-3"
    torn.mkdir(parents=True)
    (torn / "trainer_state.json").write_text('{"global_step": 3, "log_hi')
    with pytest.raises(UserError, match="checkpoint-3 is not a complete checkpoint"):
        grpo_run(tiny_models["small_base"], tmp_path / "out", "--resume_from_checkpoint", str(torn))


def test_a_second_run_on_a_busy_output_dir_is_refused_in_one_line(tiny_models, tmp_path, capsys):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    argv = shlex.join(tiny_flags(tiny_models["small_base"], output_dir, "--max_steps", "1"))
    with output_lock(output_dir / ".lock", "the first run"):  # the first run, still training
        code, error, changed = outcome(grpo.main, argv, capsys, tmp_path)
    assert code == 2 and error.startswith(f"error: output_dir {output_dir} is in use by another "
                                          f"run (pid {os.getpid()} on host ")
    assert changed == [] and sorted(p.name for p in output_dir.iterdir()) == [".lock"]


# How each other command's directory is known: by its owner file, or by its files when it was
# written before owner files (an evaluation's systems.json) or by no command (a model).
OTHERS_DIRECTORIES = {
    "evaluation": ({OWNER_FILE: '{"command": "evaluation"}', "samples.jsonl": ""},
                   "an evaluation (transfer.eval)"),
    "older evaluation": ({"systems.json": "{}", "samples.jsonl": ""},
                         "an evaluation (transfer.eval)"),
    "analysis": ({OWNER_FILE: '{"command": "analysis"}', "positions.jsonl": ""}, "an analysis"),
    "model": ({"config.json": "{}", "model.safetensors": ""}, "a model or a training run"),
}


@pytest.mark.parametrize("files, owner", OTHERS_DIRECTORIES.values(), ids=OTHERS_DIRECTORIES)
def test_grpo_refuses_another_commands_directory_and_leaves_it_alone(files, owner, tiny_models,
                                                                      tmp_path, capsys):
    output_dir = tmp_path / "theirs"
    output_dir.mkdir()
    for name, text in files.items():
        (output_dir / name).write_text(text)
    argv = shlex.join(tiny_flags(tiny_models["small_base"], output_dir, "--max_steps", "1"))
    expected = (f"error: output_dir {output_dir} holds the files of {owner}, which this training "
                f"would overwrite: give it a directory of its own")
    assert outcome(grpo.main, argv, capsys, tmp_path) == (2, expected, [])
    assert sorted(p.name for p in output_dir.iterdir()) == sorted([*files, ".lock"])


def test_an_evaluation_or_analysis_into_a_grpo_output_dir_is_refused(full_run):
    output_dir, _ = full_run
    owner = r"holds the files of a GRPO training run \(train.grpo\)"
    for command in ("evaluation", "analysis"):
        with pytest.raises(UserError, match=owner), claim_output_dir(output_dir, command):
            pass


def test_only_rank_0_of_a_launch_locks_and_claims_the_output_dir(tmp_path, monkeypatch):
    """Every rank runs run(); rank 0 holds the lock for the whole run, so the others must not
    try to take it (they would refuse their own run) nor write the owner file."""
    output_dir = tmp_path / "out"
    _, training_args, _ = grpo.parse_args(["--output_dir", str(output_dir), "--use_cpu", "true"])
    with grpo.claim_training_dir(training_args):  # rank 0
        monkeypatch.setattr(type(training_args), "process_index", property(lambda self: 1))
        with grpo.claim_training_dir(training_args):  # rank 1, beside it
            pass
        monkeypatch.undo()
        assert json.loads((output_dir / OWNER_FILE).read_text()) == {"command": "training"}
    assert sorted(p.name for p in output_dir.iterdir()) == [".lock", OWNER_FILE]
