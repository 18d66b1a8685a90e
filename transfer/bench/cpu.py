"""CPU throughput benchmark: RAST in this engine vs the large model alone vs a naive RAST loop.

Same prompts (the tiny multiplication task), same batch, same length limit, sampled at
temperature 1 until eos, in one run:
  (a) the large model alone through this engine (lam = 0),
  (b) RAST through this engine (eager, DynamicCache: the CPU default; the small pair stacked
      into one model, transfer/decode/stacked_pair.py),
  (b2) the same with the small pair as two models (stack_small=False),
  (b') the same with compile=True (fixed-shape cache, torch.compile'd step; its first round pays
       the compile, reported apart, the best round is kept as for every mode),
  (c) a naive proxy-tuning-style loop: three HF models, a DynamicCache each, logits combined
      per step, every row computed until the whole batch is done (no compaction),
  (d) RAST with a LoRA RL model (a random rank-8 adapter on tiny-s's linear layers), stacked,
  (d2) the same LoRA pair in peft's mixed-adapter batch (stack_small=False).
Then speculative RAST against (a) and (b) at batch 1 and 8 (transfer/bench/speculative.py).
It prints tokens/s, the ratios to (a) and (c), forwards per decode step and batch rows computed
per generated token for each model (counted), and memory. Then the ATen ops one decode step of
each model unit dispatches (views excepted): on a GPU each is a kernel launch, and at batch <= 16
launches, not bytes, set a small model's step time, so this count says what a unit costs there.
Uses the tiny family when built (`make tiny-family`), else random models of the same sizes.

    make bench        # or: python -m transfer.bench.cpu --batch_size 8 --prompts 32
"""

import argparse
import copy
import resource
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache, Qwen2ForCausalLM

from train.errors import exit_on_user_error
from train.models import MODELS, load_model, load_tokenizer
from train.tiny.family import MEMBERS, qwen2_config
from train.tiny.task import problems, prompt
from train.tiny.tokenizer import build_tokenizer
from transfer.bench.ops import decode_step_ops
from transfer.decode.cached_model import left_pad
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.decode.loading import RL_ADAPTER
from transfer.decode.rast import combine_logits, sample_seed, sample_tokens

RAST, UNSTACKED = "(b) RAST, engine", "(b2) RAST, small pair unstacked"
COMPILED = "(b') RAST, compiled"
LORA, LORA_MIXED = "(d) RAST, LoRA pair stacked", "(d2) RAST, LoRA pair, peft mixed"
SHORT = {"large": "L", "small_base": "S", "small_rl": "S_RL", "small_base+rl": "S+S_RL"}


def load_tiny_models(small_rl: str | None) -> tuple[dict, str]:
    """The tiny family's tiny-s / tiny-l (random ones of the same sizes if not built), and an RL
    model: small_rl if given, else tiny-s with perturbed weights."""
    torch.manual_seed(0)
    if all(Path(MODELS[m].base_id).is_dir() for m in ("tiny-s", "tiny-l")):
        models, origin = {"small_base": load_model("tiny-s"), "large": load_model("tiny-l")}, "tiny family"
    else:
        models = {"small_base": Qwen2ForCausalLM(qwen2_config(MEMBERS["tiny-s"])),
                  "large": Qwen2ForCausalLM(qwen2_config(MEMBERS["tiny-l"]))}
        origin = "random weights at the tiny family's sizes (tiny family not built)"
    if small_rl is not None:
        models["small_rl"] = load_model(small_rl)
        return models, origin + f", RL model {small_rl}"
    models["small_rl"] = copy.deepcopy(models["small_base"])
    with torch.no_grad():
        for param in models["small_rl"].parameters():
            param.add_(0.05 * param.std() * torch.randn_like(param))
    return models, origin + ", RL model = perturbed tiny-s"


def random_lora(model):
    """A copy of `model` with a random rank-8 LoRA adapter (named RL_ADAPTER, B != 0) on every
    linear layer: a stand-in for a LoRA GRPO checkpoint."""
    torch.manual_seed(0)
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), config, adapter_name=RL_ADAPTER).eval()


