"""GPU memory plan of a GRPO run, from the recipe and the model's shape alone (nothing loaded).

Per GPU: the policy's weights, fp32 master weights, gradients and Adam states under the launcher
(plain python / DDP: the trained parameters are fp32 themselves; DeepSpeed ZeRO-2/3: bf16
weights, fp32 masters and states sharded over the processes), the reference model (beta > 0,
full fine-tuning), the activations and logits of one training micro-batch, and the generation
memory of the configured path. A run whose plan does not fit refuses in one line naming the knob.

    make train-small RECIPE=recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml ARGS=--dry-run
    make train-small RECIPE=... ACCELERATE=zero2 ARGS="--dry-run --gpu_memory_gb 80"
    python -m train.grpo --config ... --dry-run --launcher zero3 --processes 32
    python -m train.memory      # the table of recipes/README.md: every Qwen recipe and launch

Generation, TRL 1.16 (one process, G = per_device_train_batch_size x steps_per_generation rows):
- transformers generate(): one call for all G rows, so its KV cache holds G x (prompt + max
  completion) tokens at once (worst case; rows that stop early still hold their padding);
- continuous batching (use_transformers_continuous_batching): a paged KV cache sized to 50% of
  the memory free at generation time; rows queue, so it needs room for one full row only;
- vLLM colocate: vLLM takes vllm_gpu_memory_utilization of every GPU (a bf16 copy of the
  weights plus its paged KV cache) and training gets the rest;
- vLLM server: generation on GPUs of its own, nothing here.
"""

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from train.models import Architecture

GB = 1e9
USABLE_SHARE = 0.9  # of a card: CUDA context, NCCL buffers, allocator fragmentation take the rest
DEFAULT_PROMPT_TOKENS = 1024  # when the recipe sets no max_prompt_tokens
CB_MEMORY_SHARE = 0.5  # TRL 1.16 gives continuous batching 50% of the free memory (max_memory_percent)
# TRL 1.16 scores log-probs with a fused LM head in tiles of 4096 tokens x 32768 vocabulary
# entries, never the whole (tokens x vocab) logits; forward and backward each hold one fp32 tile.
LOGIT_TILE = 4096 * 32768
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate_configs"


@dataclass(frozen=True)
class Launcher:
    name: str  # plain, ddp, zero2, zero3 (or an accelerate config's name)
    processes: int  # the world size: ZeRO shards over all processes of all nodes
    zero_stage: int  # 0: no DeepSpeed
    source: str

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage > 0


def launcher_from_env(env=os.environ) -> Launcher:
    """The launcher this process runs under: `accelerate launch` exports its DeepSpeed settings."""
    processes = int(env.get("WORLD_SIZE", "1"))
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
        return Launcher(f"zero{stage}", processes, stage, "accelerate environment")
    return Launcher("ddp" if processes > 1 else "plain", processes, 0,
                    "environment" if processes > 1 else "no launcher")


def launcher_from_config(name: str, processes: int | None = None) -> Launcher:
    """`--launcher zero2` (recipes/accelerate_configs/zero2.yaml, or a path to such a file)."""
    if name == "plain":
        return Launcher("plain", processes or 1, 0, "--launcher")
    path = Path(name) if name.endswith(".yaml") else ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        from train.errors import UserError
        known = ", ".join(["plain", *sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))])
        raise UserError(f"--launcher {name}: no accelerate config {path}; use one of {known}")
    config = yaml.safe_load(path.read_text())
    stage = (config.get("deepspeed_config") or {}).get("zero_stage", 0)
    stage = stage if config.get("distributed_type") == "DEEPSPEED" else 0
    return Launcher(Path(name).stem, processes or config.get("num_processes", 1), stage, path.name)


