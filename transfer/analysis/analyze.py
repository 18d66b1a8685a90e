"""Token-level analysis of an RL delta: where it lives, whether it transfers across scales.

For a set of trajectories (an evaluation's `samples.jsonl`, or generated here with the RAST
engine), every model (large base L, its RL model L_RL if any, and each small pair S_i / S_i_RL)
runs ONE teacher-forced forward per trajectory batch (right-padded, so default position ids are
right), and every statistic of every position comes from those logits (transfer/analysis/token_stats.py):
path coverage, where KL(RL || base) concentrates, the tokens RL moves, the cross-scale cosine of
Delta R, the RAST distribution's KL and entropy. Writes summary.json, report.md, PNG plots and
positions.jsonl into output_dir, and W&B behind report_to (offline without credentials).

    python -m transfer.analysis.analyze --config recipes/tiny/analyze/config_cpu.yaml        # make analyze
    python -m transfer.analysis.analyze --config recipes/tiny/analyze/config_cpu.yaml \\
        --trajectories outputs/transfer-tiny/samples.jsonl --system RAST --lam 1 \\
        --evaluation outputs/transfer-tiny/samples.jsonl --report_to none
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from train.data import benchmark_label, load_benchmark
from train.errors import UserError, exit_on_user_error
from train.grader import grade_batch
from train.models import load_model, load_tokenizer, resolve_model
from train.pairing import resolve_pair
from train.prompts import render_prompt
from train.recipe import parse_recipe
from train.tiny.task import is_careful
from transfer.analysis.report import report, summarize
from transfer.analysis.token_stats import PositionLogits, position_stats
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.decode.loading import (
    check_device,
    check_pair_tokenizers,
    device_and_dtype,
    load_pairs,
)
from transfer.deltas import Delta, check_lam, resolve_delta
from transfer.eval.samples import ROLES, Sample, system_name
from transfer.runlog import claim_output_dir, read_records, write_json_atomic

logger = logging.getLogger(__name__)

POSITION_CHUNK = 1024  # positions per fp32 stats call: bounds memory at Qwen's 152k-token vocab


@dataclass
class AnalyzeConfig:
    """One analysis; every field can be overridden on the command line (`--limit 16`)."""

    target: str = field(default="tiny-l", metadata={"help": "large base L: name, dir or hub id"})
    small_rl: list[str] = field(default_factory=lambda: ["outputs/tiny-s-grpo"], metadata={
        "help": "small RL models (train.grpo outputs or hub ids); the first steers RAST, two or "
                "more give the cross-scale cosine"})
    small_base: list[str] = field(default_factory=list, metadata={
        "help": "base of each small_rl, same order; empty = each one's rast_pair.json"})
    target_rl: str | None = field(default=None, metadata={
        "help": "L's own RL model (e.g. outputs/tiny-l-grpo): cosine of Delta R vs L's delta"})
    lam: float = field(default=1.0, metadata={
        "help": "RAST strength: of the RAST distribution analysed, and of the RAST system whose "
                "trajectories (system: RAST) and per-problem gains are read"})
    trajectories: str | None = field(default=None, metadata={
        "help": "samples.jsonl of transfer.eval.evaluate (or its directory); empty = generate here"})
    system: str = field(default="S_RL", metadata={
        "help": "whose trajectories, by role: S_RL, S, L, L_RL, or RAST (the one at `lam`); read "
                "from `trajectories` or generated here"})
    benchmark: str = field(default="tiny", metadata={"help": "'tiny', a benchmark name or path"})
    split: str = "test"
    limit: int | None = field(default=64, metadata={"help": "first N problems"})
    samples: int = field(default=1, metadata={"help": "trajectories per problem"})
    prompt_template: str = "tiny"
    temperature: float = field(default=1.0, metadata={
        "help": "of trajectories generated here; 0 = greedy, as the paper measures path coverage "
                "(along L_RL's greedy trajectories)"})
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    batch_size: int = field(default=16, metadata={"help": "trajectories per forward"})
    evaluation: str | None = field(default=None, metadata={
        "help": "samples.jsonl with every system's graded samples: per-problem RAST gain, and "
                "lengths and behaviour words per system"})
    branching_words: list[str] = field(default_factory=lambda: [
        "alternatively", "another", "try", "suppose", "consider", "instead"])
    backtracking_words: list[str] = field(default_factory=lambda: [
        "however", "but", "mistake", "wrong", "actually", "again", "wait"])
    verification_words: list[str] = field(default_factory=lambda: [
        "check", "verify", "confirm", "substitute", "ensure", "double-check"])
    top_tokens: int = field(default=10, metadata={"help": "most up/down-weighted tokens listed"})
    min_shift: float = field(default=0.05, metadata={
        "help": "a position counts for a token when RL moves its probability by at least this"})
    example: int = field(default=-1, metadata={
        "help": "trajectory of the heat strip; -1 = the correct one (else any) with the largest "
                "total KL"})
    device: str | None = field(default=None, metadata={
        "help": "cuda, cpu or auto (spread over GPUs); default: cuda if any"})
    dtype: str | None = field(default=None, metadata={
        "help": "default bfloat16 on GPU, else float32"})
    torch_threads: int | None = field(default=1, metadata={"help": "CPU threads (1: tiny models)"})
    output_dir: str = "outputs/analyze-tiny"
    report_to: str = field(default="wandb", metadata={"help": "wandb or none"})
    wandb_project: str = "rast-analyze"

    def __post_init__(self):
        self.small_base = [base for base in self.small_base if base]
        self.trajectories = self.trajectories or None
        self.evaluation = self.evaluation or None
        self.target_rl = self.target_rl or None
        if not self.small_rl:
            raise UserError("small_rl is empty: name at least one small RL model")
        if self.small_base and len(self.small_base) != len(self.small_rl):
            raise UserError(f"{len(self.small_base)} small_base for {len(self.small_rl)} small_rl: "
                            f"give one base per RL model, or none to read rast_pair.json")
        if self.samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise UserError("samples, batch_size and max_new_tokens must be >= 1")
        if self.report_to not in ("wandb", "none"):
            raise UserError(f"report_to must be 'wandb' or 'none', got {self.report_to!r}")
        if self.system not in ROLES:
            raise UserError(f"system must be one of {', '.join(ROLES)} (RAST: the one at lam), "
                            f"got {self.system!r}")
        check_lam(self.lam)
        if self.system == "L_RL" and self.trajectories is None and not self.target_rl:
            raise UserError("system L_RL needs target_rl")

    @property
    def lexicons(self) -> dict[str, list[str]]:
        return {"branching": self.branching_words, "backtracking": self.backtracking_words,
                "verification": self.verification_words}


@dataclass
class Trajectory:
    problem_id: str
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]  # the completion, teacher-forced
    text: str
    correct: bool | None
    stopped: bool = False  # its last token is the one that stopped it (a stop id or the token
    # completing a stop string); False: cut at max_new_tokens. Path coverage leaves it out.


@dataclass
class Models:
    tokenizer: object
    large: object
    pairs: list[tuple[object, object]]  # (small_base, small_rl) per config.small_rl
    large_rl: object | None
    names: dict[str, str]  # "L", "L_RL", "S0", "S0_RL", ... -> what was loaded
    rast: tuple[Delta, ...]  # the RAST system analysed: the first pair at config.lam

    def deltas_of(self, role: str) -> tuple[Delta, ...]:
        """The deltas of the system with this role that the analysis reads or decodes."""
        return self.rast if role == "RAST" else ()


def parse_config(argv: list[str] | None = None) -> AnalyzeConfig:
    (config,) = parse_recipe((AnalyzeConfig,), argv, "analyze")
    return config


def load_models(config: AnalyzeConfig) -> Models:
    """Every model in eval mode; tokenizers checked compatible (Delta R adds logits id by id)."""
    # resolve_delta also refuses a base whose weights changed since its RL model was trained
    deltas = [resolve_delta(rl, base, config.lam) for rl, base in
              zip(config.small_rl, config.small_base or [None] * len(config.small_rl))]
    large_rl = resolve_pair(config.target_rl, config.target) if config.target_rl else None
    # "auto": accelerate spreads each model over the GPUs' memory still free when it loads
    device, _, dtype = device_and_dtype(config.device, config.dtype)
    check_device("device", device)
    target = resolve_model(config.target)
    tokenizer = load_tokenizer(target)
    for pair in [delta.pair for delta in deltas] + ([large_rl] if large_rl else []):
        check_pair_tokenizers(tokenizer, target, pair)
    loaded = {target: load_model(target, dtype=dtype, device_map=device).eval()}
    pairs = load_pairs([delta.pair for delta in deltas], dtype, device, loaded, shared_lora=False)
    names = {"L": config.target}
    for i, (delta, rl) in enumerate(zip(deltas, config.small_rl)):
        names |= {f"S{i}": delta.pair.base, f"S{i}_RL": rl}
    if large_rl is not None:
        names["L_RL"] = config.target_rl
        large_rl = load_pairs([large_rl], dtype, device, loaded, shared_lora=False)[0][1]
    return Models(tokenizer, loaded[target], pairs, large_rl, names, (deltas[0],))


def _problems(config: AnalyzeConfig) -> dict[str, dict]:

    return {p["id"]: p for p in load_benchmark(config.benchmark, config.split, config.limit)}


def read_samples(path_or_dir: str) -> list[Sample]:
    """An evaluation's sample log (samples.jsonl, or the directory holding it)."""
    path = Path(path_or_dir)
    path = path / "samples.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path_or_dir}: no samples.jsonl there; run `make transfer` first or "
                        f"leave trajectories empty to generate them")
    return read_records(path, Sample)


