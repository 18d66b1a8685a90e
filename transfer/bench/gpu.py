"""GPU benchmark: RAST vs the large model alone at real Qwen2.5 sizes, against the bandwidth bound.

Random bf16 weights at the real Qwen2.5 configs (decode speed does not depend on the values),
decoded on token ids (no tokenizer needed) for a fixed number of tokens at batch 1/8/32, with
the engine's eager DynamicCache loop and with its CUDA-graph replay (transfer/decode/static_cache.py).
Decode is memory-bound, so RAST / L-alone throughput is at best bytes(L) / (bytes(L) + 2 bytes(S))
(weights read per token); the JSON records measured ratio, bound, and their quotient per mode,
and whether graph replay gives the tokens and logits of the same loop run eagerly.

    python -m transfer.bench.gpu --pairs 7B:0.5B 14B:1.5B --output outputs/gpu_bench.json
    python -m transfer.bench.gpu --smoke     # tiny configs on CPU, end to end in seconds
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from train.models import MODELS, QWEN_TOKENIZER_LENGTH, Architecture, qwen2_config
from transfer.decode.cached_model import CachedModel
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.decode.rast import combine_logits, sample_tokens
from transfer.decode.stacked_pair import stack_pair

# The Qwen2.5 shapes of the registry, plus CPU-sized stand-ins for --smoke (same kind of pair:
# the large one has more embedding rows and untied embeddings, like 7B-32B against 0.5B/1.5B).
ARCHITECTURES = {name: info.architecture for name, info in MODELS.items() if info.architecture}
ARCHITECTURES["smoke-s"] = Architecture(32, 2, 4, 2, 64, 128, True)
ARCHITECTURES["smoke-l"] = Architecture(64, 3, 4, 2, 128, 160, False)
# transfer.bench.gpu_engines --smoke runs vLLM on CPU: its attention takes heads of 32 and up
# (64 and 32 here), and the tiny family's 98-token tokenizer needs at least 98 rows.
ARCHITECTURES["smoke-vl"] = Architecture(128, 2, 2, 1, 256, 128, False)
ARCHITECTURES["smoke-vs"] = Architecture(64, 2, 2, 1, 128, 128, True)


def random_qwen2(size: str, device: str, dtype: torch.dtype, seed: int) -> Qwen2ForCausalLM:
    config = qwen2_config(ARCHITECTURES[size])
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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_decode(engine, batch: int, prompt_len: int, params, vocab: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=generator).tolist()
    seeds = [[row] for row in range(batch)]
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rows = engine.decode(prompts, seeds, params, stop_ids=[])  # fixed length: no stop ids
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids, _ in rows)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak}


def device_modes(device: str) -> tuple[str, ...]:
    """The engine's cache modes that run on this device; the last two run the same kernels."""
    return ("dynamic", "static", "cuda-graphs") if device.startswith("cuda") else ("dynamic",
                                                                                  "static")


