"""Scaling out: DeepSpeed ZeRO GRPO under accelerate launch, sharded evaluation, the GPU plan.

All on CPU: ZeRO-2/3 in one process (DeepSpeed selects its CPU accelerator; the first run ever
JIT-builds a small op, ~50 s, cached afterwards), 2-process evaluation under torchrun (gloo), and
the 32B plan from registry facts alone.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

from transfer.eval import placement
from transfer.eval.evaluate import System, TransferConfig, parse_config, problems_to_do, run
from transfer.eval.samples import Sample
from transfer.runlog import SampleLog

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def accelerate_grpo(config: str, model: str, output_dir: Path, max_steps: int) -> str:
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               f"recipes/accelerate_configs/{config}.yaml", "-m", "train.grpo",
               "--model_name_or_path", model, "--output_dir", str(output_dir),
               "--dataset", "tiny", "--dataset_limit", "16", "--prompt_template", "tiny",
               "--per_device_train_batch_size", "8", "--num_generations", "4",
               "--max_completion_length", "8", "--max_steps", str(max_steps), "--use_cpu", "true",
               "--bf16", "false", "--gradient_checkpointing", "false", "--save_steps", "1",
               "--report_to", "none", "--torch_threads", "1", "--disable_tqdm", "true",
               # A random model never multiplies right: every reward is 0 and so is the policy
               # gradient. The entropy bonus keeps a gradient, so the steps must move the weights.
               "--entropy_coef", "0.5", "--learning_rate", "1e-2"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_grpo_steps_in_one_cpu_process_and_resume(stage, tiny_models, tmp_path):
    output_dir = tmp_path / f"zero{stage}"
    stdout = accelerate_grpo(f"zero{stage}_cpu", tiny_models["small_base"], output_dir, 2)
    assert "GRPO done: step 2 (2 trained now)" in stdout
    # DeepSpeed's own checkpoint layout: the steps really ran through the ZeRO engine
    shards = {p.name for p in (output_dir / "checkpoint-2" / "global_step2").iterdir()}
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards
    assert ("zero_pp_rank_0_mp_rank_00_model_states.pt" in shards) == (stage == 3)
    trained = Qwen2ForCausalLM.from_pretrained(output_dir).state_dict()
    initial = Qwen2ForCausalLM.from_pretrained(tiny_models["small_base"]).state_dict()
    changed = [name for name, value in trained.items() if not torch.equal(value, initial[name])]
    assert set(changed) >= {name for name in initial if "layers.0." in name}  # ZeRO steps trained
    if stage == 3:  # resume once: DeepSpeed reloads its shards and the step count continues
        stdout = accelerate_grpo("zero3_cpu", tiny_models["small_base"], output_dir, 3)
        assert "GRPO done: step 3 (1 trained now)" in stdout
        state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
        assert state["global_step"] == 3


def test_make_train_small_expands_to_the_launch_line_the_readme_states():
    # The README's multi-node command and the line it says that command runs, taken from the
    # README itself, so the test follows the documentation instead of re-typing the Makefile.
    readme = re.sub(r"\s+", " ", (REPO / "README.md").read_text())
    stated = re.search(r"The multi-node line expands to `(accelerate launch [^`]*)`", readme)[1]
    # --no-print-directory: under `make test` the nested make would add "Leaving directory" lines
    dry_make = ["make", "--no-print-directory", "-n", "-o", "setup", "train-small", "RECIPE=r.yaml"]
    result = subprocess.run([*dry_make,
                             "ACCELERATE=zero3", "NODES=4", "NODE_RANK=i", "MAIN_ADDR=node0"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    line = re.sub(r"\s+", " ", result.stdout.strip().splitlines()[-1])
    assert line == ".venv/bin/" + stated.replace("--config ...", "--config r.yaml")
    plain = subprocess.run(dry_make, cwd=REPO, capture_output=True, text=True, check=True)
    assert plain.stdout.strip().splitlines()[-1].strip().endswith(
        "python -m train.grpo --config r.yaml")  # no launcher without ACCELERATE


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "zero2_cpu", "zero3_cpu"])
def test_accelerate_configs_agree_with_their_names(name):
    config = yaml.safe_load((REPO / f"recipes/accelerate_configs/{name}.yaml").read_text())
    cpu = name.endswith("_cpu")  # the tests' single-process stand-ins for the GPU configs
    assert config["use_cpu"] == cpu and (config["num_processes"] == 1) == cpu
    assert config["mixed_precision"] == ("no" if cpu else "bf16")  # CPUs have no bf16 autocast
    if name != "ddp":
        assert config["distributed_type"] == "DEEPSPEED"
        assert config["deepspeed_config"]["zero_stage"] == int(name[4])


def _recipe(path: Path, tiny_models: dict, **overrides) -> Path:
    recipe = {"target": tiny_models["large"], "small_base": tiny_models["small_base"],
              "small_rl": tiny_models["small_rl"], "lam": [1.0], "include_small_rl": True,
              "include_small_base": False, "samples": 2, "benchmarks": ["tiny"], "limit": 5,
              "prompt_template": "tiny", "batch_size": 4, "max_new_tokens": 6,
              "output_dir": str(path), "report_to": "none", **overrides}
    file = path.parent / f"{path.name}.yaml"
    file.write_text(yaml.safe_dump(recipe))
    return file


def test_shards_are_whole_disjoint_chunks_covering_everything(tmp_path):
    problems = [{"id": str(i)} for i in range(7)]
    config = TransferConfig(samples=2, batch_size=4)  # 2 problems a chunk -> 4 chunks
    log = SampleLog(tmp_path / "none.jsonl", Sample)
    system = System("L", "x")
    shards = [problems_to_do(system, "b", problems, config, log, (rank, 3)) for rank in range(3)]
    assert [total for _, total in shards] == [2, 1, 1]  # chunks each rank owns
    shards = [chunks for chunks, _ in shards]
    assert [[[p["id"] for p in chunk] for chunk in shard] for shard in shards] == [
        [["0", "1"], ["6"]], [["2", "3"]], [["4", "5"]]]


def test_two_process_evaluation_equals_one_process_and_resumes_per_rank(tiny_models, tmp_path):
    torch.set_num_threads(1)
    single = run(parse_config(["--config", str(_recipe(tmp_path / "one", tiny_models))]))
    expected = (tmp_path / "one" / "samples.jsonl").read_text().splitlines()
    assert len(expected) == 3 * 5 * 2  # S_RL, L, L+RAST x 5 problems x 2 samples

    # a killed 2-process run: rank 1 had logged some samples and died inside a write
    out = tmp_path / "two"
    out.mkdir()
    (out / "samples.rank1.jsonl").write_text("\n".join(expected[4:8]) + '\n{"system": "L", "be')
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "transfer.eval.evaluate", "--config", str(_recipe(out, tiny_models))]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "samples.jsonl").read_text().splitlines() == expected  # same records, same order
    assert not list(out.glob("samples.rank*.jsonl"))  # merged into samples.jsonl
    merged = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert merged == single["benchmarks"]


def test_dry_run_plans_32B_without_weights_or_hub(tmp_path):
    env = {**ENV, "HF_HOME": str(tmp_path / "empty_hf_home")}  # nothing cached: must not matter
    result = subprocess.run([sys.executable, "-m", "transfer.eval.evaluate", "--config",
                             "recipes/Qwen2.5-32B/rast/config_1.5B.yaml", "--dry-run", "--gpus",
                             "8", "--gpu_memory_gb", "80", "--batch_size", "16", "--engine", "hf",
                             "--output_dir", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "32.8B params, 64 GB bf16, KV 256 KiB/token (64 layers x 8 kv heads x 128)" in out
    assert "KV 28 KiB/token (28 layers x 2 kv heads x 128)" in out
    # 16 x 17408 tokens: L 64 + 16*17408*262144/1e9 = 137.0 GB -> 2 cards of 72 GB; pair
    # 2 x (3.09 + 16*17408*28672/1e9) = 22.2 GB -> a third card of its own
    assert "L 137.0 GB (weights 64.0 + KV 73.0), pair 22.2 GB, total 159.2 GB" in out
    assert "plan: L layers over GPU 0..1" in out and "small pair on GPU 2 (its own)" in out
    assert "3 GPUs per evaluation process -> 2 processes" in out
    assert not (tmp_path / "out").exists()  # a plan writes nothing


def test_plan_arithmetic_and_device_map():
    large, small = placement.model_facts("Qwen/Qwen2.5-32B"), [placement.model_facts("1.5B")] * 2
    assert large.kv_bytes_per_token == 64 * 8 * 128 * 2 * 2
    weights_only = placement.plan(large, small, batch=0, tokens=1, gpus=8, card_gb=141)
    assert (weights_only.large_gpus, weights_only.pair_gpu) == (1, 1)  # 64 GB on one H200
    crowded = placement.plan(large, small, batch=0, tokens=1, gpus=1, card_gb=141)
    assert crowded.gpus_per_process == 1 and crowded.pair_gpu == 0 and crowded.fits
    assert not placement.plan(large, small, 64, 17408, 8, 40).fits
    batch = placement.max_batch(large, small, 17408, 8, 80)
    assert placement.plan(large, small, batch, 17408, 64, 80).total_gb <= 8 * 72
    assert placement.plan(large, small, batch + 1, 17408, 64, 80).total_gb > 8 * 72
    assert placement.local_gpus(1, 4, [str(i) for i in range(8)]) == ["2", "3"]

    config = Qwen2Config(hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    device_map = placement.large_device_map(5, 2)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    for name in names:  # every tensor is placed, and by exactly one entry
        assert sum(name.startswith(prefix + ".") for prefix in device_map) == 1, name
    assert [device_map[f"model.layers.{i}"] for i in range(5)] == [0, 0, 0, 1, 1]


def test_dry_run_plan_counts_the_transient_logits_of_speculative_rounds():
    """12 fp32 [batch, positions, 152064] tensors at the peak (measured on CPU): the 32B recipe's
    batch 64 holds 0.5 GB per plain step and 4.2 GB per speculative round of 9 positions, inside
    the 7 GB an 80 GB card keeps free; at batch 128 on 40 GB cards it would not be."""
    def line(batch, card_gb, speculative):
        config = TransferConfig(target="Qwen/Qwen2.5-32B", batch_size=batch,
                                speculative=speculative)
        text = placement.describe(config, ["1.5B", "1.5B"], 64, card_gb, (0, 0.0))
        return next(row for row in text.splitlines() if row.startswith("transient logits"))

    assert placement.logits_gb(64, 152064, 9) == pytest.approx(12 * 64 * 9 * 152064 * 4 / 1e9)
    assert line(64, 80, False) == ("transient logits on L's last GPU (1 position per step): 0.5 "
                                   "GB, within the 7.0 GB each card keeps free beside its CUDA "
                                   "context")
    assert line(64, 80, True).startswith("transient logits on L's last GPU (speculative, 9 "
                                         "positions per step): 4.2 GB, within")
    assert line(128, 40, True).endswith("more than the 3.0 GB each card keeps free beside its "
                                        "CUDA context: lower batch_size")
