"""The HF engine and vLLM side by side (`make bench`'s engine comparison, issue 23).

In one process, on the same models, in interleaved rounds (the best kept; the paper-shaped
workload in the first --paper_repeats of them), generated tokens/s of
  HF engine, L alone   transfer.decode.engine.RastEngine on the large model alone
  HF engine, RAST      the same with the small pair (stacked, eager)
  vLLM, L alone        plain vLLM on L (Qwen2ForCausalLM, the engine arguments of
                       transfer.decode.vllm_engine without RAST): what one runs without RAST
  vLLM, RAST           transfer.decode.vllm_engine's composite model (L + the pair in one model)
on two workloads:
  (1) fixed batches (1, 16, 64 prompts): every row decodes exactly --new_tokens tokens (a batch
      under 4 rows longer: 4 x --new_tokens tokens in all);
  (2) one shaped like the paper's evaluation: --prompts prompts x --samples samples whose
      completion lengths are drawn from a lognormal capped at --max_new_tokens (a few reach the
      cap, most stop early), under ONE KV memory budget: --kv_rows rows of RAST's worst case
      (longest prompt + cap) in bytes. The HF engine sizes its batch for that worst case within
      the budget and runs each batch until its longest row ends (finished rows leave, none
      join); vLLM gets the same bytes as paged blocks (num_gpu_blocks_override), admits
      requests while blocks last, refills as sequences finish and preempts when it must.

Fairness. Every system decodes the same prompt ids with a seed per sample, temperature 1 and
top-p 0.95, and produces exactly the drawn number of tokens: vLLM stops each request at its
max_tokens (eos ignored, no stop ids); the HF engine has one max_new_tokens per call, so its
on_step hook makes row r sample the stop id at exactly its drawn length (and never before),
which its ordinary stop check then ends (`forced_lengths`). The lengths are the same for every
system and round; the prompts are new in every round (so vLLM's prefix cache cannot reuse an
earlier round's prompts; the samples of one prompt share it, as the HF engine shares one
prefill). Neither engine turns ids into text. vLLM's CPU worker binds its model to one core
(the other is left to its scheduler and this process), so the HF engine runs its model on one
torch thread; vLLM still overlaps its scheduling and output handling on the second core, the
HF engine does all of it on one. An idle vLLM engine uses ~1% of a core while the HF engine
runs (measured), so all four live side by side.

Models (random float32 weights, built into a temporary directory): L with heads of 128 (Qwen2.5
7B-32B's), 4 layers, hidden 512, untied, 1088 rows; S / S_RL (S perturbed) with heads of 64, 2
layers, hidden 128, tied, 1024 rows; the tiny family's 98-token tokenizer. Sized so that the
pair's share of the work per token is that of Qwen2.5-32B + 1.5B: the bound RAST / L alone =
MACs(L) / (MACs(L) + 2 MACs(S)) is 0.93 (32B + 1.5B by weight bytes: 0.914). Qwen's 152K-row
heads are left out on purpose: at a CPU-sized hidden width three such heads would be nearly all
of a step, and the ratio would measure LM heads, not RAST.

On these CPUs the HF engine may stay the faster one: these models are small, each step is
mostly per-call overhead, and vLLM's per-step scheduling costs as much as a toy model's
forward. What vLLM brings (paged memory by actual length, refilling, preemption, tensor
parallelism, CUDA graphs) pays at the paper's scale on GPUs: `make gpu-bench`
(transfer.bench.gpu_engines) measures that.

    make bench        # or: python -m transfer.bench.engines [--batches 1 16 64] [--repeats 2]
"""

import argparse
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from train.models import Architecture, qwen2_config

SYSTEMS = ("HF engine, L alone", "HF engine, RAST", "vLLM, L alone", "vLLM, RAST")
LARGE = Architecture(hidden=512, layers=4, heads=4, kv_heads=2, ffn=1536, embedding_rows=1088,
                     tied_embeddings=False)
SMALL = Architecture(hidden=128, layers=2, heads=2, kv_heads=1, ffn=384, embedding_rows=1024,
                     tied_embeddings=True)