def bench_pair(large_size, small_size, batches, prompt_len, new_tokens, device, dtype,
               modes=("dynamic", "cuda-graphs"), repeats=2, breakdown_batches=(),
               projection_batches=(), acceptance: float = 0.986) -> dict:
    """Throughput of L alone and RAST per KV-cache mode (engine `cache=`) and batch: `repeats`
    rounds alternating the two, best round kept (the first round includes graph captures; its
    numbers are kept too). Then an exactness check of the device's last two modes on the same
    weights, and a per-part timing of one decode step at `breakdown_batches`, and speculative
    RAST's round parts at `projection_batches` (see speculative_projection)."""
    large = random_qwen2(large_size, device, dtype, seed=0)
    small_base = random_qwen2(small_size, device, dtype, seed=1)
    small_rl = random_qwen2(small_size, device, dtype, seed=2)
    vocab = min(QWEN_TOKENIZER_LENGTH, ARCHITECTURES[small_size].embedding_rows)
    bound = weight_bytes(large) / (weight_bytes(large) + 2 * weight_bytes(small_base))
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=new_tokens)
    results = []
    for batch in batches:
        row = {"batch": batch}
        for mode in modes:  # an engine cache mode, with flags: +compile, +serial, +unstacked
            cache, *flags = mode.split("+")
            options = {"cache": cache, "compile": "compile" in flags,
                       "overlap": "serial" not in flags, "stack_small": "unstacked" not in flags}
            try:  # one failing mode must not cost the numbers of the others
                engines = {"large_alone": RastEngine(large, vocab_size=vocab, **options),
                           "rast": RastEngine(large, [(small_base, small_rl)], [1.0],
                                              vocab_size=vocab, **options,
                                              speculative="speculative" in flags)}
                result = {}
                for _ in range(repeats):  # alternate: clock or load drift hits both alike
                    for name, engine in engines.items():
                        timed = timed_decode(engine, batch, prompt_len, params, vocab, device)
                        best = result.setdefault(name, {**timed, "first_round": timed})
                        if timed["tokens_per_s"] > best["tokens_per_s"]:
                            result[name] = {**timed, "first_round": best["first_round"]}
                result["ratio"] = result["rast"]["tokens_per_s"] / result["large_alone"]["tokens_per_s"]
                if "speculative" in flags:  # random weights: the draft rarely matches
                    spec = engines["rast"].speculative
                    result["acceptance"], result["tokens_per_round"] = (
                        spec.acceptance_rate(), spec.mean_emitted())
                result["ratio_over_bound"] = result["ratio"] / bound
                print(f"{large_size}+{small_size} batch {batch:3d} {mode:11}: L alone "
                      f"{result['large_alone']['tokens_per_s']:8.1f} tok/s, RAST "
                      f"{result['rast']['tokens_per_s']:8.1f} tok/s, ratio {result['ratio']:.3f},"
                      f" bound {bound:.3f}, ratio/bound {result['ratio_over_bound']:.3f} (first "
                      f"round: L {result['large_alone']['first_round']['tokens_per_s']:.1f}, RAST "
                      f"{result['rast']['first_round']['tokens_per_s']:.1f})", flush=True)
            except Exception as err:  # noqa: BLE001 - recorded in the report, run goes on
                result = {"error": f"{type(err).__name__}: {err}"}
                print(f"{large_size}+{small_size} batch {batch} {mode}: FAILED {result['error']}",
                      flush=True)
            row[mode] = result
        results.append(row)
    reference, mode = device_modes(device)[-2:]
    exactness = modes_agree(large, small_base, small_rl, vocab, reference, mode)
    print(f"{large_size}+{small_size} {mode} vs {reference}: {exactness}", flush=True)
    parts = {"large": (large, 1), "small": (small_base, 1),
             "small pair stacked": (stack_pair(small_base, small_rl), 2)}
    breakdown = [step_breakdown(parts, batch, prompt_len, vocab, device_modes(device), device)
                 for batch in breakdown_batches]
    projection = [speculative_projection(large, parts["small pair stacked"][0], batch,
                                         prompt_len, vocab, device_modes(device)[-1], device,
                                         acceptance)
                  for batch in (projection_batches or ())]
    del parts
    del large, small_base, small_rl
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"large": large_size, "small": small_size, "bound": bound, "batches": results,
            "exactness": exactness, "step_breakdown": breakdown,
            "speculative_projection": projection}


@torch.inference_mode()  # as the engine decodes: no autograd bookkeeping in the timings
def step_breakdown(models: dict, batch: int, prompt_len: int, vocab: int, modes, device: str,
                   steps: int = 20) -> dict:
    """Milliseconds per decode step of each part alone: one model's step (models: name ->
    (model, copies of the batch it runs, 2 for a stacked pair)) in each cache mode
    (host_ms: Python time to launch it; step_ms: wall time with the device drained, the device
    time when launching is faster), and combine + top-p sampling + reading the tokens back.
    Where the engine's step time goes, from the same weights."""

    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompts)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)  # on device: no sync per step
    report = {"batch": batch}
    for mode in modes:
        for name, (model, copies) in models.items():
            try:
                cached = CachedModel(name, model, copies=copies, cache=mode)
                cached.prefill(prompts, mask, max_new_tokens=2 * steps + 4)
                _sync(device)
                start = time.perf_counter()
                cached.decode(tokens)  # cuda-graphs: builds the buffers and captures the graph
                _sync(device)
                first = time.perf_counter() - start
                host = 0.0
                start = time.perf_counter()
                for _ in range(steps):
                    begin = time.perf_counter()
                    cached.decode(tokens)
                    host += time.perf_counter() - begin
                _sync(device)
                wall = time.perf_counter() - start
                report[f"{name} {mode}"] = {"first_step_ms": 1e3 * first,
                                            "host_ms": 1e3 * host / steps,
                                            "step_ms": 1e3 * wall / steps}
            except Exception as err:  # noqa: BLE001 - recorded in the report
                report[f"{name} {mode}"] = {"error": f"{type(err).__name__}: {err}"}
    rows = models["large"][0].config.vocab_size
    dtype = next(models["large"][0].parameters()).dtype
    logits = [torch.randn(batch, rows, device=device, dtype=dtype) for _ in range(3)]
    generators = [torch.Generator(device).manual_seed(row) for row in range(batch)]
    parts = {"combine": lambda: combine_logits(*logits, lam=1.0, shared_vocab=vocab),
             "combine+sample": lambda: sample_tokens(
                 combine_logits(*logits, lam=1.0, shared_vocab=vocab), generators, top_p=0.95),
             "combine+sample+tolist": lambda: sample_tokens(
                 combine_logits(*logits, lam=1.0, shared_vocab=vocab), generators,
                 top_p=0.95).tolist()}
    for name, part in parts.items():
        part()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            part()
        _sync(device)
        report[name + "_ms"] = 1e3 * (time.perf_counter() - start) / steps
    print(f"step breakdown: {report}", flush=True)
    return report


