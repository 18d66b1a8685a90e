"""A GRPO step's generation with vLLM colocate vs transformers' continuous batching, side by side.

Runs one recipe twice in fresh processes, as `python -m train.grpo` runs it, once per generation
path, and times TRL's generation of every step (`_generate_single_turn`: vLLM's weight sync and
generate, or continuous batching with its fp32 save/restore) and TRL's whole step; prints a table
and the ratios, and writes them to OUTPUT_DIR/bench_generation.json. The first step is shown
apart (continuous batching builds its paged cache then; vLLM's engine starts before it, in the
whole run's time).

    # CPU, the hub stand-ins in $RAST_HOME/hub-v3 (make rehearse builds them): ~6 min on 2 cores
    python -m train.bench_generation --cpu          # make grpo-gen-bench ARGS=--cpu
    # one GPU, one real step of the 0.5B recipe both ways (make grpo-gen-bench); with no hub
    # access, --model names a local Qwen2.5-0.5B (or random weights of its shape). The recipe's
    # step generates 1024 rows of up to 8192 tokens: lower steps_per_generation to fit a time box.
    make grpo-gen-bench ARGS="--model /path/to/Qwen2.5-0.5B -- \\
        --gradient_accumulation_steps 4 --steps_per_generation 16"

Flags after `--` go to train.grpo for both runs (sizes: steps, batch, completion length).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from train.models import HUB_STANDINS

PATHS = {
    "vLLM colocate": ["--use_vllm", "true", "--vllm_mode", "colocate",
                      "--use_transformers_continuous_batching", "false"],
    "continuous batching": ["--use_vllm", "false", "--use_transformers_continuous_batching", "true"],
}
# CPU: the rehearsal's sizes (2 prompts x 2 completions of up to 24 tokens per step).
CPU_SIZES = ["--max_steps", "3", "--per_device_train_batch_size", "4",
             "--gradient_accumulation_steps", "1", "--steps_per_generation", "1",
             "--num_generations", "2", "--max_completion_length", "24", "--dataset_limit", "32",
             "--use_cpu", "true"]
# GPU: ONE real step of the recipe (1024 generated rows of up to 8192 tokens per process).
GPU_SIZES = ["--max_steps", "1"]


def worker(result_file: str, grpo_argv: list[str]) -> None:
    """One run of train.grpo with TRL's generation timed per call."""
    from transformers import Trainer

    from train import grpo

    times, logs = [], []
    # GRPOTrainer.log adds its metrics (step_time among them), then calls Trainer.log
    generate, log = grpo.MasterWeightsGRPOTrainer._generate_single_turn, Trainer.log

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return generate(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    def logged(self, logs_of_step, *args, **kwargs):
        logs.append(dict(logs_of_step))
        return log(self, logs_of_step, *args, **kwargs)

    grpo.MasterWeightsGRPOTrainer._generate_single_turn = timed
    Trainer.log = logged
    start = time.perf_counter()
    grpo.main(grpo_argv)
    total = time.perf_counter() - start
    step_times = [entry["step_time"] for entry in logs if "step_time" in entry]
    Path(result_file).write_text(json.dumps({"generation_s": times, "step_s": step_times,
                                             "total_s": total}))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2:])
    split = argv.index("--") if "--" in argv else len(argv)
    own, passed = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/Qwen2.5-0.5B/grpo/config_simplerl_zoo.yaml")
    parser.add_argument("--model", help="model_name_or_path for both runs (default: the recipe's)")
    parser.add_argument("--cpu", action="store_true", help="CPU sizes (default: one real step)")
    parser.add_argument("--output_dir", default="outputs/bench_generation")
    args = parser.parse_args(own)
    env = dict(os.environ)
    if args.cpu and not args.model:  # the recipe's hub id, from the stand-ins
        env.setdefault("HF_HUB_CACHE", str(HUB_STANDINS))
        if not (Path(env["HF_HUB_CACHE"]) / "rast-standins.json").is_file():
            sys.exit(f"error: no hub stand-ins in {env['HF_HUB_CACHE']}: build them with "
                     f"`python -m tests.rehearsal.standins` (or `make rehearse`), or pass --model")
    results = {}
    for name, flags in PATHS.items():
        output_dir = Path(args.output_dir) / name.replace(" ", "-")
        result_file = Path(args.output_dir) / f"{name.replace(' ', '-')}.json"
        shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run, never a resumed one
        result_file.parent.mkdir(parents=True, exist_ok=True)
        grpo_argv = ["--config", args.config, *(CPU_SIZES if args.cpu else GPU_SIZES), *flags,
                     "--output_dir", str(output_dir), "--save_steps", "1000000",
                     "--report_to", "none", "--logging_steps", "1", "--log_completions", "false",
                     *(["--model_name_or_path", args.model] if args.model else []), *passed]
        print(f"==> {name}: python -m train.grpo {' '.join(grpo_argv)}", flush=True)
        subprocess.run([sys.executable, "-m", "train.bench_generation", "--worker",
                        str(result_file), *grpo_argv], check=True, env=env)
        results[name] = json.loads(result_file.read_text())
    print(report(results))
    (Path(args.output_dir) / "bench_generation.json").write_text(json.dumps(results, indent=2))


def report(results: dict) -> str:
    header = f"{'generation path':<22}{'gen step 1 s':>14}{'gen later s':>13}{'step later s':>14}"
    lines = [f"{header}{'run s':>9}"]
    for name, r in results.items():
        gen, steps = r["generation_s"], r["step_s"]
        lines.append(f"{name:<22}{gen[0] if gen else float('nan'):>14.2f}{mean(gen[1:]):>13.2f}"
                     f"{mean(steps[1:]):>14.2f}{r['total_s']:>9.1f}")
    vllm, cb = results["vLLM colocate"], results["continuous batching"]
    later = (mean(vllm["generation_s"][1:]) / mean(cb["generation_s"][1:])
             if len(cb["generation_s"]) > 1 else float("nan"))
    first = vllm["generation_s"][0] / cb["generation_s"][0]
    lines.append(f"ratio vLLM / continuous batching: generation {later:.2f} (steps 2+), "
                 f"{first:.2f} (step 1); whole run {vllm['total_s'] / cb['total_s']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
