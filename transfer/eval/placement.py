"""Memory arithmetic and a GPU plan for RAST evaluation, computed from registry facts alone.

Decoding holds, per evaluation process: the weights of L and of the small pair (S_base, S_RL;
with several pairs every small model, a base two pairs share once), and a KV cache per model of layers x kv_heads x head_dim x 2 (K and V) x 2 bytes (bf16) per
token per sequence. The engine's DynamicCache grows with the tokens actually decoded and drops
finished rows, so `batch x (prompt + max_new_tokens)` is the worst case, and the plan sizes for
it. Sizes come from train.models.MODELS (parameters, bf16 weight GB) and the published Qwen2.5
architectures in the same registry (layers, heads); nothing is loaded, the hub is not asked.

    python -m transfer.eval.evaluate --config recipes/Qwen2.5-32B/rast/config_1.5B.yaml --dry-run
    python -m transfer.eval.evaluate --config ... --dry-run --gpus 4 --gpu_memory_gb 40
    python -m transfer.eval.placement          # the (32B, 1.5B/7B/14B) table of the README

With `engine: vllm` (vllm_plan) the plan is vLLM's instead: each of tensor_parallel_size GPUs
holds its shard of every model's weights, and vLLM's gpu_memory_utilization share of the card
less weights and activations becomes one paged KV pool, shared by L and the pair, filled by
actual lengths; the HF engine's rows are sized for the worst case. `describe` prints both, how
many sequences each holds at once, and a sweep's run time from both (arithmetic, labelled).
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from train.errors import UserError
from train.memory import GB, USABLE_SHARE, full_training_gb
from train.models import MODELS, Architecture, architecture_of, registry_entry
from transfer.decode.vllm_engine import check_tensor_parallel, tensor_parallel_ok

PROMPT_TOKENS = 1024  # qwen-boxed prompts of the six benchmarks fit (SimpleRL-Zoo's max prompt)
CARDS_GB = (40, 80, 141)  # A100-40G, A100/H100-80G, H200
# Decoding also holds transient fp32 logits where they are combined (L's last GPU): at the peak
# about this many [batch, positions, vocab] fp32 tensors (the models' logits, the combination,
# top-p's sorted copy and its int64 indices, probabilities, the draft's q). Measured on CPU at
# Qwen's 152064 rows, batch 16, top-p 0.95: peak RSS grew by 954 MB in a speculative round of 9
# positions (11.4 such tensors) and by 117 MB in the plain loop's steps (12.6 at 1 position).
LOGITS_TENSORS = 12
CUDA_CONTEXT_GB = 1.0  # per card, outside what torch allocates


@dataclass(frozen=True)
class ModelFacts:
    name: str
    params_b: float
    weight_gb: float  # bf16
    architecture: Architecture  # layers, heads, KV bytes per token: shared with train.memory
    source: str  # where the numbers come from

    @property
    def layers(self) -> int:
        return self.architecture.layers

    @property
    def kv_bytes_per_token(self) -> int:
        return self.architecture.kv_bytes_per_token()  # K and V, bf16


def model_facts(name: str) -> ModelFacts | None:
    """Sizes of a registry name, a Qwen2.5 / SimpleRL-Zoo hub id, or a local model directory."""
    info = registry_entry(name)
    if info is not None and info.architecture is not None:
        return ModelFacts(info.name, info.params_b, info.weight_gb, info.architecture,
                          "train.models.MODELS")
    architecture = architecture_of(name)
    if architecture is None:
        return None
    path = Path(MODELS[name].base_id if name in MODELS else name)
    config = json.loads((path / "config.json").read_text())
    weight_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    params = weight_bytes / {"float32": 4, "bfloat16": 2, "float16": 2}.get(
        config.get("dtype") or config.get("torch_dtype"), 4)
    return ModelFacts(path.name, params / 1e9, params * 2 / GB, architecture,
                      f"{path / 'config.json'}")


@dataclass(frozen=True)
class Plan:
    """One evaluation process: GPUs it needs and where each model goes (GPU indices 0..)."""

    large_gb: float  # weights + worst-case KV of L
    pair_gb: float  # weights + worst-case KV of every small model (0 without a pair)
    large_gpus: int  # L's layers are spread evenly over GPUs 0..large_gpus-1
    pair_gpu: int | None  # the small pair's GPU: its own one, or L's last; None without a pair
    gpus_per_process: int
    fits: bool  # within the GPUs given

    @property
    def total_gb(self) -> float:
        return self.large_gb + self.pair_gb


def sequence_tokens(max_new_tokens: int, prompt_tokens: int = PROMPT_TOKENS) -> int:
    return prompt_tokens + max_new_tokens


def plan(large: ModelFacts, small: list[ModelFacts], batch: int, tokens: int, gpus: int,
         card_gb: float) -> Plan:
    """GPUs for L (+ its small models: [base, RL] for one pair, each RL sized as its base) at
    `batch` sequences of `tokens` each: the small models get a GPU of their own when they fit on
    one and a GPU is left; otherwise everything is spread and they share L's last GPU (the
    engine's default)."""
    usable = card_gb * USABLE_SHARE
    large_gb = large.weight_gb + batch * tokens * large.kv_bytes_per_token / GB
    pair_gb = sum(m.weight_gb + batch * tokens * m.kv_bytes_per_token / GB for m in small)
    large_gpus = math.ceil(large_gb / usable)
    if small and pair_gb <= usable and large_gpus + 1 <= gpus:
        return Plan(large_gb, pair_gb, large_gpus, large_gpus, large_gpus + 1, True)
    spread = math.ceil((large_gb + pair_gb) / usable)
    return Plan(large_gb, pair_gb, spread, spread - 1 if small else None, spread, spread <= gpus)