TOP_P = 0.95  # the paper's; temperature 1
BLOCK_SIZE = 32  # vLLM's KV block (tokens): its CPU attention takes multiples of 32; the default
# 128 would waste most of a short row


@dataclass
class Workload:
    """Prompts x `samples` samples each, every sample's length (prompt-major), and how the HF
    engine batches it: all at once, or (`budgeted`) in batches sized for the worst case."""

    name: str
    samples: int
    lengths: list[int]  # generated tokens of each sample, prompts x samples
    prompt_tokens: tuple[int, int]  # prompt lengths are drawn uniformly from this range
    budgeted: bool = False
    rounds: int | None = None  # timed rounds; None: every round
    prompts: list[list[int]] = field(default_factory=list)  # token ids, drawn per round (fresh)
    seed: int = 0  # the samples' seeds are seed * 100003 + their index

    @property
    def sequences(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def seeds(self) -> list[int]:
        return [self.seed * 100003 + i for i in range(self.sequences)]

    def fresh(self, round_: int, vocab: int) -> "Workload":
        """The same lengths with new prompts (and seeds) for round `round_`."""
        prompts = random_prompts(self.sequences // self.samples, self.prompt_tokens, vocab,
                                 seed=1000 * (round_ + 1) + self.sequences)
        return replace(self, prompts=prompts, seed=round_)


def random_prompts(count: int, lengths: tuple[int, int], vocab: int, seed: int) -> list[list[int]]:
    """`count` prompts of random ids in [2, vocab) (0, 1: the tokenizer's eos and unk), of
    lengths drawn uniformly from lengths[0]..lengths[1]."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (count,), generator=generator).tolist()
    return [torch.randint(2, vocab, (size,), generator=generator).tolist() for size in sizes]


def long_tailed_lengths(count: int, median: float, sigma: float, cap: int, seed: int) -> list[int]:
    """Completion lengths from a lognormal (median, sigma), at least 1 and at most `cap`: the
    shape of sampled reasoning answers, most short, a few running to the token limit."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.exp(math.log(median) + sigma * torch.randn(count, generator=generator))
    return draws.round().clamp(1, cap).long().tolist()


def macs_per_token(architecture: Architecture) -> int:
    """Multiply-adds of one token's forward: every parameter but an untied input embedding (a
    lookup)."""
    untied = not architecture.tied_embeddings
    lookup = architecture.embedding_rows * architecture.hidden if untied else 0
    return architecture.params - lookup


def build_models(root: Path) -> dict[str, str]:
    """L, S and S_RL (S perturbed: a non-zero delta) with the tiny tokenizer, saved under root."""
    from transformers import Qwen2ForCausalLM

    from train.tiny.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    paths = {}
    for name, architecture, seed in (("L", LARGE, 0), ("S", SMALL, 1), ("S_RL", SMALL, 1)):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(qwen2_config(architecture, bos_token_id=tokenizer.eos_token_id,
                                              eos_token_id=tokenizer.eos_token_id))
        if name == "S_RL":
            torch.manual_seed(2)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.3 * param.std() * torch.randn_like(param))
        paths[name] = str(root / name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def forced_lengths(lengths: list[int], stop_id: int):
    """An on_step hook for RastEngine.decode: row r samples `stop_id` at exactly its lengths[r]-th
    token and never before (its logit is -inf until then, the only finite one at that step), so
    the engine's own stop check ends the row with lengths[r] tokens."""
    steps = itertools.count()
    lengths = torch.tensor(lengths)

    def on_step(active: torch.Tensor, logits: torch.Tensor) -> None:
        ends = (lengths[active] == next(steps) + 1).to(logits.device)
        logits[:, stop_id] = float("-inf")
        logits[ends] = float("-inf")
        logits[ends, stop_id] = 0.0

    return on_step


def run_hf(engine, workload: Workload, batch_rows: int, stop_id: int) -> dict:
    """The workload through the HF engine, batch_rows // samples prompts per decode call (each
    with all its samples), every row ending at its drawn length."""
    from transfer.decode.decoder import SamplingParams

    prompts_per_batch = max(1, batch_rows // workload.samples)
    seeds, tokens = workload.seeds(), 0
    start = time.perf_counter()
    for first in range(0, len(workload.prompts), prompts_per_batch):
        prompts = workload.prompts[first:first + prompts_per_batch]
        rows = slice(first * workload.samples, (first + len(prompts)) * workload.samples)
        lengths = workload.lengths[rows]
        params = SamplingParams(temperature=1.0, top_p=TOP_P, max_new_tokens=max(lengths))
        batch_seeds = [seeds[rows][i:i + workload.samples]
                       for i in range(0, len(lengths), workload.samples)]
        outputs = engine.decode(prompts, batch_seeds, params, stop_ids=[stop_id],
                                on_step=forced_lengths(lengths, stop_id))
        tokens += sum(len(ids) for ids, _ in outputs)
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def run_vllm(llm, workload: Workload) -> dict:
    """The workload through a vLLM engine: one request per sample (as VllmDecoder submits them),
    each stopping at its drawn length, all handed to vLLM at once."""
    from vllm import SamplingParams as VllmParams
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=prompt) for prompt in workload.prompts
                for _ in range(workload.samples)]
    params = [VllmParams(n=1, temperature=1.0, top_p=TOP_P, seed=seed, max_tokens=length,
                         ignore_eos=True, detokenize=False)
              for seed, length in zip(workload.seeds(), workload.lengths)]
    preempted = preemptions(llm)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
            "preemptions": preemptions(llm) - preempted}


