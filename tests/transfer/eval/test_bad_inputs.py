"""transfer.eval.evaluate on bad inputs: one line, exit 2, before the first sample is decoded and
without touching the user's files; two runs on one output_dir; duplicated sample records."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.bad_inputs import outcome
from tests.conftest import build_random_qwen2
from train.tiny.tokenizer import build_tokenizer
from transfer.eval import evaluate

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """A model whose tokenizer has one token more, one with fewer embedding rows than its
    tokenizer, an empty directory and a file."""
    root = tmp_path_factory.mktemp("odd_models")
    other = build_random_qwen2(root / "other_tokenizer", hidden=64, layers=3, ffn=128,
                               embedding_rows=160, seed=3)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    (root / "empty").mkdir()
    (root / "model.bin").write_bytes(b"weights, but not a model directory")
    return {"other": other, "narrow": build_random_qwen2(root / "narrow", embedding_rows=64),
            "empty": str(root / "empty"), "file": str(root / "model.bin")}


def write_recipe(user_dir: Path, tiny_models: dict, **overrides) -> Path:
    recipe = {"target": tiny_models["large"], "small_base": tiny_models["small_base"],
              "small_rl": tiny_models["small_rl"], "lam": [1.0], "include_small_rl": True,
              "samples": 1, "benchmarks": ["tiny"], "limit": 2, "max_new_tokens": 4,
              "batch_size": 2, "output_dir": str(user_dir / "out"), "report_to": "none",
              **overrides}
    path = user_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


BAD_INPUTS = [
    ("--limit 0", "error: limit must be >= 1 (leave it empty for every problem), got 0"),
    ("--limit -1", "error: limit must be >= 1 (leave it empty for every problem), got -1"),
    ("--temperature nan", "error: temperature must be a finite number, got nan"),
    ("--lam nan", "error: lambda must be a finite number >= 0, got nan"),
    ("--lam -1", "error: lambda must be a finite number >= 0, got -1.0"),
    ("--output_dir /sys/rast-eval",
     "error: cannot create output_dir /sys/rast-eval: Operation not permitted"),
    ("--output_dir /sys", ("error: cannot write output_dir /sys: Permission denied (/sys/.lock); "
                          "choose a writable location")),
    ("--target {other}",
     ("error: tokenizers of '{other}' and '{small_base}' differ (99 vs 98 tokens); RAST needs "
     "models that share one tokenizer")),
    ("--target {narrow}",
     ("error: {narrow} has 64 embedding rows, fewer than the 98 tokens of the tokenizer it is "
     "decoded with: it belongs to another tokenizer; use models of one family")),
    ("--target_rl {empty}",
     ("error: {empty} is a directory without config.json or adapter_config.json, so not a model: "
     "give the directory that save_pretrained wrote (a train.grpo output_dir once it finished)")),
    ("--target_rl {file}",
     ("error: {file} is a file, not a model: give the directory that save_pretrained wrote (with "
     "config.json), a registry name or a hub id")),
    ("--device cuda",
     (f"error: device 'cuda': this torch sees no CUDA GPU (torch {torch.__version__}); use cpu, "
     f"or a CUDA build of torch on a GPU machine")),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --device cuda row expects no CUDA")
@pytest.mark.parametrize("flags, expected", BAD_INPUTS, ids=[f for f, _ in BAD_INPUTS])
def test_bad_input_fails_in_one_line_before_decoding(flags, expected, tiny_models, odd_models,
                                                     tmp_path, capsys):
    torch.set_num_threads(1)
    names = {**tiny_models, **odd_models}
    recipe = write_recipe(tmp_path, tiny_models)
    argv = f"--config {recipe} {flags.format(**names)}"
    assert outcome(evaluate.main, argv, capsys, tmp_path) == (2, expected.format(**names), [])
    assert not (tmp_path / "out" / "samples.jsonl").exists()  # nothing was decoded


BAD_RECORDS = [
    ('{"system": "L", "benchmark": "tiny"}\n',
     ("error: {log}:1 is not a sample record (missing role, problem_id, sample_index, seed, "
      "text, extracted, correct, reason, num_tokens, finished): point to a samples.jsonl written "
      "by transfer.eval, or re-run the evaluation into a new output_dir")),
    ("[1, 2]\n",
     ("error: {log}:1 is not a sample record (missing every field: not an object): point to a "
      "samples.jsonl written by transfer.eval, or re-run the evaluation into a new output_dir")),
]


@pytest.mark.parametrize("content, expected", BAD_RECORDS, ids=["missing-keys", "a-list"])
def test_a_sample_log_row_without_required_keys_is_one_line(content, expected, tiny_models,
                                                            tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_models)
    log = tmp_path / "out" / "samples.jsonl"
    log.parent.mkdir()
    log.write_text(content)
    assert outcome(evaluate.main, f"--config {recipe}", capsys, tmp_path) == (
        2, expected.format(log=log), [])


FAKE_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from fake_engine import FakeEngine
    from train.errors import exit_on_user_error
    from transfer.eval.evaluate import parse_config, run
    with exit_on_user_error():
        run(parse_config(sys.argv[1:]), make_decoder=lambda system, config: FakeEngine(system, {delay}))
""")


