"""GPU benchmark: RAST vs the large model alone at real Qwen2.5 sizes, against the bandwidth bound.

Random bf16 weights at the real Qwen2.5 configs (decode speed does not depend on the values),
decoded on token ids (no tokenizer needed) for a fixed number of tokens at batch 1/8/32. Decode is
memory-bound, so RAST / L-alone throughput is at best bytes(L) / (bytes(L) + 2 bytes(S))
(REFERENCE.md section 5); the JSON records measured ratio, bound, and their quotient.

    python -m transfer.gpu_bench --pairs 7B:0.5B 14B:1.5B --output outputs/gpu_bench.json
    python -m transfer.gpu_bench --smoke     # tiny configs on CPU, end to end in seconds
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from transfer.engine import RastEngine, SamplingParams

# hidden, layers, attention heads, key/value heads, ffn, embedding rows, tied embeddings
QWEN25 = {
    "0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 11008, 151936, True),
    "7B": (3584, 28, 28, 4, 18944, 152064, False),
    "14B": (5120, 48, 40, 8, 13824, 152064, False),
    "32B": (5120, 64, 40, 8, 27648, 152064, False),
    # --smoke: same shapes of problem, CPU-sized
    "smoke-s": (32, 2, 4, 2, 64, 128, True),
    "smoke-l": (64, 3, 4, 2, 128, 160, False),
}
QWEN_TOKENIZER_LENGTH = 151665


def random_qwen2(size: str, device: str, dtype: torch.dtype, seed: int) -> Qwen2ForCausalLM:
    hidden, layers, heads, kv_heads, ffn, rows, tied = QWEN25[size]
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn, vocab_size=rows,
                         tie_word_embeddings=tied, max_position_embeddings=32768, rope_theta=1e6)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the device: no host copy of 30 GB
            return Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed_decode(engine, batch: int, prompt_len: int, params, vocab: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=generator).tolist()
    seeds = [[row] for row in range(batch)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rows = engine.decode(prompts, seeds, params, stop_ids=[])  # fixed length: no stop ids
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids, _ in rows)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak}


def bench_pair(large_size, small_size, batches, prompt_len, new_tokens, device, dtype) -> dict:
    large = random_qwen2(large_size, device, dtype, seed=0)
    small_base = random_qwen2(small_size, device, dtype, seed=1)
    small_rl = random_qwen2(small_size, device, dtype, seed=2)
    vocab = min(QWEN_TOKENIZER_LENGTH, QWEN25[small_size][5])
    engines = {"large_alone": RastEngine(large, lam=0.0, vocab_size=vocab),
               "rast": RastEngine(large, small_base, small_rl, lam=1.0, vocab_size=vocab)}
    bound = weight_bytes(large) / (weight_bytes(large) + 2 * weight_bytes(small_base))
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=new_tokens)
    results = []
    for batch in batches:
        row = {"batch": batch}
        for name, engine in engines.items():
            timed_decode(engine, batch, prompt_len, SamplingParams(max_new_tokens=4), vocab, device)
            row[name] = timed_decode(engine, batch, prompt_len, params, vocab, device)
        row["ratio"] = row["rast"]["tokens_per_s"] / row["large_alone"]["tokens_per_s"]
        row["ratio_over_bound"] = row["ratio"] / bound
        print(f"{large_size}+{small_size} batch {batch:3d}: L alone "
              f"{row['large_alone']['tokens_per_s']:8.1f} tok/s, RAST {row['rast']['tokens_per_s']:8.1f}"
              f" tok/s, ratio {row['ratio']:.3f}, bound {bound:.3f}, "
              f"ratio/bound {row['ratio_over_bound']:.3f}", flush=True)
        results.append(row)
    del engines, large, small_base, small_rl
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"large": large_size, "small": small_size, "bound": bound, "batches": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="RAST vs L-alone decode throughput on a GPU")
    parser.add_argument("--pairs", nargs="+", default=["7B:0.5B", "14B:1.5B"], metavar="L:S")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--output", default="outputs/gpu_bench.json")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU, in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        device, dtype = "cpu", torch.float32
        args.pairs, args.batches, args.prompt_len, args.new_tokens = ["smoke-l:smoke-s"], [1, 2], 8, 4
    else:
        device, dtype = "cuda", torch.bfloat16
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype), "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "pairs": []}
    for pair in args.pairs:
        large_size, small_size = pair.split(":")
        report["pairs"].append(bench_pair(large_size, small_size, args.batches, args.prompt_len,
                                          args.new_tokens, device, dtype))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