def preemptions(llm) -> int:
    return int(sum(getattr(metric, "value", 0) for metric in llm.get_metrics()
                   if metric.name == "vllm:num_preemptions"))


def vllm_options(blocks: int, max_model_len: int, dtype: str = "float32",
                 block_size: int = BLOCK_SIZE, enforce_eager: bool | None = None, **vllm_args):
    """vLLM engine options with exactly `blocks` KV blocks (the budget) and its statistics on
    (the preemption counter)."""
    from transfer.decode.decoder import LoadOptions

    return LoadOptions(engine="vllm", dtype=dtype, max_model_len=max_model_len,
                       enforce_eager=enforce_eager,
                       vllm_args={"block_size": block_size, "num_gpu_blocks_override": blocks,
                                  "disable_log_stats": False, **vllm_args})


def plain_vllm(target: str, options):
    """Plain vLLM on `target`: the engine arguments the RAST engine gets, without RAST's model
    class and worker extension."""
    from vllm import LLM

    from transfer.decode.vllm_engine import engine_plan

    kwargs = engine_plan(target, (), options).kwargs
    kwargs.pop("hf_overrides")
    kwargs.pop("worker_extension_cls")
    return LLM(**kwargs)


@dataclass
class Budget:
    """One KV memory budget in bytes, and what each system can hold in it."""

    bytes: int
    worst_row_tokens: int  # longest prompt + cap
    kv_bytes: dict  # per token of one sequence, per system kind ("L alone", "RAST")
    block_size: int = BLOCK_SIZE  # vLLM's, tokens

    @classmethod
    def of_rows(cls, rows: int, worst_row_tokens: int, large: Architecture, small: Architecture,
                dtype_bytes: int, block_size: int = BLOCK_SIZE) -> "Budget":
        """`rows` worst-case rows of RAST (L and the pair), in bytes."""
        kv_bytes = {"L alone": large.kv_bytes_per_token(dtype_bytes),
                    "RAST": (large.kv_bytes_per_token(dtype_bytes)
                             + 2 * small.kv_bytes_per_token(dtype_bytes))}
        return cls(rows * worst_row_tokens * kv_bytes["RAST"], worst_row_tokens, kv_bytes,
                   block_size)

    def hf_rows(self, kind: str) -> int:
        """The HF engine's batch: worst-case rows that fit."""
        return self.bytes // (self.worst_row_tokens * self.kv_bytes[kind])

    def vllm_blocks(self, kind: str) -> int:
        """vLLM's KV blocks in the same bytes (+1: vLLM keeps block 0 as its null block)."""
        return self.bytes // (self.block_size * self.kv_bytes[kind]) + 1

    def check_fits(self, args) -> None:
        """The fixed batches run on the same engines: each must fit."""
        for batch in args.batches:
            tokens = args.fixed_prompt_tokens + fixed_row_tokens(batch, args.new_tokens)
            need = batch * math.ceil(tokens / self.block_size)
            if need >= self.vllm_blocks("RAST"):
                raise SystemExit(f"the fixed batch of {batch} needs {need} KV blocks, the budget "
                                 f"gives {self.vllm_blocks('RAST') - 1}: raise --kv_rows or "
                                 "lower --batches")