@dataclass
class Plan:
    """Per-GPU memory in GB; `resident` lives all run, `training` and `generation` take turns."""

    resident: dict[str, tuple[float, str]] = field(default_factory=dict)
    training: dict[str, tuple[float, str]] = field(default_factory=dict)
    generation: dict[str, tuple[float, str]] = field(default_factory=dict)
    card_gb: float = 80.0
    vllm_share_gb: float = 0.0  # taken by colocated vLLM before training memory
    paged_cache_gb: float = 0.0  # continuous batching's KV cache, beside training's reserved memory
    concurrent_rows: int | None = None  # paged paths: full-length rows held at once
    rows: int = 0  # generation rows per process
    notes: list[str] = field(default_factory=list)
    refusal: str | None = None

    @property
    def usable_gb(self) -> float:
        return self.card_gb * USABLE_SHARE

    def total(self, part: str) -> float:
        return sum(gb for gb, _ in getattr(self, part).values())

    @property
    def peak_gb(self) -> float:
        return (self.total("resident") + self.vllm_share_gb
                + max(self.total("training") + self.paged_cache_gb, self.total("generation")))

    @property
    def fits(self) -> bool:
        return self.refusal is None


def plan_training(arch: Architecture, args, training_args, model_args, launcher: Launcher,
                  card_gb: float) -> Plan:
    """The memory plan of one GRPO process (RastTrainArguments, GRPOConfig, ModelConfig)."""
    plan = Plan(card_gb=card_gb)
    n, stage = launcher.processes, launcher.zero_stage
    prompt = args.max_prompt_tokens or DEFAULT_PROMPT_TOKENS
    row_tokens = prompt + training_args.max_completion_length
    _states(plan, arch, training_args, model_args, n, stage)
    _training(plan, arch, training_args, model_args, stage, row_tokens)
    _generation(plan, arch, training_args, model_args, stage, row_tokens)
    plan.refusal = _refusal(plan, training_args, launcher, row_tokens)
    if not args.max_prompt_tokens:
        plan.notes.append(f"no max_prompt_tokens in the recipe: prompts planned at "
                          f"{DEFAULT_PROMPT_TOKENS} tokens")
    return plan


def _states(plan: Plan, arch: Architecture, training_args, model_args, n: int, stage: int) -> None:
    """Weights, masters, gradients, Adam moments and the reference model."""
    params = arch.params
    shard = n if stage else 1
    sharded = f", 1/{n} each (ZeRO-{stage})" if stage and n > 1 else ""
    if model_args.use_peft:
        trained = arch.lora_params(model_args.lora_r)
        base_bytes = _compute_bytes(model_args, stage)
        weights = params * base_bytes / (n if stage == 3 else 1)
        plan.resident["frozen base weights"] = (weights / GB, "bf16" if base_bytes == 2 else "fp32")
        what = f"LoRA r={model_args.lora_r}: {trained / 1e6:.1f}M trained parameters"
    else:
        trained, what = params, f"{params / 1e9:.2f}B trained parameters"
    if stage:
        plan.resident["weights"] = (trained * 2 / (n if stage == 3 else 1) / GB,
                                    f"bf16 ({what}; DeepSpeed casts the module)")
        plan.resident["master weights"] = (trained * 4 / shard / GB, f"fp32{sharded}")
        plan.resident["gradients"] = (trained * (2 + 4) / shard / GB,
                                      f"bf16 partition + its fp32 copy for the step{sharded}")
    else:
        plan.resident["weights"] = (trained * 4 / GB, f"fp32, they are the master weights ({what})")
        plan.resident["master weights"] = (0.0, "none beyond the fp32 weights")
        grads = 4 * (2 if n > 1 else 1)  # DDP keeps its own fp32 bucket copy of the gradients
        plan.resident["gradients"] = (trained * grads / GB, "fp32" + (" + DDP buckets" if n > 1 else ""))
    plan.resident["optimizer states"] = (trained * 8 / shard / GB, f"Adam m and v, fp32{sharded}")
    if training_args.beta > 0 and not model_args.use_peft:
        plan.resident["reference model"] = (params * 2 / (n if stage == 3 else 1) / GB,
                                            f"bf16 (beta {training_args.beta:g})")
    elif training_args.beta > 0:
        plan.resident["reference model"] = (0.0, "the base with the adapter off (no copy)")


