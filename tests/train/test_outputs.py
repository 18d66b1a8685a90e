"""train.outputs: one writer and one owner for every command's output_dir (train.grpo,
transfer.eval.evaluate, transfer.analysis.analyze)."""

import json

import pytest

from train.errors import UserError
from train.outputs import OWNER_FILE, claim_output_dir


def refused(directory, command, message):
    with pytest.raises(UserError, match=message), claim_output_dir(directory, command):
        pass


def test_one_directory_one_owner(tmp_path):
    """A command claims its output_dir: it refuses another command's directory (by its owner
    file, or for older runs and models by their files), a file, and a directory in use."""
    evaluation = tmp_path / "evaluation"
    with claim_output_dir(evaluation, "evaluation"):
        assert json.loads((evaluation / OWNER_FILE).read_text()) == {"command": "evaluation"}
        refused(evaluation, "evaluation", "in use by another run")
    with claim_output_dir(evaluation, "evaluation"):  # a resume: its own directory
        pass
    refused(evaluation, "analysis", r"holds the files of an evaluation \(transfer.eval\), which "
                                    r"this analysis would overwrite")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    refused(model, "evaluation", "holds the files of a model or a training run")
    assert (model / "config.json").read_text() == "{}" and not (model / OWNER_FILE).exists()
    older = tmp_path / "older-evaluation"  # written before owner files: known by systems.json
    older.mkdir()
    (older / "systems.json").write_text("{}")
    refused(older, "analysis", "holds the files of an evaluation")
    (tmp_path / "file").write_text("")
    refused(tmp_path / "file", "analysis", "is a file: give a directory path")


def test_a_training_run_and_the_commands_after_it_refuse_each_others_directories(tmp_path):
    training = tmp_path / "grpo"
    with claim_output_dir(training, "training"):
        assert json.loads((training / OWNER_FILE).read_text()) == {"command": "training"}
        refused(training, "training", "in use by another run")  # two GRPO runs on one dir
    for command in ("evaluation", "analysis"):
        refused(training, command, rf"holds the files of a GRPO training run \(train.grpo\), "
                                   rf"which this {command} would overwrite")
    evaluation = tmp_path / "evaluation"
    with claim_output_dir(evaluation, "evaluation"):
        pass
    refused(evaluation, "training", r"holds the files of an evaluation \(transfer.eval\), which "
                                    r"this training would overwrite")
    model = tmp_path / "model"  # a base model's directory: GRPO would overwrite its config.json
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    refused(model, "training", "holds the files of a model or a training run")
    with claim_output_dir(training, "training"):  # a resume: its own directory
        pass


def test_a_grpo_directory_from_before_owner_files_is_known_by_its_checkpoints(tmp_path):
    """train.grpo wrote no owner file before; its directories hold checkpoint-<step>/ (and once
    finished, rast_pair.json and the model). GRPO resumes them and claims them; an evaluation
    into one is refused, also while it holds checkpoints only (killed, or still training)."""
    finished, killed = tmp_path / "finished", tmp_path / "killed"
    for directory in (finished, killed):
        (directory / "checkpoint-2").mkdir(parents=True)
        (directory / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    for name in ("rast_pair.json", "config.json", "model.safetensors"):
        (finished / name).write_text("{}")
    for directory in (finished, killed):
        refused(directory, "evaluation", r"holds the files of a GRPO training run")
        assert not (directory / OWNER_FILE).exists()
        with claim_output_dir(directory, "training"):
            pass
        assert json.loads((directory / OWNER_FILE).read_text()) == {"command": "training"}


def test_every_command_that_writes_a_directory_claims_it_through_train_outputs():
    from train import grpo
    from transfer import runlog
    from transfer.analysis import analyze
    from transfer.eval import evaluate

    for module in (grpo, runlog, analyze, evaluate):
        assert module.claim_output_dir is claim_output_dir
