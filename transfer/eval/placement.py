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
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from train.memory import GB, USABLE_SHARE, full_training_gb
from train.models import MODELS, Architecture, architecture_of, registry_entry

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


def describe(config, small_models: list[str], gpus: int | None, card_gb: float | None,
             detected: tuple[int, float]) -> str:
    """The dry-run report of a TransferConfig: models, memory per process, GPU plan, launch.
    small_models: the small models of its largest system, each RL model named by its base
    (whose size it has): [base, base] for one pair."""
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


def main() -> None:
    print(memory_table())


if __name__ == "__main__":
    main()