def recorded_decoding(trajectories: str) -> tuple[Path, dict]:
    """The evaluation config.json beside a samples.jsonl (transfer.eval.evaluate writes it: its
    prompt_template, temperature, ...) and its fields; {} where there is none (samples copied
    elsewhere)."""
    path = Path(trajectories)
    recorded = (path if path.is_dir() else path.parent) / "config.json"
    try:
        fields = json.loads(recorded.read_text())
    except (OSError, ValueError):
        return recorded, {}
    return recorded, fields if isinstance(fields, dict) else {}


def check_prompt_template(config: AnalyzeConfig, recorded: Path, fields: dict) -> None:
    """Refuse trajectories decoded under another prompt than the analysis would teacher-force
    them on: the positions would be analysed after the wrong prompt without a word."""
    template = fields.get("prompt_template")
    if template is not None and template != config.prompt_template:
        raise UserError(f"prompt_template {config.prompt_template!r} is not the one the "
                        f"trajectories were decoded with ({template!r}, {recorded}): set "
                        f"prompt_template: {template}")


def read_trajectories(config: AnalyzeConfig, models: Models, records: list[Sample]
                      ) -> list[Trajectory]:
    """The chosen system's samples of the first `limit` problems, `samples` per problem.

    Positions are the ids the engine sampled (Sample.token_ids, the stopping token included),
    never a re-tokenization of the text: byte-level BPE does not round-trip text into the ids a
    model chose, and a stop string's text is cut mid-token. A file without ids is refused.
    """

    problems = _problems(config)
    label = benchmark_label(config.benchmark)
    chosen = [r for r in records if r.of(config.system, models.deltas_of(config.system))
              and r.benchmark == label and r.problem_id in problems
              and r.sample_index < config.samples]
    if not chosen and config.system == "RAST" and any(r.deltas is None for r in records):
        raise UserError(f"{config.trajectories} was written before samples recorded their "
                        f"deltas, so its RAST system cannot be told from a combination: re-run "
                        f"the evaluation into a new output_dir")
    if not chosen:
        systems = sorted({r.system for r in records})
        raise UserError(f"no samples of system {config.system!r} (for RAST: the first small_rl "
                        f"at lam {config.lam:g}) on {label} in {config.trajectories}; systems "
                        f"there: {', '.join(systems)}")
    if any(r.token_ids is None for r in chosen):
        raise UserError(f"{config.trajectories} has samples without token_ids (written before "
                        f"samples kept them); analysis reads ids, never re-tokenized text: "
                        f"re-run the evaluation into a new output_dir")
    trajectories = []
    for r in sorted(chosen, key=lambda r: (r.problem_id, r.sample_index)):
        prompt = render_prompt(config.prompt_template, problems[r.problem_id]["problem"])
        trajectories.append(Trajectory(r.problem_id, r.sample_index,
                                       models.tokenizer(prompt)["input_ids"], list(r.token_ids),
                                       r.text, r.correct, stopped=r.finished))
    return trajectories