def _compute_bytes(model_args, stage: int) -> int:
    """Bytes of the policy's weights, residual stream and generation KV: the policy generates in
    its own dtype, fp32 when plain python / DDP trains it in fp32 (train.grpo.policy_dtype),
    bf16 under DeepSpeed (it casts the module) and over a LoRA's bf16 base."""
    if stage:
        return 2
    if model_args.use_peft:
        return 2 if model_args.dtype in ("bfloat16", "float16") else 4
    return 4


def _training(plan: Plan, arch: Architecture, training_args, model_args, stage: int,
              row_tokens: int) -> None:
    """One micro-batch of per_device_train_batch_size rows: activations and LM-head logits."""
    tokens = training_args.per_device_train_batch_size * row_tokens
    # The residual stream is fp32 when the weights are (autocast only lowers matmul outputs).
    residual_bytes = _compute_bytes(model_args, stage)
    layer_working_set = tokens * (4 * arch.hidden + 3 * arch.ffn) * 2 * 2  # bf16, forward + backward
    if training_args.gradient_checkpointing:
        activations = tokens * arch.hidden * residual_bytes * arch.layers + layer_working_set
        how = "gradient checkpointing: each layer's input + one layer recomputed"
    else:
        activations = layer_working_set * arch.layers
        how = "no gradient checkpointing: every layer's working set"
    plan.training["activations"] = (activations / GB, (f"micro-batch {training_args.per_device_train_batch_size}"
                                    f" x {row_tokens} tokens, {how} (estimate)"))
    full_logits = tokens * arch.embedding_rows * 4
    plan.training["logits"] = (min(tokens, 4096) * 32768 * 4 * 2 / GB,
                               (f"TRL's fused LM head, 4096 x 32768 fp32 tiles (the whole "
                               f"{tokens} x {arch.embedding_rows} fp32 logits would be "
                               f"{full_logits / GB:.1f} GB)"))


def _generation(plan: Plan, arch: Architecture, training_args, model_args, stage: int,
                row_tokens: int) -> None:
    rows = training_args.per_device_train_batch_size * training_args.steps_per_generation
    plan.rows = rows
    kv_bytes = arch.kv_bytes_per_token(_compute_bytes(model_args, stage))
    if stage == 3 and training_args.ds3_gather_for_generation and not training_args.use_vllm:
        plan.generation["gathered ZeRO-3 weights"] = (arch.params * 2 / GB, "bf16, whole model")
    if training_args.use_vllm and training_args.vllm_mode == "server":
        plan.generation["generation"] = (0.0, "vLLM server: on GPUs of its own")
        return
    if training_args.use_vllm:  # colocate
        share = training_args.vllm_gpu_memory_utilization * plan.card_gb
        weights = arch.params * 2 / GB
        plan.vllm_share_gb = share
        plan.concurrent_rows = max(0, math.floor((share - weights) * GB
                                                 / (row_tokens * arch.kv_bytes_per_token())))
        plan.notes.append(f"vLLM colocate: {training_args.vllm_gpu_memory_utilization:g} x "
                          f"{plan.card_gb:g} GB = {share:.1f} GB for vLLM (bf16 weights "
                          f"{weights:.1f} GB + paged KV): {plan.concurrent_rows} rows of "
                          f"{row_tokens} tokens at once, the rest of {rows} queue")
        return
    if training_args.use_transformers_continuous_batching:
        if training_args.bf16:  # TRL casts the policy to bf16 for generate_batch()
            kv_bytes = arch.kv_bytes_per_token(2)
        free = plan.usable_gb - plan.total("resident") - plan.total("training")
        plan.paged_cache_gb = max(free, 0) * CB_MEMORY_SHARE
        plan.concurrent_rows = math.floor(plan.paged_cache_gb * GB / (row_tokens * kv_bytes))
        plan.notes.append(f"continuous batching: paged KV in {CB_MEMORY_SHARE:.0%} of the "
                          f"{max(free, 0):.1f} GB left after training: {plan.concurrent_rows} rows "
                          f"of {row_tokens} tokens at once, the rest of {rows} queue")
        return
    plan.generation["generation KV"] = (rows * row_tokens * kv_bytes / GB,
                                        (f"one generate() call: {rows} rows x {row_tokens} tokens x "
                                        f"{kv_bytes / 1024:g} KiB"))
    plan.generation["sampling logits"] = (rows * arch.embedding_rows * 4 * 2 / GB,
                                          f"{rows} rows x {arch.embedding_rows} fp32, logits + probs")


