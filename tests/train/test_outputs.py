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