@torch.inference_mode()
def naive_rast(models: list, prompt_ids, seeds, params, stop_ids, lam, shared_vocab, pad_id):
    """Proxy-tuning's loop: each model with its own DynamicCache, combined logits per step, all
    rows forwarded every step until every row is done. Returns (token ids per row, forward rows)."""
    input_ids, attention_mask = left_pad(prompt_ids, pad_id)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    caches = [DynamicCache(config=model.config) for model in models]
    logits = [model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, use_cache=True).logits[:, -1]
              for model, cache in zip(models, caches)]
    next_position = positions[:, -1:] + 1
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    outputs, done, forward_rows = [[] for _ in prompt_ids], [False] * len(prompt_ids), 0
    for step in range(params.max_new_tokens):
        combined = combine_logits(*logits, lam=lam, shared_vocab=shared_vocab)
        tokens = sample_tokens(combined, generators, temperature=params.temperature)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                outputs[row].append(token)
                done[row] = token in stop_ids
        if all(done) or step + 1 == params.max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        logits = [model(input_ids=tokens[:, None], attention_mask=attention_mask,
                        position_ids=next_position, past_key_values=cache,
                        use_cache=True).logits[:, -1] for model, cache in zip(models, caches)]
        next_position = next_position + 1
        forward_rows += len(prompt_ids)
    return outputs, forward_rows


def run_engine(engine, prompt_ids, seeds, params, batch_size):
    """Token ids per prompt, and decode steps that needed a forward (a batch's longest row - 1)."""
    outputs, steps = [], 0
    for start in range(0, len(prompt_ids), batch_size):
        rows = engine.decode(prompt_ids[start:start + batch_size],
                             [[s] for s in seeds[start:start + batch_size]], params)
        outputs += [ids for ids, _ in rows]
        steps += max(len(ids) for ids, _ in rows) - 1
    return outputs, steps


def run_naive(models, prompt_ids, seeds, params, batch_size, stop_ids, shared_vocab):
    outputs, rows = [], 0
    for start in range(0, len(prompt_ids), batch_size):
        batch_out, batch_rows = naive_rast(models, prompt_ids[start:start + batch_size],
                                           seeds[start:start + batch_size], params, set(stop_ids),
                                           1.0, shared_vocab, pad_id=0)
        outputs, rows = outputs + batch_out, rows + batch_rows
    return outputs, rows


