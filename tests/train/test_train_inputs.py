"""train/ entry points on bad inputs: one line and a non-zero exit, before any work is done."""

import os
import subprocess
import sys
from pathlib import Path

from tests.bad_inputs import outcome
from train import grader, grpo

REPO = Path(__file__).parents[2]
TINY = "recipes/tiny/grpo/config_cpu.yaml"


def test_grpo_refuses_a_file_as_output_dir_and_zero_steps(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert outcome(grpo.main, f"--config {TINY} --output_dir {tmp_path / 'file'}", capsys,
                   tmp_path) == (2, (f"error: output_dir {tmp_path / 'file'} is a file: give a "
                                    f"directory path"), [])
    assert outcome(grpo.main, f"--config {TINY} --max_steps 0 --output_dir {tmp_path / 'out'}",
                   capsys, tmp_path) == (2, ("error: max_steps 0 trains nothing: give a number of "
                                            "steps >= 1 (or -1 for num_train_epochs)"), [])


def test_the_grader_refuses_an_endless_timeout(capsys, tmp_path):
    code, error, _ = outcome(grader.main, "1 1 --timeout_s inf", capsys, tmp_path)
    assert code == 2 and error.endswith("--timeout_s must be a number of seconds in (0, 3600), "
                                        "got inf")


def test_a_file_as_rast_home_is_refused_before_the_family_trains(tmp_path):
    (tmp_path / "home").write_text("")
    env = {**os.environ, "RAST_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "train.tiny.family", "--members", "tiny-s"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: RAST_HOME {tmp_path / 'home'} is a file: point RAST_HOME at a directory")
