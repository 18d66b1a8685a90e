"""The table of recipes/README.md: the memory plan (train.memory) of every Qwen GRPO recipe under
each launch the READMEs name. It parses recipes through train.grpo, which itself plans through
train.memory, so it lives here, above both.

    python -m train.launches
"""

from train.grpo import parse_args
from train.memory import launcher_from_config, plan_training
from train.models import architecture_of

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