def add_workload_args(parser: argparse.ArgumentParser, new_tokens: int, fixed_prompt: int,
                      prompts: int, samples: int, prompt_tokens: int, median: float, sigma: float,
                      cap: int, kv_rows: int, repeats: int, paper_repeats: int) -> None:
    """The two workloads' flags (shared with transfer.bench.gpu_engines, other defaults there)."""
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new_tokens", "--new-tokens", type=int, default=new_tokens,
                        help="tokens per row of the fixed batches")
    parser.add_argument("--fixed_prompt_tokens", "--fixed-prompt-tokens", type=int,
                        default=fixed_prompt)
    parser.add_argument("--prompts", type=int, default=prompts, help="paper-shaped: prompts")
    parser.add_argument("--samples", type=int, default=samples, help="... samples per prompt")
    parser.add_argument("--prompt_tokens", "--prompt-tokens", type=int, default=prompt_tokens,
                        help="... longest prompt (lengths uniform from a quarter of it)")
    parser.add_argument("--median_tokens", "--median-tokens", type=float, default=median)
    parser.add_argument("--sigma", type=float, default=sigma, help="lognormal sigma of the lengths")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=cap,
                        help="the cap of the drawn lengths (the recipes' 16384)")
    parser.add_argument("--kv_rows", "--kv-rows", type=int, default=kv_rows,
                        help="KV budget: this many worst-case rows of RAST, in bytes")
    parser.add_argument("--repeats", type=int, default=repeats, help="rounds, best kept")
    parser.add_argument("--paper_repeats", "--paper-repeats", type=int, default=paper_repeats,
                        help="rounds in which the paper-shaped workload is timed")