def generate_trajectories(config: AnalyzeConfig, models: Models) -> list[Trajectory]:
    """Decode config.system with the loaded models; graded records go to output_dir/samples.jsonl
    in transfer.eval.evaluate's format (plus token_ids), so --trajectories can reuse them."""

    tokenizer, (base, rl) = models.tokenizer, models.pairs[0]
    large = {"S_RL": rl, "S": base, "L": models.large, "L_RL": models.large_rl,
             "RAST": models.large}[config.system]
    deltas = models.deltas_of(config.system)
    engine = RastEngine(large, [(base, rl)] if deltas else [], [d.lam for d in deltas],
                        tokenizer=tokenizer, deltas=deltas)
    problems = list(_problems(config).values())
    prompts = [render_prompt(config.prompt_template, p["problem"]) for p in problems]
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens)
    completions = engine.generate(prompts, params, n=config.samples, seed=config.seed,
                                  keys=[p["id"] for p in problems], batch_size=config.batch_size)
    answers = {p["id"]: p["answer"] for p in problems}
    grades = grade_batch([answers[c.key] for c in completions], [c.text for c in completions])
    records = [Sample(system_name(config.system, config.lam), config.system, benchmark_label(config.benchmark), c.key,
                      c.sample_index, c.seed, c.text, g.extracted, g.correct, g.reason,
                      len(c.token_ids), c.finished, token_ids=c.token_ids, stop=c.stop,
                      careful=is_careful(c.text) if config.benchmark == "tiny" else None,
                      deltas=deltas)
               for c, g in zip(completions, grades)]
    partial = Path(config.output_dir) / "samples.jsonl.partial"  # a kill leaves the old file
    partial.write_text("".join(record.to_json() + "\n" for record in records))
    os.replace(partial, partial.with_suffix(""))
    prompt_ids = {p["id"]: tokenizer(prompt)["input_ids"] for p, prompt in zip(problems, prompts)}
    return [Trajectory(c.key, c.sample_index, prompt_ids[c.key], c.token_ids, c.text, g.correct,
                       stopped=c.finished) for c, g in zip(completions, grades)]