def weights_mb(models) -> float:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CPU benchmark of the RAST engine")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed rounds")
    parser.add_argument("--small_rl", "--small-rl",
                        help="an RL checkpoint of tiny-s (default: perturbed tiny-s)")
    parser.add_argument("--speculative_batches", "--speculative-batches", type=int, nargs="*",
                        default=[1, 8],
                        help="batch sizes of the speculative RAST comparison (none: skip it)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be >= 2: the first round pays one-time costs (compile)")
    torch.set_num_threads(1)
    with exit_on_user_error():
        models, origin = load_tiny_models(args.small_rl)
    tokenizer = build_tokenizer()
    if Path(MODELS["tiny-l"].base_id).is_dir():
        tokenizer = load_tokenizer("tiny-l")
    prompt_texts = [prompt(p) for p in problems("test")["problem"][:args.prompts]]
    prompt_ids = tokenizer(prompt_texts)["input_ids"]
    seeds = [sample_seed(0, text, 0) for text in prompt_texts]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
    ordered = [models["large"], models["small_base"], models["small_rl"]]
    large, pair = models["large"], [(models["small_base"], models["small_rl"])]
    engines = {"(a) L alone, engine": RastEngine(large, tokenizer=tokenizer),
               RAST: RastEngine(large, pair, [1.0], tokenizer=tokenizer),
               UNSTACKED: RastEngine(large, pair, [1.0], tokenizer=tokenizer, stack_small=False),
               COMPILED: RastEngine(large, pair, [1.0], tokenizer=tokenizer, compile=True),
               **{name: RastEngine(large, [(random_lora(models["small_base"]), RL_ADAPTER)],
                                   [1.0], tokenizer=tokenizer, stack_small=stack)
                  for name, stack in ((LORA, True), (LORA_MIXED, False))}}
    stop_ids = engines[RAST].default_stop_ids

    best, first, results, steps = {}, {}, {}, {name: 0 for name in engines}
    for _ in range(args.repeats):  # interleaved rounds: background load hits every mode alike
        for name, engine in engines.items():
            start = time.perf_counter()
            results[name], round_steps = run_engine(engine, prompt_ids, seeds, params, args.batch_size)
            first.setdefault(name, time.perf_counter() - start)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            steps[name] += round_steps
        start = time.perf_counter()
        results["(c) RAST, naive loop"], naive_rows = run_naive(
            ordered, prompt_ids, seeds, params, args.batch_size, stop_ids, len(tokenizer))
        best["(c) RAST, naive loop"] = min(best.get("(c) RAST, naive loop", float("inf")),
                                           time.perf_counter() - start)

    print(f"\nmodels: {origin}; {args.prompts} prompts, batch {args.batch_size}, "
          f"temperature 1 until eos or {args.max_new_tokens} tokens, best of {args.repeats}\n")
    print(f"{'mode':33} {'tokens':>7} {'tok/s':>8} {'forwards/step per model':>26} "
          f"{'rows/token':>11} {'weights MB':>11}")
    tokens_per_s = {}
    for name, outputs in results.items():
        tokens = sum(len(ids) for ids in outputs)
        tokens_per_s[name] = tokens / best[name]
        if name in engines:
            units = engines[name].models()
            counts = engines[name].forward_counts()  # counted inside the engine
            per_step = " ".join(f"{SHORT[unit]}:{c['decode_calls'] / steps[name]:.2f}"
                                for unit, c in counts.items())
            rows = (sum(c["decode_rows"] for c in counts.values()) / sum(u.copies for u in units)
                    / (args.repeats * tokens))  # per model: a stacked pair is two
            weights = weights_mb([unit.model for unit in units])
        else:
            per_step, rows = "L:1.00 S:1.00 S_RL:1.00", naive_rows / tokens
            weights = weights_mb(ordered)
        print(f"{name:33} {tokens:7d} {tokens_per_s[name]:8.0f} {per_step:>26} {rows:11.3f} "
              f"{weights:11.2f}")
    alone, rast, unstacked, compiled, naive = (tokens_per_s[n] for n in (
        "(a) L alone, engine", RAST, UNSTACKED, COMPILED, "(c) RAST, naive loop"))
    naive_tokens = results["(c) RAST, naive loop"]
    print(f"\nRAST / L alone (b/a): {rast / alone:.2f}    RAST engine / naive loop (b/c): "
          f"{rast / naive:.2f}  (goal >= 1.5)    engine and naive loop sampled identical tokens: "
          f"{results[RAST] == naive_tokens}")
    print(f"stacked / unstacked small pair (b/b2): {rast / unstacked:.2f}    unstacked engine / "
          f"naive loop (b2/c): {unstacked / naive:.2f}    identical tokens: "
          f"{results[UNSTACKED] == naive_tokens}")
    print(f"LoRA pair stacked / in peft's mixed batch (d/d2): "
          f"{tokens_per_s[LORA] / tokens_per_s[LORA_MIXED]:.2f}    identical tokens: "
          f"{results[LORA] == results[LORA_MIXED]}")
    compile_s = first[COMPILED] - best[COMPILED]
    print(f"compiled engine / naive loop (b'/c): {compiled / naive:.2f} after {compile_s:.0f} s of "
          f"compiling in the first round (once per process; it pays after ~"
          f"{compile_s / (1 / naive - 1 / compiled):.0f} tokens); identical tokens: "
          f"{results[COMPILED] == naive_tokens}")
    batch_ids = prompt_ids[:args.batch_size]
    ops = {name: " + ".join(f"{SHORT[unit.name]} {decode_step_ops(unit, batch_ids)}"
                            for unit in engines[name].models())
           for name in ("(a) L alone, engine", RAST, UNSTACKED, LORA, LORA_MIXED)}
    print(f"ATen ops per decode step at batch {len(batch_ids)} (a GPU kernel launch each): "
          + "; ".join(f"{name.split()[0]} {units}" for name, units in ops.items()))
    if args.speculative_batches:
        from transfer.bench.speculative import compare

        compare(models, tokenizer, prompt_ids, seeds, params, args.speculative_batches,
                args.repeats)
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(all phases; the CPU models are a few MB, so RSS is mostly torch itself)")


if __name__ == "__main__":
    main()
