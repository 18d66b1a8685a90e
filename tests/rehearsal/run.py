"""`make rehearse`: the README's real Qwen commands, run on CPU against hub stand-ins.

The Qwen path's real commands (GRPO with the SimpleRL-Zoo and LoRA recipes, with vLLM colocate
and once against a vLLM server (`python -m train.vllm_server`), `make transfer
TARGET=32B` and `TARGET=7B`, the 32B analysis recipe, the dry-run plans) run as subprocesses,
exactly as a user types them, with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at random-weight
stand-ins of every hub id the recipes name (tests/rehearsal/standins.py: real tokenizer, real
vocabulary sizes, hub-style configs). Only sizes change on the command line (steps, batch,
lengths, problem counts) and output_dir, which goes under outputs/rehearsal/ so that no
rehearsal sample is ever resumed by a real run. Then it checks what would otherwise fail
silently on GPUs: trained weights moved, completions stop, 151936- and 152064-row models
combine, hub RL checkpoints pair without rast_pair.json, W&B offline runs and reports exist.
Prints a timing line per command and a summary table; exits 1 when anything failed.

    python -m tests.rehearsal.run          # make rehearse (~10 min on 2 cores)
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.rehearsal import checks
from tests.rehearsal.standins import build_cache

OUT = Path("outputs/rehearsal")
QWEN_GRPO = "recipes/Qwen2.5-1.5B/grpo"
COMBINED_32B = "recipes/Qwen2.5-32B/rast/config_1.5B_7B_combined.yaml"
ANALYZE_32B = "recipes/Qwen2.5-32B/analyze/config_1.5B_7B.yaml"
MAX_NEW_TOKENS = 24  # the stand-ins stop ~8% of the time per token: some end early, some do not
# A few GRPO steps at a small batch: 2 optimizer steps of 4 completions (2 prompts x 2). The one
# flag that is not a size: --use_cpu, without which transformers refuses the recipes' bf16 on a
# machine without a GPU (with it, bf16 autocast runs on CPU as it would on GPUs).
# The recipes generate with vLLM colocate; on CPU it gets a 1 GiB KV cache (train/vllm_cpu.py).
GRPO_SIZES = ("--max_steps 2 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 "
              f"--steps_per_generation 1 --num_generations 2 --max_completion_length {MAX_NEW_TOKENS} "
              "--dataset_limit 32 --save_steps 2 --use_cpu true")
# Does vLLM generate with the policy after each optimizer step? At the recipes' lr (5e-7) the
# policy barely moves, so that would pass without any sync: these two runs (0.5B recipe) train at
# lr 1e-3 for 3 steps, once as written and once with the sync into vLLM switched off (the control,
# tests/rehearsal/no_sync.py), and compare TRL's sampling/sampling_logp_difference/mean. The same
# pair runs again in server mode (tests/rehearsal/server_mode.py: the vLLM server started apart).
SYNC_SIZES = GRPO_SIZES.replace("--max_steps 2", "--max_steps 3").replace(
    "--save_steps 2", "--save_steps 3") + " --learning_rate 1e-3"
QWEN_05B_GRPO = "recipes/Qwen2.5-0.5B/grpo/config_simplerl_zoo.yaml"
# Two problems per benchmark, two samples each, short answers; the 32B/14B recipes' tensor
# parallelism (4/2 GPUs) is a size too: one CPU process here.
TRANSFER_SIZES = (f"--limit 2 --samples 2 --max_new_tokens {MAX_NEW_TOKENS} --batch_size 4 "
                  "--tensor_parallel_size 1")


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    detail: str


def make(*words: str) -> list[str]:
    # `make rehearse` ran `make setup` first; -o setup keeps the nested makes from doing it again.
    return ["make", "--no-print-directory", "-o", "setup", *words]


def commands() -> list[tuple[str, list[str]]]:
    """(name, argv) of every real command the rehearsal runs, in order."""
    transfer_32b, transfer_7b = OUT / "transfer-32B-1.5B", OUT / "transfer-7B-1.5B"
    return [
        ("plan: make transfer TARGET=32B ARGS=--dry-run",
         make("transfer", "TARGET=32B", "ARGS=--dry-run")),
        ("plan: make train-small (simplerl_zoo) --dry-run",
         make("train-small", f"RECIPE={QWEN_GRPO}/config_simplerl_zoo.yaml", "ARGS=--dry-run")),
        ("plan: make train-small (lora) --dry-run",
         make("train-small", f"RECIPE={QWEN_GRPO}/config_lora.yaml", "ARGS=--dry-run")),
        ("GRPO full (config_simplerl_zoo)",
         make("train-small", f"RECIPE={QWEN_GRPO}/config_simplerl_zoo.yaml",
              f"ARGS={GRPO_SIZES} --output_dir {OUT}/grpo-full")),
        ("GRPO LoRA (config_lora)",
         make("train-small", f"RECIPE={QWEN_GRPO}/config_lora.yaml",
              f"ARGS={GRPO_SIZES} --output_dir {OUT}/grpo-lora")),
        ("vLLM on CPU: train/vllm_cpu.py piece by piece",
         [sys.executable, "-m", "tests.train.vllm_cpu_check", str(OUT / "vllm-cpu-check")]),
        ("GRPO 0.5B, lr 1e-3: vLLM follows the policy",
         make("train-small", f"RECIPE={QWEN_05B_GRPO}",
              f"ARGS={SYNC_SIZES} --output_dir {OUT}/grpo-sync")),
        ("GRPO 0.5B, lr 1e-3, no sync into vLLM (control)",
         [sys.executable, "-m", "tests.rehearsal.no_sync", "--config", QWEN_05B_GRPO,
          *SYNC_SIZES.split(), "--output_dir", f"{OUT}/grpo-no-sync"]),
        ("vLLM server on CPU: train/vllm_cpu.py's server pieces",
         [sys.executable, "-m", "tests.train.vllm_server_check", "Qwen/Qwen2.5-0.5B",
          str(OUT / "vllm-server-check")]),
        ("GRPO 0.5B, lr 1e-3, vLLM server mode: follows the policy",
         [sys.executable, "-m", "tests.rehearsal.server_mode", "Qwen/Qwen2.5-0.5B", QWEN_05B_GRPO,
          *SYNC_SIZES.split(), "--output_dir", f"{OUT}/grpo-server"]),
        ("GRPO 0.5B, lr 1e-3, vLLM server mode, no sync (control)",
         [sys.executable, "-m", "tests.rehearsal.server_mode", "--no-sync", "Qwen/Qwen2.5-0.5B",
          QWEN_05B_GRPO, *SYNC_SIZES.split(), "--output_dir", f"{OUT}/grpo-server-no-sync"]),
        ("make transfer TARGET=32B",
         make("transfer", "TARGET=32B", f"ARGS={TRANSFER_SIZES} --output_dir {transfer_32b}")),
        ("vLLM RAST vs the HF engine: tests/transfer/decode/vllm_check.py",
         [sys.executable, "-m", "tests.transfer.decode.vllm_check", str(OUT / "vllm-check")]),
        ("speculative vLLM RAST: tests/transfer/decode/vllm_spec_check.py",
         [sys.executable, "-m", "tests.transfer.decode.vllm_spec_check",
          str(OUT / "vllm-spec-check")]),
        ("vLLM RAST at TP 2: tests/transfer/decode/vllm_tp_check.py",
         [sys.executable, "-m", "tests.transfer.decode.vllm_tp_check", str(OUT / "vllm-tp-check")]),
        ("make transfer TARGET=32B, engine hf",
         make("transfer", "TARGET=32B", f"ARGS={TRANSFER_SIZES} --benchmarks math500 "
              f"--engine hf --output_dir {OUT}/transfer-32B-hf")),
        ("make transfer TARGET=32B, engine hf, speculative",
         make("transfer", "TARGET=32B", f"ARGS={TRANSFER_SIZES} --benchmarks math500 "
              f"--engine hf --speculative true --output_dir {OUT}/transfer-32B-speculative")),
        ("make transfer TARGET=7B",
         make("transfer", "TARGET=7B", f"ARGS={TRANSFER_SIZES} --output_dir {transfer_7b}")),
        ("make transfer (32B, 1.5B and 7B deltas combined)",
         make("transfer", f"RECIPE={COMBINED_32B}", f"ARGS={TRANSFER_SIZES} --benchmarks math500 "
              f"--output_dir {OUT}/transfer-32B-combined")),
        ("make analyze (32B recipe)",
         make("analyze", f"RECIPE={ANALYZE_32B}",
              f"ARGS=--limit 2 --trajectories {transfer_32b}/samples.jsonl "
              f"--evaluation {transfer_32b}/samples.jsonl --output_dir {OUT}/analyze-32B")),
        ("RAST server (transfer.serve) with the openai client",
         [sys.executable, "-m", "tests.transfer.serve_check", str(OUT / "serve-check")]),
    ]


def run_command(name: str, argv: list[str], env: dict, log: Path) -> Outcome:
    """Run one command, its output to the terminal and to `log`; a timing line each side."""
    print(f"\n==> {name}\n    {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            handle.write(line)
            sys.stdout.write(line)
        code = process.wait()
    seconds = time.monotonic() - start
    print(f"<== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.1f} s",
          flush=True)
    return Outcome(name, code == 0, seconds, f"exit {code}, log {log}")


def run_check(name: str, check, *args) -> Outcome:
    start = time.monotonic()
    try:
        ok, detail = check(*args)
    except Exception as err:  # noqa: BLE001 -- a crashed check fails; the others still run
        ok, detail = False, f"{type(err).__name__}: {err}"
    outcome = Outcome(name, ok, time.monotonic() - start, detail)
    print(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return outcome


def summary_table(outcomes: list[Outcome]) -> str:
    width = max(len(o.name) for o in outcomes)
    lines = [f"{'step':<{width}}  result  seconds  detail"]
    lines += [f"{o.name:<{width}}  {'ok' if o.ok else 'FAIL':<6}  {o.seconds:7.1f}  {o.detail}"
              for o in outcomes]
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)  # always a fresh run: finished runs would be skipped
    (OUT / "logs").mkdir(parents=True)
    (OUT / "vllm-cpu-check").mkdir()
    (OUT / "vllm-check").mkdir()
    (OUT / "vllm-server-check").mkdir()
    (OUT / "vllm-spec-check").mkdir()
    (OUT / "vllm-tp-check").mkdir()
    outcomes = []

    start = time.monotonic()
    cache = build_cache()
    outcomes.append(Outcome("hub stand-ins", True, time.monotonic() - start, str(cache)))
    print(f"hub stand-ins in {cache} ({outcomes[-1].seconds:.1f} s)", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}

    logs = {}
    for index, (name, argv) in enumerate(commands()):
        logs[name] = OUT / "logs" / f"{index}.log"
        outcomes.append(run_command(name, argv, env, logs[name]))

    print("\n== checks", flush=True)
    for name, check, args in checks.all_checks(OUT, logs, cache, MAX_NEW_TOKENS):
        outcomes.append(run_check(name, check, *args))

    print(f"\n== rehearsal summary ({time.monotonic() - started:.0f} s in all)")
    print(summary_table(outcomes))
    failed = [o.name for o in outcomes if not o.ok]
    print(f"\nrehearsal {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