def max_batch(large: ModelFacts, small: list[ModelFacts], tokens: int, gpus: int,
              card_gb: float) -> int:
    """Largest batch whose worst-case KV cache fits next to the weights on `gpus` cards."""
    weights = large.weight_gb + sum(m.weight_gb for m in small)
    per_sequence = tokens * (large.kv_bytes_per_token +
                             sum(m.kv_bytes_per_token for m in small)) / GB
    return max(0, math.floor((gpus * card_gb * USABLE_SHARE - weights) / per_sequence))


def logits_gb(batch: int, vocab: int, positions: int = 1) -> float:
    """Peak transient logits memory of one decode step (positions 1) or speculative round
    (positions: drafts + 1), on the GPU where the logits are combined."""
    return LOGITS_TENSORS * batch * positions * vocab * 4 / GB


def large_device_map(layers: int, gpus: int) -> dict[str, int]:
    """An accelerate device map spreading a Qwen2 model's decoder layers evenly over GPUs
    0..gpus-1 (embeddings on the first, norm and lm_head on the last) for from_pretrained."""
    per_gpu = math.ceil(layers / gpus)
    device_map = {"model.embed_tokens": 0}
    device_map.update({f"model.layers.{i}": min(i // per_gpu, gpus - 1) for i in range(layers)})
    device_map.update({"model.norm": gpus - 1, "model.rotary_emb": gpus - 1, "lm_head": gpus - 1})
    return device_map


def local_gpus(local_rank: int, local_world_size: int, visible: list[str]) -> list[str]:
    """The GPUs of one evaluation process on a node: an equal, contiguous share of `visible`."""
    share = len(visible) // local_world_size
    if share == 0:
        raise ValueError(f"{local_world_size} processes on a node with {len(visible)} GPUs")
    return visible[local_rank * share:(local_rank + 1) * share]


def memory_table(batch: int = 16, max_new_tokens: int = 16384) -> str:
    """Markdown: RAST (32B + pair) decode memory vs direct full-parameter RL of the target."""
    tokens = sequence_tokens(max_new_tokens)
    large = model_facts("32B")
    lines = [f"| system | weights GB | KV GB (batch {batch} x {tokens} tokens) | total GB | "
             + " | ".join(f"{c} GB GPUs" for c in CARDS_GB) + " |",
             "|---|---|---|---|" + "---|" * len(CARDS_GB)]
    for small_name in (None, "1.5B", "7B", "14B"):
        small = [model_facts(small_name)] * 2 if small_name else []
        plans = [plan(large, small, batch, tokens, 64, card) for card in CARDS_GB]
        weights = large.weight_gb + sum(m.weight_gb for m in small)
        name = f"32B + Delta R {small_name}" if small else "32B alone"
        lines.append(f"| {name} | {weights:.1f} | {plans[0].total_gb - weights:.1f} | "
                     f"{plans[0].total_gb:.1f} | "
                     + " | ".join(str(p.gpus_per_process) for p in plans) + " |")
    for size in ("1.5B", "7B", "14B", "32B"):
        info = model_facts(size)
        need = full_training_gb(info.params_b * 1e9)  # train.memory's ZeRO states
        lines.append(f"| direct GRPO of {size} | "
                     f"{2 * info.params_b:.1f} | - | {need:.0f} | "
                     + " | ".join(str(math.ceil(need / (c * USABLE_SHARE))) for c in CARDS_GB)
                     + " |")
    return "\n".join(lines)


# engine: vllm. The numbers the arithmetic below assumes; each is printed where it is used.
VLLM_ACTIVATIONS_GB = 4.0  # per GPU beside weights and KV: vLLM's profile-run activations (up to
# 16384 batched tokens on an H100/H200), CUDA graphs, NCCL buffers. An estimate, not measured.
VLLM_MAX_NUM_SEQS = 1024  # vLLM 0.32's offline default on H100/H200 (256 on smaller GPUs)
MEAN_PROMPT_TOKENS = 91  # measured: the six benchmarks' question-answer prompts, Qwen2.5
# tokenizer (2836 problems: mean 90.9 tokens, longest 1264)
MEAN_COMPLETION_TOKENS = 1000  # ASSUMED (a run's summary.json has the real mean_tokens)
LENGTH_SIGMA = 1.0  # ASSUMED spread: completion lengths lognormal, capped at max_new_tokens
PAPER_PROBLEMS = 2836  # MATH500 500, AIME24 30, AMC23 40, Minerva 272, Olympiad 675, GSM8K 1319
# A card's roofline by its memory: HBM bytes/s and dense bf16 FLOP/s (A100-40G, H100 SXM, H200).
CARD_SPEED = {40: (1.555e12, 312e12), 80: (3.35e12, 989e12), 141: (4.8e12, 989e12)}


def kv_bytes_per_gpu(architecture: Architecture, tp: int) -> int:
    """KV bytes per token (bf16) on each of tp GPUs: its share of the KV heads, at least one
    whole head (vLLM replicates KV heads when there are fewer than GPUs)."""
    per_head = architecture.kv_bytes_per_token() // architecture.kv_heads
    return per_head * max(1, architecture.kv_heads // tp)


@dataclass(frozen=True)
class VllmPlan:
    """One vLLM engine over tp GPUs: per GPU, its shard of every model's weights and one paged
    KV pool that L and the small models share (one block table)."""

    tp: int
    usable_gb: float  # gpu_memory_utilization x the card
    weights_gb: float
    pool_gb: float  # what is left for KV blocks (< 0: does not fit)
    large_kv: int  # bytes per token per GPU
    pair_kv: int  # every small model's together

    @property
    def pool_tokens(self) -> int:
        return max(0, int(self.pool_gb * GB / (self.large_kv + self.pair_kv)))

    def sequences(self, tokens_each: float) -> int:
        """Sequences of `tokens_each` tokens the pool holds at once (max_num_seqs caps it)."""
        return min(VLLM_MAX_NUM_SEQS, int(self.pool_tokens // tokens_each))


def vllm_plan(large: ModelFacts, small: list[ModelFacts], tp: int, card_gb: float,
              utilization: float = 0.9) -> VllmPlan:
    """vLLM's memory on each of tp GPUs: weights / tp (embeddings and linear layers are sharded;
    replicated norms and KV projections are a rounding error), VLLM_ACTIVATIONS_GB, and the rest
    of `utilization` of the card as KV pool."""
    usable = card_gb * utilization
    weights = (large.weight_gb + sum(m.weight_gb for m in small)) / tp
    return VllmPlan(tp, usable, weights, usable - weights - VLLM_ACTIVATIONS_GB,
                    kv_bytes_per_gpu(large.architecture, tp),
                    sum(kv_bytes_per_gpu(m.architecture, tp) for m in small))


@dataclass(frozen=True)
class Lengths:
    """Completion lengths lognormal (uncapped mean `mean_tokens`, spread `sigma`) capped at
    `cap`; exact integrals of the capped distribution over one-token steps."""

    cap: int
    mean_tokens: float = MEAN_COMPLETION_TOKENS
    sigma: float = LENGTH_SIGMA
    prompt_tokens: float = MEAN_PROMPT_TOKENS

    def _cdf(self) -> list[float]:  # P(length <= x + 0.5), x = 0 .. cap - 1
        from statistics import NormalDist

        normal = NormalDist(math.log(self.mean_tokens) - self.sigma ** 2 / 2, self.sigma)
        return [normal.cdf(math.log(x + 0.5)) for x in range(self.cap)]

    @property
    def mean(self) -> float:
        return sum(1 - f for f in self._cdf())

    @property
    def context(self) -> float:
        """Mean context of a decoded token (prompt + E[l^2] / 2 E[l]): what a sequence in flight
        holds in KV memory on average, long sequences counted by their longer stay."""
        squares = sum((2 * x + 1) * (1 - f) for x, f in enumerate(self._cdf()))
        return self.prompt_tokens + squares / (2 * self.mean)

    def longest(self, batch: int) -> float:
        """Expected longest of `batch` lengths: the steps a batch that is never refilled runs."""
        return sum(1 - f ** batch for f in self._cdf())


def card_speed(card_gb: float) -> tuple[float, float]:
    return CARD_SPEED[min(CARD_SPEED, key=lambda size: abs(size - card_gb))]


def hf_sweep_seconds(large: ModelFacts, small: list[ModelFacts], batch: int, lengths: Lengths,
                     samples: int, card_gb: float) -> float:
    """ARITHMETIC: the HF engine decoding `samples` in batches of `batch` rows, each batch until
    its longest row ends (finished rows leave, none join); L's layers are spread over GPUs that
    run one after another, so a step reads every weight once at one card's bandwidth."""
    bandwidth, _ = card_speed(card_gb)
    weights = (large.weight_gb + sum(m.weight_gb for m in small)) * GB
    kv = large.kv_bytes_per_token + sum(m.kv_bytes_per_token for m in small)
    per_batch = (lengths.longest(batch) * weights
                 + batch * lengths.mean * lengths.context * kv) / bandwidth
    return math.ceil(samples / batch) * per_batch


def vllm_sweep_seconds(plan: VllmPlan, large: ModelFacts, small: list[ModelFacts],
                       lengths: Lengths, samples: int, card_gb: float) -> tuple[float, int]:
    """ARITHMETIC: one vLLM engine decoding `samples` with as many sequences in flight as its
    pool holds at their mean context (refilled as they finish); a step reads each GPU's weight
    shard and the KV in flight, or computes, whichever takes longer. -> (seconds, in flight)."""
    bandwidth, flops = card_speed(card_gb)
    running = plan.sequences(lengths.context)
    params = (large.params_b + sum(m.params_b for m in small)) * 1e9
    step = max((plan.weights_gb * GB + running * lengths.context * (plan.large_kv + plan.pair_kv))
               / bandwidth, 2 * params * running / plan.tp / flops)
    return samples * lengths.mean / max(running, 1) * step, running


def _vllm_lines(config, large: ModelFacts, small: list[ModelFacts], gpus: int, card_gb: float,
                tp: int, utilization: float) -> list[str]:
    """The dry run's plan for engine: vllm (after the models), with the HF engine beside it."""
    if tp > gpus:
        raise UserError(f"tensor_parallel_size {tp} needs {tp} GPUs, {gpus} given: lower it or "
                        f"pass --gpus")
    p = vllm_plan(large, small, tp, card_gb, utilization)
    worst = sequence_tokens(config.max_new_tokens)
    out = [(f"engine: vllm, tensor_parallel_size {tp}, gpu_memory_utilization {utilization:g} "
            f"of each {card_gb:g} GB card ({p.usable_gb:.1f} GB)"),
           (f"  per GPU: weights {p.weights_gb:.1f} GB (every model sharded over {tp}), "
            f"activations and CUDA graphs ~{VLLM_ACTIVATIONS_GB:g} GB (estimate), KV pool "
            f"{p.pool_gb:.1f} GB")]
    if p.pool_tokens < worst:
        fits = [size for size in (2, 4, 8) if size <= gpus and tensor_parallel_ok(
            large.architecture, size) and all(tensor_parallel_ok(m.architecture, size)
                                              for m in small)
                and vllm_plan(large, small, size, card_gb, utilization).pool_tokens >= worst]
        out.append(f"plan: does NOT fit: the KV pool holds {p.pool_tokens} tokens, less than one "
                   f"sequence of {worst}: raise tensor_parallel_size"
                   + (f" ({' or '.join(map(str, fits))} fits)" if fits else "")
                   + " or gpu_memory_utilization")
        return out
    lengths = Lengths(config.max_new_tokens)
    extra = f": +{p.pair_kv / p.large_kv:.1%} over L alone" if small else ""
    replicated = [m for m in small if m.architecture.kv_heads < tp]
    out.append(f"  KV per token per GPU: L {p.large_kv / 1024:g} KiB, small models "
               f"{p.pair_kv / 1024:g} KiB{extra}"
               + (f" (their {replicated[0].architecture.kv_heads} KV heads are replicated, one "
                  f"per GPU)" if replicated else ""))
    hf_rows = max_batch(large, small, worst, tp, card_gb)
    out.append(f"  the pool holds {p.pool_tokens:,} tokens: {p.sequences(worst)} sequences at the "
               f"worst case ({worst} tokens), ~{p.sequences(lengths.context)} in flight at the "
               f"assumed lengths (prompt {MEAN_PROMPT_TOKENS} measured, completions lognormal mean "
               f"{MEAN_COMPLETION_TOKENS} sigma {LENGTH_SIGMA:g} capped at {config.max_new_tokens} "
               f"ASSUMED: a decoded token's mean context {lengths.context:.0f})")
    out.append(f"  HF engine on the same {tp} GPU{'s' if tp > 1 else ''}: {hf_rows} rows sized for "
               f"the worst case, none refilled as they finish")
    out.append(f"  {gpus // tp} replica(s) of {tp} GPU(s) on {gpus} GPUs")
    samples = PAPER_PROBLEMS * config.samples
    hf = plan(large, small, config.batch_size, worst, 64, card_gb)
    bandwidth, flops = card_speed(card_gb)
    out.append(f"sweep estimate (ARITHMETIC, not measured: a roofline of {bandwidth / 1e12:g} TB/s "
               f"and {flops / 1e12:g} TFLOP/s per GPU, no overheads, the lengths assumed above), "
               f"one system of the six benchmarks ({PAPER_PROBLEMS} problems) x {config.samples} "
               f"samples:")
    hf_seconds = hf_sweep_seconds(large, small, config.batch_size, lengths, samples, card_gb)
    out.append(f"  HF engine, batch_size {config.batch_size} on its {hf.gpus_per_process} GPUs: "
               f"each batch runs ~{lengths.longest(config.batch_size):,.0f} steps (its expected "
               f"longest row) for {lengths.mean:,.0f} tokens a row on average: "
               f"{hf_seconds / 3600:,.1f} h, "
               f"{hf_seconds * hf.gpus_per_process / 3600:,.0f} GPU-hours")
    vllm_seconds, running = vllm_sweep_seconds(p, large, small, lengths, samples, card_gb)
    out.append(f"  vLLM, tensor_parallel_size {tp}, ~{running} sequences in flight: "
               f"{vllm_seconds / 3600:,.1f} h, {vllm_seconds * tp / 3600:,.1f} GPU-hours "
               f"({hf_seconds * hf.gpus_per_process / (vllm_seconds * tp):.0f}x fewer)")
    return out


def describe(config, small_models: list[str], gpus: int | None, card_gb: float | None,
             detected: tuple[int, float], engine: str = "hf", tensor_parallel_size: int = 1,
             gpu_memory_utilization: float | None = None) -> str:
    """The dry-run report of a TransferConfig: models, memory per process, GPU plan, launch.
    small_models: the small models of its largest system, each RL model named by its base
    (whose size it has): [base, base] for one pair. engine "vllm": vLLM's plan over
    tensor_parallel_size GPUs instead (refused in one line if a model's heads cannot split),
    with the HF engine's beside it."""
    large = model_facts(config.target)
    facts = {name: model_facts(name) for name in small_models}
    small = [] if None in facts.values() else [facts[name] for name in small_models]
    tokens = sequence_tokens(config.max_new_tokens)
    if gpus is None or card_gb is None:
        found_gpus, found_gb = detected
        source = "detected" if found_gpus else "default (no GPU here; pass --gpus/--gpu_memory_gb)"
        gpus, card_gb = gpus or found_gpus or 8, card_gb or found_gb or 80.0
    else:
        source = "given"
    out = [("dry run: nothing loaded, hub not contacted; sizes and shapes from the "
            "registry train.models.MODELS (published Qwen2.5 configs)"),
           f"GPUs: {gpus} x {card_gb:g} GB ({source}); usable {USABLE_SHARE:.0%} of each"]
    if large is None:
        out.append(f"target {config.target}: size unknown (not in the registry, no local "
                   f"config.json): no memory plan")
        return "\n".join(out)
    out.append(_facts_line("target L", config.target, large))
    for name, count in Counter(small_models).items():
        out.append(_facts_line(f"small pair (x{count})", name, facts[name]) if small else
                   f"small pair {name}: size unknown, planned as L alone")
    if engine == "vllm":
        names = (config.target, *(small_models if small else ()))
        check_tensor_parallel({name: m.architecture for name, m in zip(names, (large, *small))},
                              tensor_parallel_size)
        return "\n".join(out + _vllm_lines(config, large, small, gpus, card_gb,
                                           tensor_parallel_size, gpu_memory_utilization or 0.9))
    out.append(f"decoding: batch_size {config.batch_size} sequences x ({PROMPT_TOKENS} prompt + "
               f"{config.max_new_tokens} new) tokens, worst case (every sequence at full length)")
    p = plan(large, small, config.batch_size, tokens, gpus, card_gb)
    out.append(f"memory per evaluation process: L {p.large_gb:.1f} GB (weights "
               f"{large.weight_gb:.1f} + KV {p.large_gb - large.weight_gb:.1f}), pair "
               f"{p.pair_gb:.1f} GB, total {p.total_gb:.1f} GB")
    for card in CARDS_GB:
        other = plan(large, small, config.batch_size, tokens, 64, card)
        out.append(f"  on {card:3d} GB cards: {other.gpus_per_process} GPUs per process; "
                   f"largest batch on 8 cards {max_batch(large, small, tokens, 8, card)}"
                   + (" (more than one node of 8: lower batch_size)"
                      if other.gpus_per_process > 8 else ""))
    if not p.fits:
        out.append(f"plan: does NOT fit on {gpus} x {card_gb:g} GB at batch_size "
                   f"{config.batch_size}; largest batch_size that fits: "
                   f"{max_batch(large, small, tokens, gpus, card_gb)} (--batch_size)")
        return "\n".join(out)
    from transfer.decode.speculative import MAX_DRAFT

    room = card_gb * (1 - USABLE_SHARE) - CUDA_CONTEXT_GB  # what the plan leaves free per card
    positions = MAX_DRAFT + 1 if config.speculative else 1
    transient = logits_gb(config.batch_size, large.architecture.embedding_rows, positions)
    out.append(f"transient logits on L's last GPU ({'speculative, ' if positions > 1 else ''}"
               f"{positions} position{'s' if positions > 1 else ''} per step): {transient:.1f} GB"
               + (f", within the {room:.1f} GB each card keeps free beside its CUDA context"
                  if transient <= room else f", more than the {room:.1f} GB each card keeps free "
                                            f"beside its CUDA context: lower batch_size"))
    last = p.large_gpus - 1
    out.append(f"plan: L layers over GPU 0..{last}" if last else "plan: L on GPU 0")
    if p.pair_gpu is not None:
        own = p.pair_gpu > last
        out.append(f"      small pair on GPU {p.pair_gpu}" + (" (its own)" if own else
                                                             " (shared with L's last)"))
    processes = gpus // p.gpus_per_process
    out.append(f"      {p.gpus_per_process} GPUs per evaluation process -> {processes} processes "
               f"on this node: torchrun --nproc_per_node {processes} -m transfer.eval.evaluate "
               f"--config <recipe>")
    return "\n".join(out)


def _facts_line(role: str, name: str, facts: ModelFacts) -> str:
    return (f"{role}: {name} = {facts.name}: {facts.params_b:g}B params, {facts.weight_gb:g} GB "
            f"bf16, KV {facts.kv_bytes_per_token / 1024:g} KiB/token "
            f"({facts.layers} layers x {facts.architecture.kv_heads} kv heads x "
            f"{facts.architecture.head_dim})")


def vllm_table(samples: int = 32, batch: int = 64, max_new_tokens: int = 16384) -> str:
    """Markdown: the 32B recipes on vLLM against the HF engine, per card and tensor-parallel
    size: what one engine holds at once and one system's Avg@`samples` sweep (arithmetic)."""
    large, worst = model_facts("32B"), sequence_tokens(max_new_tokens)
    lengths = Lengths(max_new_tokens)
    lines = [("| 32B + pair | GPUs | weights / KV pool per GPU (GB) | pair's extra KV per "
              "token | HF engine: rows at once (worst case) | vLLM: sequences at once, worst case "
              "/ in flight | one system's sweep, GPU-hours: HF engine (batch 64, its plan) / "
              "vLLM |"),
             "|---|---|---|---|---|---|---|"]
    for small_name in ("1.5B", "7B"):
        small = [model_facts(small_name)] * 2
        for card, tp in ((80, 2), (80, 4), (141, 1), (141, 2)):
            p = vllm_plan(large, small, tp, card)
            hf = plan(large, small, batch, worst, 64, card)
            hf_hours = (hf_sweep_seconds(large, small, batch, lengths, PAPER_PROBLEMS * samples,
                                         card) * hf.gpus_per_process / 3600)
            seconds, running = vllm_sweep_seconds(p, large, small, lengths,
                                                  PAPER_PROBLEMS * samples, card)
            lines.append(f"| + {small_name} | {tp} x {card} GB | {p.weights_gb:.1f} / "
                         f"{p.pool_gb:.1f} | +{p.pair_kv / p.large_kv:.1%} | "
                         f"{max_batch(large, small, worst, tp, card)} | {p.sequences(worst)} / "
                         f"{running} | {hf_hours:,.0f} / {seconds * tp / 3600:,.1f} |")
    return "\n".join(lines)


def smallest_tp(large: ModelFacts, small: list[ModelFacts], tokens: int, card_gb: float) -> int:
    """The fewest GPUs vLLM can shard these models over with room for one `tokens` sequence."""
    return next(tp for tp in (1, 2, 4, 8) if all(tensor_parallel_ok(m.architecture, tp)
                                                 for m in (large, *small))
                and vllm_plan(large, small, tp, card_gb).pool_tokens >= tokens)


def recipe_hours_table(samples: int = 32, max_new_tokens: int = 16384, card_gb: float = 80) -> str:
    """Markdown: GPU-hours of each Qwen RAST recipe's systems on vLLM (S_RL, L, L + RAST, L_RL;
    roofline arithmetic, vllm_sweep_seconds), each on the fewest GPUs that hold it."""
    lengths, worst = Lengths(max_new_tokens), sequence_tokens(max_new_tokens)
    lines = ["| recipe (x 32 samples) | S_RL | L | L + RAST | L_RL | all four |",
             "|---|---|---|---|---|---|"]
    for target, small_name in (("7B", "1.5B"), ("14B", "1.5B"), ("32B", "1.5B"), ("32B", "7B")):
        large, small = model_facts(target), model_facts(small_name)
        cells = []
        for model, pair in ((small, []), (large, []), (large, [small, small]), (large, [])):
            tp = smallest_tp(model, pair, worst, card_gb)
            seconds, _ = vllm_sweep_seconds(vllm_plan(model, pair, tp, card_gb), model, pair,
                                            lengths, PAPER_PROBLEMS * samples, card_gb)
            cells.append((seconds * tp / 3600, tp))
        lines.append(f"| `Qwen2.5-{target}/rast/config_{small_name}.yaml` | "
                     + " | ".join(f"{hours:.1f} ({tp} GPU{'s' if tp > 1 else ''})"
                                  for hours, tp in cells)
                     + f" | {sum(hours for hours, _ in cells):.0f} |")
    return "\n".join(lines)


def main() -> None:
    print(memory_table())
    print()
    print(vllm_table())
    print()
    print(recipe_hours_table())


if __name__ == "__main__":
    main()