def _refusal(plan: Plan, training_args, launcher: Launcher, row_tokens: int) -> str | None:
    """None when the plan fits; else one line naming the knob to turn."""
    usable = plan.usable_gb
    budget = usable - plan.vllm_share_gb
    resident, training = plan.total("resident"), plan.total("training")
    where = f"{plan.card_gb:g} GB GPUs ({usable:.0f} GB usable)"
    if plan.generation and resident + plan.total("generation") > usable:
        return (f"generation needs {plan.total('generation'):.0f} GB per GPU on {where} (one "
                f"generate() call holds {plan.rows} rows x {row_tokens} tokens): set "
                f"use_transformers_continuous_batching: true (paged, rows queue) or use_vllm: true "
                f"with vllm_mode: colocate, or lower steps_per_generation")
    if resident + training > budget:
        big = max({**plan.resident, **plan.training}.items(), key=lambda item: item[1][0])[0]
        knob = ("lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
                "batch)" if big in plan.training else
                "shard the states over more processes (ACCELERATE=zero2 or zero3), or use_peft: true"
                if launcher.zero_stage < 3 else "add processes (NODES) or use_peft: true")
        vllm = (f" (after vLLM's {plan.vllm_share_gb:.0f} GB: or lower vllm_gpu_memory_utilization)"
                if plan.vllm_share_gb else "")
        return (f"training needs {resident + training:.0f} GB per GPU under {launcher.name} x "
                f"{launcher.processes} on {where}{vllm}, most for {big}: {knob}")
    if plan.concurrent_rows == 0:
        knob = ("raise vllm_gpu_memory_utilization" if plan.vllm_share_gb
                else "lower per_device_train_batch_size or shard states (ACCELERATE=zero2/zero3)")
        return (f"no room for one generated row of {row_tokens} tokens on {where}: {knob}, or "
                f"lower max_completion_length")
    return None


def describe(plan: Plan, model: str, arch: Architecture, launcher: Launcher, card_source: str) -> str:
    """The dry-run report: one line per memory item, the peak, and fits or the refusal."""
    out = [(f"training memory plan per GPU (nothing loaded): {model}, {arch.params / 1e9:.2f}B "
           f"params; launcher {launcher.name}, {launcher.processes} process(es) "
           f"({launcher.source}); {plan.card_gb:g} GB GPUs ({card_source}), "
           f"{plan.usable_gb:.1f} GB usable")]
    for title, part in (("all run", "resident"), ("training step", "training"),
                        ("generation", "generation")):
        for name, (gb, how) in getattr(plan, part).items():
            out.append(f"  {name:<24}{gb:8.1f} GB  [{title}] {how}")
    out.extend(f"  {note}" for note in plan.notes)
    if plan.vllm_share_gb:
        out.append(f"  {'vLLM (colocated)':<24}{plan.vllm_share_gb:8.1f} GB  [all run]")
    if plan.paged_cache_gb:
        out.append(f"  {'paged KV cache':<24}{plan.paged_cache_gb:8.1f} GB  [generation] "
                   f"continuous batching, beside the training step's reserved memory")
    verdict = "fits" if plan.fits else "does NOT fit"
    out.append(f"peak {plan.peak_gb:.1f} GB of {plan.usable_gb:.1f} GB usable per GPU: {verdict}")
    if plan.refusal:
        out.append(f"  {plan.refusal}")
    return "\n".join(out)


