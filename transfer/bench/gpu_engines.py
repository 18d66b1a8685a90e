"""vLLM RAST against vLLM on L alone and against the HF engine, on one GPU (`make gpu-bench`).

For each pair (7B + 0.5B and 32B + 1.5B by default), at the real Qwen2.5 configs with random bf16
weights (decode speed does not depend on the values), four systems, each in a process of its own
(one engine holds the GPU at a time): the HF engine (transfer.decode.engine, CUDA graphs) on L
alone and on RAST, plain vLLM on L, and vLLM RAST (transfer.decode.vllm_engine's composite model),
both vLLM ones with vLLM's defaults for a GPU (torch.compile and CUDA graphs: enforce_eager False).
The workloads are transfer.bench.engines': fixed batches 1, 16 and 64 of --new_tokens tokens each
(batch 1: 4 x as many), and a paper-shaped one (prompts x samples, lognormal lengths capped at
--max_new_tokens) under one KV budget of --kv_rows worst-case RAST rows, in which the HF engine
decodes batches sized for the worst case and vLLM pages and refills. Every system produces the same
tokens per sample (see that module). It prints tokens/s and the goals of issue 23: vLLM RAST >=
0.85x vLLM L alone at batch 64 (weight-bytes bound: 0.885 for 7B + 0.5B, 0.914 for 32B + 1.5B) and
>= 2x the HF engine on the paper-shaped workload.

vLLM starts from a directory per model holding config.json and the Qwen2.5 tokenizer only:
`load_format="dummy"` fills its weights with random values on the GPU. A vLLM system whose
weights, activations and KV budget do not fit the card's 0.9 share is skipped with the reason
(32B + 1.5B on an 80 GB H100: 70 GB of weights; it runs on an H200). Time (estimates): each vLLM
start compiles and captures graphs (1-3 min), the HF engine's paper-shaped batches take the
longest; one pair ~6-12 min on an H100/H200, so a lent machine runs one pair per call.

    python -m transfer.bench.gpu_engines --pairs 7B:0.5B     # outputs/gpu_engines.json
    python -m transfer.bench.gpu_engines --smoke             # tiny configs on CPU, the same path
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.models import QWEN_TOKENIZER_LENGTH, Architecture
from transfer.bench.engines import (
    SYSTEMS,
    Budget,
    add_workload_args,
    hf_runner,
    plain_vllm,
    run_vllm,
    shape_of,
    table,
    timed_rounds,
    vllm_options,
    workloads,
)
from transfer.bench.gpu import ARCHITECTURES

GPU_SHARE = 0.9  # vLLM's gpu_memory_utilization


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description="vLLM RAST vs vLLM L alone vs the HF engine")
    parser.add_argument("--pairs", nargs="+", default=["7B:0.5B", "32B:1.5B"], metavar="L:S")
    add_workload_args(parser, new_tokens=128, fixed_prompt=128, prompts=8, samples=8,
                      prompt_tokens=256, median=96, sigma=1.0, cap=1024, kv_rows=16,
                      repeats=2, paper_repeats=2)  # the HF engine's first round captures CUDA graphs
    parser.add_argument("--output", default="outputs/gpu_engines.json")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU, the same path")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--pair", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.batches, args.new_tokens, args.fixed_prompt_tokens = (
            ["smoke-vl:smoke-vs"], [1, 4], 8, 16)
        args.prompts, args.samples, args.prompt_tokens, args.median_tokens = 2, 4, 32, 8
        args.max_new_tokens, args.kv_rows, args.repeats, args.paper_repeats = 64, 4, 1, 1
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --smoke for the CPU path")
    if args.system:  # one system in this process
        result = run_system(args)
        Path(args.output).write_text(json.dumps(result))
        return None
    report = {"settings": vars(args), "pairs": {}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        report["pairs"][pair] = compare_pair(pair, args, argv)
        Path(args.output).write_text(json.dumps(report, indent=1))  # each pair as it ends
    print(f"wrote {args.output}")
    return report


def compare_pair(pair: str, args, argv: list[str]) -> dict:
    """The four systems of one pair, one worker process each; the table and the goals."""
    results, start = {}, time.perf_counter()
    for system in SYSTEMS:
        with tempfile.NamedTemporaryFile(suffix=".json") as part:
            command = [sys.executable, "-m", "transfer.bench.gpu_engines", *argv,
                       "--system", system, "--pair", pair, "--output", part.name]
            done = subprocess.run(command, check=False)
            outcome = Path(part.name).read_text() if done.returncode == 0 else ""
        results[system] = (json.loads(outcome) if outcome else
                           {"error": f"worker exited with {done.returncode} (output above)"})
        status = results[system].get("skipped") or results[system].get("error") or "done"
        print(f"{pair} {system}: {status}", flush=True)
    plan = workloads(args)
    best = {w.name: {s: results[s]["results"][w.name] for s in SYSTEMS if "results" in results[s]}
            for w in plan}
    large, small = (ARCHITECTURES[name] for name in pair.split(":"))
    bound = large.params / (large.params + 2 * small.params)  # weights read per token
    print(f"\n{pair}, {results[SYSTEMS[0]].get('device', '?')}, best of {args.repeats} rounds; "
          f"generated tokens/s (prefill included); bound of RAST / L alone (weight bytes) "
          f"{bound:.3f}")
    print(table(best, plan))
    goals = goal_lines(best, plan, bound)
    print("\n".join(goals))
    return {"systems": results, "bound": bound, "goals": goals,
            "seconds": time.perf_counter() - start}


def goal_lines(best: dict, plan: list, bound: float) -> list[str]:
    def ratio(workload, a, b):
        row = best[workload.name]
        return (row[a]["tokens_per_s"] / row[b]["tokens_per_s"]) if a in row and b in row else None

    batch64 = next((w for w in plan if w.name.startswith("batch 64 ")), plan[-2])
    checks = [(f"vLLM RAST / vLLM L alone at {batch64.name.split(' x ')[0]}",
               ratio(batch64, SYSTEMS[3], SYSTEMS[2]), 0.85),
              ("vLLM RAST / HF engine RAST on the paper-shaped workload",
               ratio(plan[-1], SYSTEMS[3], SYSTEMS[1]), 2.0)]
    return [f"goal: {what} >= {goal:g}: " + ("not measured" if value is None else
                                             f"{value:.2f} {'MET' if value >= goal else 'NOT met'}"
                                             + (f" ({value / bound:.2f} of the bound {bound:.3f})"
                                                if goal < 1 else ""))
            for what, value, goal in checks]


def run_system(args) -> dict:
    """One system of args.pair on every workload, in this process; {"skipped": why} if vLLM's
    share of the card cannot hold the weights and the budget."""
    import torch

    device = "cpu" if args.smoke else "cuda"
    dtype, dtype_bytes = (torch.float32, 4) if args.smoke else (torch.bfloat16, 2)
    large_name, small_name = args.pair.split(":")
    large, small = ARCHITECTURES[large_name], ARCHITECTURES[small_name]
    vocab = 98 if args.smoke else QWEN_TOKENIZER_LENGTH  # the tokenizer's ids
    block_size = 32 if args.smoke else 16  # vLLM's CPU attention takes multiples of 32
    budget = Budget.of_rows(args.kv_rows, args.prompt_tokens + args.max_new_tokens, large, small,
                            dtype_bytes, block_size)
    budget.check_fits(args)
    engine, kind = ("hf" if args.system.startswith("HF") else "vllm",
                    "RAST" if args.system.endswith("RAST") else "L alone")
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "system": args.system}
    if engine == "hf":
        runner = hf_system(large_name, small_name, kind, budget, device, dtype, vocab)
    else:
        weights = (large.params + (2 * small.params if kind == "RAST" else 0)) * dtype_bytes
        need_gb = (weights + budget.bytes) / 1e9 + 4.0  # + vLLM's activations (placement's)
        if device == "cuda" and need_gb > GPU_SHARE * torch.cuda.mem_get_info()[1] / 1e9:
            return {**report, "skipped": f"needs ~{need_gb:.0f} GB of the card's {GPU_SHARE:g} "
                                         f"share: a larger GPU or tensor_parallel_size 2"}
        runner = vllm_system(large, small, kind, budget, args, dtype_bytes)
    report["results"] = timed_rounds({args.system: runner}, workloads(args), args.repeats, vocab)
    report["results"] = {name: row[args.system] for name, row in report["results"].items()}
    report["paper_workload"] = shape_of(workloads(args)[-1].fresh(0, vocab), budget, args)
    return report


def hf_system(large_name, small_name, kind, budget, device, dtype, vocab):
    """The HF engine on random models built on the device (CUDA graphs on a GPU)."""
    from transfer.bench.gpu import random_qwen2
    from transfer.decode.engine import RastEngine

    large = random_qwen2(large_name, device, dtype, seed=0)
    if kind == "RAST":
        pair = [(random_qwen2(small_name, device, dtype, seed=1),
                 random_qwen2(small_name, device, dtype, seed=2))]
        engine = RastEngine(large, pair, [1.0], vocab_size=vocab)
    else:
        engine = RastEngine(large, vocab_size=vocab)
    return hf_runner(engine, kind, budget, stop_id=0)


def vllm_system(large: Architecture, small: Architecture, kind: str, budget: Budget, args,
                dtype_bytes: int):
    """vLLM on model directories of config.json + tokenizer (random weights: load_format
    dummy), KV exactly the budget's blocks."""
    from transfer.decode.vllm_engine import VllmDecoder
    from transfer.deltas import resolve_delta

    root = Path(tempfile.mkdtemp(prefix="rast-gpu-engines-"))
    paths = {name: write_config(root / name, architecture, args.smoke)
             for name, architecture in (("L", large), ("S", small), ("S_RL", small))}
    options = vllm_options(budget.vllm_blocks(kind), args.prompt_tokens + args.max_new_tokens,
                           dtype="float32" if dtype_bytes == 4 else "bfloat16",
                           block_size=budget.block_size,
                           enforce_eager=args.smoke, load_format="dummy")  # GPU: graphs
    if kind == "RAST":
        llm = VllmDecoder.load(paths["L"], (resolve_delta(paths["S_RL"], paths["S"], 1.0),),
                               options).engine.llm
    else:
        llm = plain_vllm(paths["L"], options)
    return lambda workload: run_vllm(llm, workload)


def write_config(directory: Path, architecture: Architecture, smoke: bool) -> str:
    """A model directory without weights: config.json and the tokenizer (Qwen2.5's; the tiny
    family's for --smoke)."""
    from train.models import qwen2_config

    if smoke:
        from train.tiny.tokenizer import build_tokenizer

        tokenizer = build_tokenizer()
        eos = tokenizer.eos_token_id
        build_tokenizer().save_pretrained(directory)
    else:
        from train.qwen_tokenizer import ENDOFTEXT_ID, qwen_tokenizer_dir, write_tokenizer

        eos = ENDOFTEXT_ID
        write_tokenizer(directory, qwen_tokenizer_dir() / "tokenizer.json")
    qwen2_config(architecture, bos_token_id=eos, eos_token_id=eos).save_pretrained(directory)
    return str(directory)


if __name__ == "__main__":
    main()
