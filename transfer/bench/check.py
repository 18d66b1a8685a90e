"""One GPU check (`make gpu-check`): what the CPU test suite cannot show, in one JSON.

On one H100/H200, no network, random bf16 weights at the real Qwen2.5 configs (speed and memory
do not depend on the values):
1. throughput: RAST engine vs L alone (transfer.bench.gpu.bench_pair), with the bandwidth bound,
   for CUDA-graph replay with the models overlapped on their own streams, one after the other
   (+serial), and with the small pair as two models instead of one stacked one (+unstacked)
   (--modes; the eager loop was measured once and is 5-9x slower), speculative RAST
   (+speculative; random weights, so its draft acceptance is not a trained pair's) and, from its
   round's parts timed at batch 1/8/16, the projected speed at the tiny family's acceptance
   rate (arithmetic), and graph replay's exactness;
2. precision: combined logits z_L + lam (z_RL - z_S) of bf16 models vs the same weights in fp32
   (max abs diff, top-1 agreement) over a few decode positions;
3. GRPO: a few TRL GRPO steps of a small random Qwen2 in bf16 on the GPU (skipped without trl);
4. memory: peak torch.cuda.max_memory_allocated of RAST decoding (from 1.) vs one training step
   (bf16 weights, AdamW, as a TRL recipe with dtype bfloat16) at each size where it fits.

    python -m transfer.bench.check                       # ~6 min on an H200; outputs/gpu_check.json
    python -m transfer.bench.check --smoke               # tiny configs on CPU, the same path, seconds
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from train.models import QWEN_TOKENIZER_LENGTH
from train.tiny.tokenizer import build_tokenizer
from transfer.bench.gpu import ARCHITECTURES, add_projection_args, bench_pair, random_qwen2
from transfer.decode.rast import combine_logits


def precision_check(large_size: str, small_size: str, device: str, positions: int = 8,
                    batch: int = 4, prompt_len: int = 64) -> dict:
    """One random triple in fp32, then the same weights cast to bf16 (as the engine loads them):
    combined logits at `positions` steps of the fp32 greedy continuation of random prompts."""
    models = [random_qwen2(size, device, torch.float32, seed)
              for size, seed in ((large_size, 0), (small_size, 1), (small_size, 2))]
    vocab = min(QWEN_TOKENIZER_LENGTH, ARCHITECTURES[small_size].embedding_rows,
                ARCHITECTURES[large_size].embedding_rows)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def combined(prefix):  # no cache: the check is about numbers, not speed
        return combine_logits(*(m(prefix).logits[:, -1] for m in models), lam=1.0,
                              shared_vocab=vocab)

    with torch.inference_mode():
        reference = []
        for _ in range(positions):
            reference.append(combined(ids))
            ids = torch.cat([ids, reference[-1].argmax(-1, keepdim=True)], dim=-1)
        for model in models:
            model.to(torch.bfloat16)  # in place: no second copy of the weights
        max_diff, agree = 0.0, 0
        for step, fp32 in enumerate(reference):
            bf16 = combined(ids[:, :prompt_len + step])
            finite = torch.isfinite(fp32)
            max_diff = max(max_diff, (fp32 - bf16)[finite].abs().max().item())
            agree += (fp32.argmax(-1) == bf16.argmax(-1)).sum().item()
    spread = torch.stack(reference)[torch.isfinite(torch.stack(reference))].std().item()
    return {"large": large_size, "small": small_size, "positions": positions * batch,
            "max_abs_diff": max_diff, "fp32_logit_std": spread,
            "top1_agreement": agree / (positions * batch)}


def train_step_peak(size: str, device: str, dtype: torch.dtype, batch: int, seq_len: int) -> dict:
    """Peak memory of one forward+backward+AdamW step of a random model (None if it OOMs)."""
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        model = random_qwen2(size, device, dtype, seed=0).train()
        model.gradient_checkpointing_enable()  # as the GRPO recipes
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        ids = torch.randint(0, ARCHITECTURES[size].embedding_rows, (batch, seq_len), device=device)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        if on_gpu:
            torch.cuda.synchronize()
        result = {"size": size, "fits": True, "seconds": time.perf_counter() - start}
    except torch.OutOfMemoryError:
        result = {"size": size, "fits": False}
    model = optimizer = None
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    if on_gpu:
        torch.cuda.empty_cache()
    return {**result, "batch": batch, "seq_len": seq_len, "dtype": str(dtype)}


def grpo_steps(device: str, steps: int, smoke: bool) -> dict:
    """A few TRL GRPO steps of a small random Qwen2 (char tokenizer) in bf16 on the device."""
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        return {"skipped": f"trl not importable ({err})"}
    from transformers import Qwen2Config, Qwen2ForCausalLM


    tokenizer = build_tokenizer()
    size = ({"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64} if smoke else
            {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1536})
    config = Qwen2Config(vocab_size=128, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **size)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    prompts = Dataset.from_dict({"prompt": [f"Q: {a}*{b}=\nA: " for a in range(10, 42)
                                            for b in (3, 7)]})

    def digit_share_reward(completions, **kwargs):  # varies within a group, unlike correctness
        return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]

    with tempfile.TemporaryDirectory() as output_dir:
        args = GRPOConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=16,
                          num_generations=4, max_completion_length=16 if smoke else 128,
                          learning_rate=1e-4, logging_steps=1, report_to="none", save_strategy="no",
                          bf16=not smoke, use_cpu=smoke, gradient_checkpointing=False,
                          disable_tqdm=True)
        trainer = GRPOTrainer(model=model, reward_funcs=[digit_share_reward], args=args,
                              train_dataset=prompts, processing_class=tokenizer)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    return {"steps": trainer.state.global_step, "seconds": seconds, "rewards": rewards,
            "parameters_changed": changed, "parameters": len(before),
            "dtype": str(next(trainer.model.parameters()).dtype)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="RAST GPU check: speed, precision, GRPO, memory")
    parser.add_argument("--pairs", nargs="+", default=["7B:0.5B", "32B:1.5B"], metavar="L:S")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--modes", nargs="+",
                        default=["cuda-graphs", "cuda-graphs+serial", "cuda-graphs+unstacked",
                                 "cuda-graphs+speculative"],
                        help="engine modes to time (see transfer.bench.gpu --modes)")
    add_projection_args(parser)
    parser.add_argument("--new_tokens", "--new-tokens", type=int, default=64)
    parser.add_argument("--precision_pair", "--precision-pair", default="7B:0.5B", metavar="L:S")
    parser.add_argument("--train_sizes", "--train-sizes", nargs="+", default=["1.5B", "7B"])
    parser.add_argument("--grpo_steps", "--grpo-steps", type=int, default=3)
    parser.add_argument("--output", default="outputs/gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU, in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        device, dtype = "cpu", torch.float32  # each mode's CPU twin: static runs without graphs
        modes = [mode.replace("cuda-graphs", "static") for mode in args.modes]
        args.pairs, args.batches, args.new_tokens = ["smoke-l:smoke-s"], [1, 2], 4
        args.projection_batches = [2]
        args.precision_pair, args.train_sizes, args.grpo_steps = "smoke-l:smoke-s", ["smoke-l"], 2
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --smoke for the CPU path")
    else:
        device, dtype, modes = "cuda", torch.bfloat16, args.modes
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "smoke": args.smoke, "dtype": str(dtype)}
    report["throughput"] = []
    for pair in args.pairs:
        large, small = pair.split(":")
        report["throughput"].append(bench_pair(
            large, small, args.batches, 128 if not args.smoke else 8, args.new_tokens, device,
            dtype, modes, projection_batches=args.projection_batches, acceptance=args.acceptance))
    report["precision"] = precision_check(*args.precision_pair.split(":"), device=device,
                                          positions=2 if args.smoke else 8)
    print(f"precision: {report['precision']}", flush=True)
    report["grpo"] = grpo_steps(device, args.grpo_steps, args.smoke)
    print(f"grpo: {report['grpo']}", flush=True)
    report["train_step_memory"] = [train_step_peak(size, device, dtype, batch=4, seq_len=1024 if
                                                   not args.smoke else 16)
                                   for size in args.train_sizes]
    print(f"train step memory: {report['train_step_memory']}", flush=True)
    report["rast_decode_peak_gib"] = {
        f"{p['large']}+{p['small']} batch {row['batch']} {mode}": row[mode]["rast"]["peak_gib"]
        for p in report["throughput"] for row in p["batches"] for mode in modes
        if "rast" in row[mode]}
    report["seconds"] = time.perf_counter() - start
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output} in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