@torch.inference_mode()
def speculative_projection(large, stacked_pair, batch: int, prompt_len: int, vocab: int,
                           mode: str, device: str, acceptance: float, steps: int = 10) -> dict:
    """Speculative RAST's round, timed part by part on these weights: a draft step of the stacked
    pair, L's verify forward over 1..9 positions (a graph per width with cuda-graphs), and the
    accept rule over them; then ARITHMETIC, not a measurement: tokens/s of a round of k drafts
    at a draft acceptance rate `acceptance` (random weights cannot show a trained draft's; pass
    the tiny family's, from `make bench`), (1 - a^(k+1)) / (1 - a) tokens per (k + 1) draft
    steps + one verify + accept, for the best k, against L alone's step."""
    from transfer.decode.speculative import Sampler

    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompts)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    report = {"batch": batch, "mode": mode, "acceptance": acceptance, "verify_ms": {}}

    def timed(call) -> float:
        call()  # first call: builds buffers and captures a graph
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            call()
        _sync(device)
        return 1e3 * (time.perf_counter() - start) / steps

    try:
        draft = CachedModel("small_base+rl", stacked_pair, copies=2, cache=mode)
        draft.prefill(prompts, mask, max_new_tokens=4 * steps + 8)
        report["draft_step_ms"] = timed(lambda: draft.decode(tokens))
        verifier = CachedModel("large", large, cache=mode)
        verifier.prefill(prompts, mask, max_new_tokens=40 * steps + 64)
        report["large_step_ms"] = timed(lambda: verifier.decode(tokens))
        keep = torch.zeros(batch, dtype=torch.long)  # every verify rolled back: same columns
        for width in range(1, 10):
            fed = torch.zeros(batch, width, dtype=torch.long, device=device)
            report["verify_ms"][width] = timed(
                lambda fed=fed, width=width: (verifier.verify(fed), verifier.rollback(width, keep)))
    except Exception as err:  # noqa: BLE001 - recorded in the report
        return {**report, "error": f"{type(err).__name__}: {err}"}
    rows = large.config.vocab_size
    sampler = Sampler(SamplingParams(top_p=0.95), vocab, uniforms=None)
    report["accept_ms"] = {}
    for width in (1, 5, 9):
        target = torch.randn(batch, width, rows, device=device)
        q = torch.softmax(torch.randn(batch, width, vocab, device=device), -1)
        drafts = torch.zeros(batch, width, dtype=torch.long, device=device)
        u = torch.rand(batch, width, 3, device=device)
        report["accept_ms"][width] = timed(lambda t=target, q=q, d=drafts, u=u: (
            sampler.accept(t, d, q, u)[0].tolist()))

    def per_token_ms(k: int) -> float:
        accept = report["accept_ms"][min((1, 5, 9), key=lambda w: abs(w - (k + 1)))]
        tokens_per_round = (1 - acceptance ** (k + 1)) / (1 - acceptance)
        return ((k + 1) * report["draft_step_ms"] + report["verify_ms"][k + 1] + accept
                ) / tokens_per_round

    best = min(range(9), key=per_token_ms)
    alone = report["large_step_ms"] + report["accept_ms"][1]  # L's step + sampling, roughly
    report.update(best_k=best, projected_ms_per_token=per_token_ms(best),
                  projected_over_large_alone=alone / per_token_ms(best))
    print(f"speculative projection (arithmetic from measured parts): {report}", flush=True)
    return report