def workloads(args) -> list[Workload]:
    """The fixed batches, then the paper-shaped workload (its lengths drawn once, seed 1)."""
    fixed = []
    for batch in args.batches:
        tokens = fixed_row_tokens(batch, args.new_tokens)
        fixed.append(Workload(f"batch {batch} x {tokens} tokens", 1, [tokens] * batch,
                              (args.fixed_prompt_tokens,) * 2))
    lengths = long_tailed_lengths(args.prompts * args.samples, args.median_tokens, args.sigma,
                                  args.max_new_tokens, seed=1)
    paper = Workload(f"paper-shaped: {args.prompts} prompts x {args.samples}", args.samples,
                     lengths, (args.prompt_tokens // 4, args.prompt_tokens), budgeted=True,
                     rounds=args.paper_repeats)
    return [*fixed, paper]


def fixed_row_tokens(batch: int, new_tokens: int) -> int:
    """Tokens per row of a fixed batch: `new_tokens`, and at least 4 x `new_tokens` in all (batch
    1 decodes 4 x as long: 48 tokens on CPU are a 0.4 s window, which load elsewhere swamps)."""
    return max(new_tokens, 4 * new_tokens // batch)


def hf_runner(engine, kind: str, budget: Budget, stop_id: int):
    def run(workload: Workload) -> dict:
        rows = budget.hf_rows(kind) if workload.budgeted else workload.sequences
        return run_hf(engine, workload, rows, stop_id)

    return run


def timed_rounds(systems: dict, plan: list[Workload], repeats: int, vocab: int) -> dict:
    """Best tokens/s per workload and system (name -> run(workload) -> {seconds, tokens, ...})
    over `repeats` rounds; in each round every workload gets new prompts, the same for every
    system, and the systems take turns, so load from elsewhere hits them alike."""
    warm = Workload("warm-up", 1, [4, 4], (8, 8)).fresh(99, vocab)
    for run in systems.values():
        run(warm)
    best: dict[str, dict[str, dict]] = {}
    for round_ in range(repeats):
        for workload in (w for w in plan if w.rounds is None or round_ < w.rounds):
            now = workload.fresh(round_, vocab)
            for name, run in systems.items():
                result = run(now)
                if result["tokens"] != workload.tokens:
                    raise RuntimeError(f"{name} generated {result['tokens']} tokens of "
                                       f"{workload.name}, not {workload.tokens}")
                result["tokens_per_s"] = result["tokens"] / result["seconds"]
                kept = best.setdefault(workload.name, {}).get(name)
                if kept is None or result["tokens_per_s"] > kept["tokens_per_s"]:
                    best[workload.name][name] = result
    return best


def shape_of(paper: Workload, budget: Budget, args) -> dict:
    """What the paper-shaped workload is and what each engine holds of it at once."""
    mean_sequence = (sum(map(len, paper.prompts)) / len(paper.prompts)
                     + paper.tokens / paper.sequences)  # prompt + completion tokens
    return {"sequences": paper.sequences, "generated_tokens": paper.tokens,
            "mean_length": paper.tokens / paper.sequences, "max_length": max(paper.lengths),
            "at_cap": sum(length == args.max_new_tokens for length in paper.lengths),
            "kv_budget_bytes": budget.bytes, "kv_bytes_per_token": budget.kv_bytes,
            "hf_rows": {kind: budget.hf_rows(kind) for kind in budget.kv_bytes},
            "vllm_blocks": {kind: budget.vllm_blocks(kind) - 1 for kind in budget.kv_bytes},
            "vllm_sequences_at_mean_length": {
                kind: (budget.vllm_blocks(kind) - 1) * budget.block_size / mean_sequence
                for kind in budget.kv_bytes}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="HF engine vs vLLM, L alone vs RAST, on CPU")
    add_workload_args(parser, new_tokens=48, fixed_prompt=16, prompts=16, samples=4,
                      prompt_tokens=64, median=32, sigma=1.2, cap=448, kv_rows=8,
                      repeats=5, paper_repeats=1)  # best of 3: batch 1 moved 0.75-0.84
    parser.add_argument("--eager", action="store_true",
                        help="vLLM without torch.compile (make transfer's CPU default: no minute "
                             "of compiling per start); default: compiled, vLLM's own default")
    parser.add_argument("--output", default="outputs/bench_engines.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # vLLM's CPU worker binds its model to one core (see docstring)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="rast-bench-engines-") as root:
        report = compare(args, build_models(Path(root)))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return report


def compare(args, paths: dict[str, str]) -> dict:
    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import LoadOptions
    from transfer.decode.vllm_engine import VllmDecoder
    from transfer.deltas import resolve_delta

    plan = workloads(args)
    budget = Budget.of_rows(args.kv_rows, args.prompt_tokens + args.max_new_tokens, LARGE,
                            SMALL, dtype_bytes=4)
    budget.check_fits(args)
    delta = resolve_delta(paths["S_RL"], paths["S"], lam=1.0)
    hf = LoadOptions(engine="hf", dtype="float32")
    context = args.prompt_tokens + args.max_new_tokens
    alone, rast = open_decoder(paths["L"], (), hf), open_decoder(paths["L"], (delta,), hf)
    stop_id = alone.default_stop_ids[0]
    vllm_alone = plain_vllm(paths["L"], vllm_options(budget.vllm_blocks("L alone"), context,
                                                     enforce_eager=args.eager))
    vllm_rast = VllmDecoder.load(paths["L"], (delta,), vllm_options(
        budget.vllm_blocks("RAST"), context, enforce_eager=args.eager)).engine.llm
    systems = dict(zip(SYSTEMS, (hf_runner(alone, "L alone", budget, stop_id),
                                 hf_runner(rast, "RAST", budget, stop_id),
                                 lambda workload: run_vllm(vllm_alone, workload),
                                 lambda workload: run_vllm(vllm_rast, workload))))
    best = timed_rounds(systems, plan, args.repeats, SMALL.embedding_rows)
    bound = macs_per_token(LARGE) / (macs_per_token(LARGE) + 2 * macs_per_token(SMALL))
    report = {"models": {"large": asdict(LARGE), "small": asdict(SMALL), "dtype": "float32",
                         "bound_rast_over_large": bound},
              "settings": {**vars(args), "top_p": TOP_P, "block_size": BLOCK_SIZE,
                           "torch_threads": torch.get_num_threads()},
              "paper_workload": shape_of(plan[-1].fresh(0, SMALL.embedding_rows), budget, args),
              "results": best}
    print(f"\nHF engine vs vLLM ({'eager' if args.eager else 'torch.compile'}) on CPU, float32, one "
          f"thread for each engine's model, temperature "
          f"1, top-p {TOP_P}, a seed per sample, best of {args.repeats} interleaved rounds (the "
          f"paper-shaped workload: {args.paper_repeats}); generated tokens/s, prefill included")
    print(table(best, plan))
    print(f"bound of RAST / L alone (MACs per token): {bound:.3f}; goal on CPU: vLLM RAST / vLLM L "
          f"alone >= 0.8 (the HF engine may stay the faster one here)")
    print(describe_paper(report["paper_workload"], best[plan[-1].name], args, budget.block_size))
    return report


def table(best: dict, plan: list[Workload]) -> str:
    """tokens/s per workload (rows) and system, and the ratios issue 23 sets goals on."""
    lines = [f"{'workload':34}" + "".join(f"{name:>20}" for name in SYSTEMS)
             + f"{'vLLM RAST/L alone':>19}{'vLLM/HF, RAST':>15}{'HF RAST/L alone':>17}"]
    for workload in plan:
        row = best[workload.name]
        speeds = [row[name]["tokens_per_s"] if name in row else float("nan") for name in SYSTEMS]
        lines.append(f"{workload.name:34}" + "".join(f"{speed:20.0f}" for speed in speeds)
                     + f"{speeds[3] / speeds[2]:19.2f}{speeds[3] / speeds[1]:15.2f}"
                     f"{speeds[1] / speeds[0]:17.2f}")
    return "\n".join(lines)


def describe_paper(shape: dict, results: dict, args, block_size: int) -> str:
    hf_rows, blocks, kv = shape["hf_rows"], shape["vllm_blocks"], shape["kv_bytes_per_token"]
    at_mean = shape["vllm_sequences_at_mean_length"]
    preempted = ", ".join(f"{name} {results[name].get('preemptions')}" for name in SYSTEMS[2:]
                          if name in results)
    return (f"paper-shaped: {shape['sequences']} samples ({args.prompts} prompts x "
            f"{args.samples}), lengths lognormal (median {args.median_tokens:g}, sigma "
            f"{args.sigma:g}) capped at {args.max_new_tokens}: mean {shape['mean_length']:.0f}, "
            f"max {shape['max_length']}, {shape['at_cap']} at the cap; KV budget "
            f"{shape['kv_budget_bytes'] / 2**20:.1f} MiB = {args.kv_rows} worst-case RAST rows. "
            f"The HF engine's batch: {hf_rows['RAST']} rows (RAST), {hf_rows['L alone']} (L "
            f"alone); vLLM: {blocks['RAST']} / {blocks['L alone']} blocks of {block_size} "
            f"tokens, about {at_mean['RAST']:.0f} / {at_mean['L alone']:.0f} sequences at the "
            f"mean length (RAST's KV per token is {kv['RAST'] / kv['L alone']:.2f}x L's: where a "
            f"step costs the same at any batch, that alone caps vLLM RAST / vLLM L alone at "
            f"{kv['L alone'] / kv['RAST']:.2f} here); vLLM preemptions: {preempted}")


if __name__ == "__main__":
    main()