@torch.inference_mode()
def teacher_forced_logits(model, trajectories: list[Trajectory], pad_id: int) -> list[torch.Tensor]:
    """ONE forward of `model` over the batch; per trajectory, the logits [len(token_ids), rows]
    that predicted each of its completion tokens (position p - 1 predicts token p)."""
    sequences = [t.prompt_ids + t.token_ids for t in trajectories]
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    # Right padding: each row's real tokens sit at positions 0..len-1, exactly the default
    # position ids, and no real token attends to padding under the causal mask.
    device = model.get_input_embeddings().weight.device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    starts = [len(t.prompt_ids) - 1 for t in trajectories]
    return [logits[row, start:start + len(t.token_ids)]
            for row, (start, t) in enumerate(zip(starts, trajectories))]


def trajectory_stats(models: Models, trajectories: list[Trajectory], lam: float,
                     batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Per trajectory, every token_stats statistic per completion position (CPU tensors)."""

    shared_vocab = len(models.tokenizer)
    pad_id = models.tokenizer.pad_token_id or 0  # any id: padded positions are masked out
    stats = []
    for start in tqdm(range(0, len(trajectories), batch_size), desc="teacher-forced", unit="batch"):
        batch = trajectories[start:start + batch_size]
        large = teacher_forced_logits(models.large, batch, pad_id)
        large_rl = (teacher_forced_logits(models.large_rl, batch, pad_id)
                    if models.large_rl is not None else [None] * len(batch))
        pairs = [(teacher_forced_logits(base, batch, pad_id),
                  teacher_forced_logits(rl, batch, pad_id)) for base, rl in models.pairs]
        for row, trajectory in enumerate(batch):
            targets = torch.tensor(trajectory.token_ids)
            chunks = []
            for chunk in range(0, len(targets), POSITION_CHUNK):
                cut = slice(chunk, chunk + POSITION_CHUNK)
                logits = PositionLogits(
                    large[row][cut], [(base[row][cut], rl[row][cut]) for base, rl in pairs],
                    None if large_rl[row] is None else large_rl[row][cut])
                chunks.append(position_stats(logits, targets[cut], lam=lam,
                                             shared_vocab=shared_vocab))
            stats.append({key: torch.cat([c[key] for c in chunks]).cpu() for key in chunks[0]})
    return stats


def run(config: AnalyzeConfig) -> dict:
    """Load, get trajectories, one teacher-forced pass, summarize, report; returns the summary."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    evaluation = read_samples(config.evaluation) if config.evaluation else None
    records = read_samples(config.trajectories) if config.trajectories else None  # before loading
    temperature = config.temperature  # of the trajectories: the paper's coverage wants 0
    if config.trajectories:
        recorded, fields = recorded_decoding(config.trajectories)
        check_prompt_template(config, recorded, fields)
        temperature = fields.get("temperature")  # None: not recorded
    output_dir = Path(config.output_dir)
    with claim_output_dir(output_dir, "analysis"):
        models = load_models(config)
        if records is not None:
            trajectories = read_trajectories(config, models, records)
        else:
            trajectories = generate_trajectories(config, models)
        dropped = sum(not t.token_ids for t in trajectories)
        trajectories = [t for t in trajectories if t.token_ids]
        if not trajectories:
            raise UserError("every trajectory is empty: nothing to analyse")
        if dropped:
            logger.warning("skipping %d empty trajectories", dropped)
        stats = trajectory_stats(models, trajectories, config.lam, config.batch_size)
        summary = summarize(config, models, trajectories, stats, evaluation, temperature)
        report(summary, config, models.tokenizer, trajectories, stats, output_dir)
        write_json_atomic(output_dir / "config.json", asdict(config))
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with exit_on_user_error():
        return run(parse_config(argv))


if __name__ == "__main__":
    main()