def test_a_second_run_on_a_busy_output_dir_refuses_naming_the_holder(tiny_models, tmp_path):
    """Two real processes on the fake engine: the second refuses in one line and appends nothing."""
    recipe = write_recipe(tmp_path, tiny_models, limit=8, samples=2, lam=[1.0])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}

    def start(delay: float) -> subprocess.Popen:
        script = FAKE_RUN.format(here=str(Path(__file__).parent), delay=delay)
        return subprocess.Popen([sys.executable, "-c", script, "--config", str(recipe)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    # Both start at once (their imports take most of the time); whichever locks first decodes
    # 24 batches at 2 s each, so it is still running when the other one gives up.
    runs = [start(delay=2.0), start(delay=2.0)]
    deadline = time.time() + 120
    while all(run.poll() is None for run in runs) and time.time() < deadline:
        time.sleep(0.05)
    refused, holder = runs if runs[0].poll() is not None else runs[::-1]
    refused_err = refused.communicate()[1]
    assert holder.poll() is None, "the holder ended before the other run tried"
    holder.kill()
    holder.wait()
    assert refused.returncode == 2, refused_err[-2000:]
    assert refused_err.strip().splitlines()[-1].startswith(
        f"error: output_dir {tmp_path / 'out'} is in use by another run (pid {holder.pid} on host ")
    log = tmp_path / "out" / "samples.jsonl"
    keys = [(r["system"], r["problem_id"], r["sample_index"])
            for r in map(json.loads, log.read_text().splitlines() if log.exists() else [])]
    assert len(keys) == len(set(keys))  # only the holder appended


HOLD_LOCK = "import sys, time; from pathlib import Path; from transfer.runlog import output_lock\n" \
            "with output_lock(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    from train.errors import UserError
    from transfer.runlog import output_lock

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".lock")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError, match=rf"out is in use by another run \(pid {holder.pid} on "
                                        rf"host \S+, since 20"), output_lock(tmp_path / ".lock", "out"):
        pass
    holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
    holder.wait()
    with output_lock(tmp_path / ".lock", "out"):
        assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()


def test_duplicated_sample_records_count_once_and_are_named(tiny_models, tmp_path, caplog):
    """Logs written before the lock existed may hold a sample twice: it counts once."""
    recipe = write_recipe(tmp_path, tiny_models, include_small_rl=False)
    torch.set_num_threads(1)
    clean = evaluate.run(evaluate.parse_config(["--config", str(recipe)]))
    log = tmp_path / "out" / "samples.jsonl"
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows + rows[:3]) + "\n")
    with caplog.at_level("WARNING"):
        again = evaluate.run(evaluate.parse_config(["--config", str(recipe)]))
    assert again["benchmarks"] == clean["benchmarks"]
    assert f"{log} holds 3 duplicated sample record(s)" in caplog.text