def modes_agree(large, small_base, small_rl, vocab, reference: str, mode: str) -> dict:
    """Sampled RAST (a seed per row) in two cache modes on 8 left-padded prompts whose rows stop
    at scattered steps (every 40th id stops), so cache growth and compaction rebuilds happen
    mid-batch: the tokens must agree and the combined logits should too (bit for bit between
    static and cuda-graphs, which run the same kernels)."""
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, vocab, (length,), generator=generator).tolist()
               for length in (5, 17, 30, 31, 40, 64, 9, 12)]
    params = SamplingParams(temperature=1.0, max_new_tokens=80)  # 64 + 80 columns: grows past 128
    stop_ids = list(range(0, vocab, 40))
    seeds = [[row] for row in range(len(prompts))]
    runs = {}
    try:
        for name in (reference, mode):
            engine = RastEngine(large, [(small_base, small_rl)], [1.0], vocab_size=vocab,
                                cache=name)
            steps = []
            rows = engine.decode(prompts, seeds, params, stop_ids, on_step=lambda active, z,
                                 steps=steps: steps.append((active.clone(), z.clone())))
            runs[name] = rows, steps
    except Exception as err:  # noqa: BLE001 - recorded in the report
        return {"error": f"{type(err).__name__}: {err}"}
    (rows_a, steps_a), (rows_b, steps_b) = runs[reference], runs[mode]
    same_rows = [a == b for a, b in zip(rows_a, rows_b)]
    max_diff = 0.0
    for (active_a, z_a), (active_b, z_b) in zip(steps_a, steps_b):
        if torch.equal(active_a, active_b):  # while the same rows are decoding
            finite = torch.isfinite(z_a)
            max_diff = max(max_diff, (z_a - z_b)[finite].abs().max().item())
    return {"rows_identical": sum(same_rows), "rows": len(same_rows),
            "lengths": [len(ids) for ids, _ in rows_b], "max_abs_logit_diff": max_diff}


def add_projection_args(parser: argparse.ArgumentParser) -> None:
    """The flags of speculative_projection, shared with transfer.bench.check."""
    parser.add_argument("--projection_batches", "--projection-batches", type=int, nargs="*",
                        default=[1, 8, 16],
                        help="batches at which to time speculative RAST's round parts")
    parser.add_argument("--acceptance", type=float, default=0.986,
                        help="draft acceptance rate for the speculative projection (make bench's)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="RAST vs L-alone decode throughput on a GPU")
    parser.add_argument("--pairs", nargs="+", default=["7B:0.5B", "14B:1.5B"], metavar="L:S")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt_len", "--prompt-len", type=int, default=128)
    parser.add_argument("--new_tokens", "--new-tokens", type=int, default=128)
    parser.add_argument("--output", default="outputs/gpu_bench.json")
    parser.add_argument("--modes", nargs="+",
                        default=["dynamic", "cuda-graphs", "cuda-graphs+speculative"],
                        help="engine cache modes to time; append +compile to compile the step, "
                             "+serial to run the models' graphs one after the other, +unstacked "
                             "to run the small pair as two models, +speculative for speculative "
                             "RAST")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per mode, best kept")
    parser.add_argument("--breakdown_batches", "--breakdown-batches", type=int, nargs="*", default=[1, 16],
                        help="batches at which to time each part of one decode step")
    add_projection_args(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU, in seconds")
    args = parser.parse_args(argv)
    device, dtype = "cuda", torch.bfloat16
    if args.smoke:
        device, dtype = "cpu", torch.float32  # each mode's CPU twin: static runs without graphs
        args.modes = [mode.replace("cuda-graphs", "static") for mode in args.modes]
        args.pairs, args.batches, args.prompt_len, args.new_tokens = ["smoke-l:smoke-s"], [1, 2], 8, 4
        args.breakdown_batches, args.projection_batches = [2], [2]
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype), "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "pairs": []}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        large_size, small_size = pair.split(":")
        report["pairs"].append(bench_pair(large_size, small_size, args.batches, args.prompt_len,
                                          args.new_tokens, device, dtype, args.modes,
                                          args.repeats, args.breakdown_batches,
                                          args.projection_batches, args.acceptance))
        Path(args.output).write_text(json.dumps(report, indent=2))  # each pair as it ends
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