# The launches recipes/README.md plans: (recipe, launcher, processes, extra flags, what it is).
QWEN_GRPO = "recipes/Qwen2.5-{}/grpo/config_{}.yaml"
VLLM_SERVER = ("--vllm_mode", "server")
CONTINUOUS_BATCHING = ("--use_vllm", "false", "--use_transformers_continuous_batching", "true")
PLAIN_GENERATE = ("--use_vllm", "false", "--use_transformers_continuous_batching", "false")
README_LAUNCHES = [
    *[(QWEN_GRPO.format(size, variant), launcher, None, (), "as written")
      for size, variant in (("0.5B", "simplerl_zoo"), ("1.5B", "simplerl_zoo"), ("1.5B", "lora"))
      for launcher in ("plain", "ddp", "zero2", "zero3")],
    (QWEN_GRPO.format("1.5B", "lora"), "plain", None,
     ("--gradient_accumulation_steps", "256", "--steps_per_generation", "1024"),
     "README: 1 GPU, SimpleRL batch"),
    (QWEN_GRPO.format("1.5B", "simplerl_zoo"), "zero3", 32,
     ("--gradient_accumulation_steps", "16", "--steps_per_generation", "64"),
     "README: 4 nodes x 8 GPUs"),
    (QWEN_GRPO.format("1.5B", "simplerl_zoo"), "zero2", 7, VLLM_SERVER,
     "README: vLLM server on GPU 7"),
    *[(QWEN_GRPO.format(size, variant), launcher, None, CONTINUOUS_BATCHING, "fallback")
      for size, variant in (("0.5B", "simplerl_zoo"), ("1.5B", "simplerl_zoo"), ("1.5B", "lora"))
      for launcher in ("plain", "zero2")],
    (QWEN_GRPO.format("1.5B", "simplerl_zoo"), "zero2", None, PLAIN_GENERATE,
     "neither: one generate() call"),
    (QWEN_GRPO.format("1.5B", "simplerl_zoo"), "plain", None, PLAIN_GENERATE,
     "neither: one generate() call"),
]


def launch_table(card_gb: float = 80.0) -> str:
    """Markdown: the plan of every Qwen GRPO recipe under each launch the READMEs name."""
    from train.grpo import parse_args
    from train.models import architecture_of

    header = ("| recipe | launch | flags | generation | peak GB per GPU | rows generated at once | "
              f"{card_gb:g} GB GPUs |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for recipe, name, processes, flags, what in README_LAUNCHES:
        args, training_args, model_args = parse_args(["--config", recipe, "--use_cpu", "true", *flags])
        launcher = launcher_from_config(name, processes)
        arch = architecture_of(model_args.model_name_or_path)
        plan = plan_training(arch, args, training_args, model_args, launcher, card_gb)
        generation = ("vLLM server" if training_args.use_vllm and training_args.vllm_mode == "server"
                      else "vLLM colocate" if training_args.use_vllm
                      else "continuous batching" if training_args.use_transformers_continuous_batching
                      else "generate()")
        at_once = plan.rows if "generation KV" in plan.generation else plan.concurrent_rows
        at_once = "-" if at_once is None else f"{at_once} of {plan.rows}"
        shown = " ".join(f for f in flags if f not in VLLM_SERVER + CONTINUOUS_BATCHING)
        lines.append(f"| `{recipe.removeprefix('recipes/')}` | {name} x {launcher.processes} "
                     f"({what}) | {f'`{shown}`' if shown else ''} | {generation} | "
                     f"{plan.peak_gb:.1f} | {at_once} | {'fits' if plan.fits else 'does NOT fit'} |")
    return "\n".join(lines)


def main() -> None:
    print(launch_table())


if __name__ == "__main__":
    main()
