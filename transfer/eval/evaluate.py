"""Benchmark evaluation of RAST: large base vs large + RL delta of a small pair vs RL references.

Every system (L base alone, L + RAST for each lambda, optionally L's own RL model, the small RL
and small base models alone) decodes the same prompts with the same per-sample seeds through
one engine. Each graded sample is appended to `output_dir/samples.jsonl` as its batch finishes,
so a killed run resumes where it stopped when started again with the same output_dir; every
number in `summary.json`, `results.md`, the plots and W&B is recomputed from that file.

    python -m transfer.eval.evaluate --config recipes/tiny/rast/config_cpu.yaml          # make transfer
    python -m transfer.eval.evaluate --config recipes/Qwen2.5-32B/rast/config_1.5B.yaml --limit 50
    python -m transfer.eval.evaluate --config recipes/Qwen2.5-32B/rast/config_1.5B.yaml --dry-run
    torchrun --nproc_per_node 4 -m transfer.eval.evaluate --config recipes/Qwen2.5-32B/rast/config_1.5B.yaml

Distributed (torchrun or `accelerate launch --num_processes N`, one or several nodes): rank k
decodes every world_size-th chunk of each (system, benchmark), the same chunks a single process
would decode, so tokens do not depend on the layout; it appends to samples.rank<k>.jsonl. After a
gloo barrier, rank 0 merges every file into samples.jsonl (canonical order, duplicates dropped)
and reports. All ranks must see one output_dir: across nodes it has to be a shared filesystem.
On a GPU node each process gets an equal share of the node's GPUs (CUDA_VISIBLE_DEVICES).
"""

import hashlib
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from train.data import benchmark_label, load_benchmark
from train.errors import UserError, exit_on_user_error
from train.grader import grade_batch_by_rule
from train.models import load_tokenizer, resolve_model, stop_token_ids
from train.pairing import resolve_pair
from train.prompts import render_prompt
from train.recipe import parse_recipe
from train.tiny.task import is_careful
from transfer.decode.backends import open_decoder
from transfer.decode.cached_model import CACHE_MODES  # torch: imported here, not at first use
from transfer.decode.decoder import (
    ENGINES,
    Decoder,
    LoadOptions,
    SamplingParams,
    acceptance_rate,
    since,
    sweepable,
    tokens_per_round,
)
from transfer.decode.loading import check_device, check_models
from transfer.deltas import Delta, check_lam, parse_combination, resolve_combination, resolve_delta
from transfer.eval import placement
from transfer.eval.distributed import barrier, pin_gpus_of_this_process, this_shard
from transfer.eval.placement import GB, describe
from transfer.eval.report import report, summarize
from transfer.eval.samples import ROLES, Sample, merge_samples, sample_files, system_name
from transfer.runlog import (
    SampleLog,
    changed_settings,
    chunks_to_do,
    claim_output_dir,
    write_json_atomic,
)

logger = logging.getLogger(__name__)


@dataclass
class TransferConfig:
    """One comparison; every field can be overridden on the command line (`--samples 8`)."""

    target: str = field(default="tiny-l", metadata={"help": "large base L: name, dir or hub id"})
    small_base: str | None = field(default=None, metadata={
        "help": "small base model S; empty = the `small_base` of small_rl's rast_pair.json"})
    small_rl: str = field(default="outputs/tiny-s-grpo", metadata={
        "help": "small RL model: a train.grpo output dir (full model or LoRA adapter) or a hub id"})
    target_rl: str | None = field(default=None, metadata={
        "help": "RL model of L's size (hkust-nlp/Qwen-2.5-32B-SimpleRL-Zoo), for recovery rate"})
    lam: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "RAST strength lambda; a list sweeps it (one L+RAST system each)"})
    combinations: list[str] = field(default_factory=list, metadata={
        "help": "more RAST systems, each over one or several small pairs whose deltas add up, "
                "spelled as the sum: '1*outputs/tiny-s-grpo + 0.5*outputs/tiny-m-grpo' (base "
                "from each rast_pair.json) or '0.5*(RL - BASE) + ...'"})
    include_small_rl: bool = field(default=True, metadata={"help": "also decode small RL alone"})
    include_small_base: bool = field(default=False, metadata={"help": "also decode S alone"})
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    samples: int = field(default=4, metadata={"help": "samples per problem (k of Avg@k)"})
    benchmarks: list[str] = field(default_factory=lambda: ["tiny"], metadata={
        "help": "'tiny' (multiplication held-out set), a train.data benchmark name, .jsonl or dir"})
    split: str = "test"
    limit: int | None = field(default=None, metadata={"help": "first N problems of each benchmark"})
    prompt_template: str = field(default="tiny", metadata={"help": "train.prompts template name"})
    stop_strings: list[str] = field(default_factory=list, metadata={
        "help": "stop when a completion's text contains one; its text is cut before it (the "
                "same rule for every system)"})
    stop_ids: list[int] | None = field(default=None, metadata={
        "help": "token ids that end a completion; empty = the target tokenizer's eos ids"})
    seed: int = 0
    batch_size: int = field(default=64, metadata={
        "help": "sequences decoded together (hf); vllm: samples logged together, while vLLM "
                "keeps its own batch full across them"})
    device: str | None = field(default=None, metadata={
        "help": "large model's device: cuda/cpu (default: cuda if any) or auto (spread over GPUs)"})
    cache: str = field(default="auto", metadata={
        "help": "engine KV cache: auto (CUDA graphs on one GPU, else dynamic), dynamic, static, "
                "cuda-graphs"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the engine's decode step (pays on long runs)"})
    speculative: bool = field(default=False, metadata={
        "help": "speculative RAST for every RAST system: S_RL drafts, L verifies (same "
                "distribution, other samples)"})
    draft_tokens: int | None = field(default=None, metadata={
        "help": "with speculative: drafts per round (hf: default adaptive; vllm: default 4); "
                "the samples' distribution does not depend on it"})
    engine: str = field(default="hf", metadata={
        "help": "hf: this project's engine (exact reference; device, cache, compile); vllm: "
                "vLLM (paged KV memory, continuous batching, tensor parallelism; the Qwen "
                "recipes' default)"})
    tensor_parallel_size: int = field(default=1, metadata={
        "help": "vllm: GPUs each model is split over (L and the small pair alike: heads must "
                "divide by it)"})
    gpu_memory_utilization: float | None = field(default=None, metadata={
        "help": "vllm: share of each GPU's memory it takes (default 0.9; on CPU, of host "
                "RAM, default: a 1 GiB KV cache instead)"})
    max_model_len: int | None = field(default=None, metadata={
        "help": "vllm: positions per sequence, prompt + completion (default: the models' "
                "context)"})
    enforce_eager: bool | None = field(default=None, metadata={
        "help": "vllm: no CUDA graphs or torch.compile (default: eager on CPU only)"})
    distributed_executor_backend: str | None = field(default=None, metadata={
        "help": "vllm: 'ray' to spread one model over several nodes (README)"})
    output_dir: str = "outputs/transfer-tiny"
    report_to: str = field(default="wandb", metadata={"help": "wandb or none"})
    wandb_project: str = "rast-transfer"
    wandb_group: str | None = field(default=None, metadata={
        "help": "W&B group; default: output_dir's name"})
    dry_run: bool = field(default=False, metadata={
        "help": "print the GPU plan (memory arithmetic from the registry) and exit; loads nothing"})
    gpus: int | None = field(default=None, metadata={
        "help": "dry run: plan for this many GPUs per node (default: this machine's, else 8)"})
    gpu_memory_gb: float | None = field(default=None, metadata={
        "help": "dry run: memory of one GPU in GB (default: this machine's, else 80)"})

    def __post_init__(self):
        self.lam = [check_lam(lam) for lam in self.lam]  # a sweep: one RAST system each
        self.small_base = self.small_base or None
        self.target_rl = self.target_rl or None
        self.stop_ids = [int(i) for i in self.stop_ids] if self.stop_ids else None
        if not all(isinstance(stop, str) and stop for stop in self.stop_strings):
            raise UserError(f"stop_strings must be non-empty strings, got {self.stop_strings}")
        if not self.lam:
            raise UserError("lam is empty: give at least one lambda (e.g. [1.0])")
        if self.samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise UserError("samples, batch_size and max_new_tokens must be >= 1")
        SamplingParams(self.temperature, self.top_p, max_new_tokens=self.max_new_tokens)  # checks
        if not self.benchmarks:
            raise UserError("benchmarks is empty: name at least one (e.g. [tiny] or [math500])")
        if self.report_to not in ("wandb", "none"):
            raise UserError(f"report_to must be 'wandb' or 'none', got {self.report_to!r}")

        for text in self.combinations:
            parse_combination(text)  # refuses a misspelt one before anything loads
        if self.cache not in CACHE_MODES:
            raise UserError(f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        if self.engine not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.draft_tokens is not None and not (self.speculative
                                                  and 0 <= self.draft_tokens <= 64):
            raise UserError(f"draft_tokens needs speculative: true and a value in [0, 64], got "
                            f"{self.draft_tokens}")
        if self.tensor_parallel_size < 1:
            raise UserError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")


@dataclass(frozen=True)
class System:
    """One decoding setup: `target` alone, or `target` + sum_i lam_i * (rl_i - base_i) over its
    `deltas` (transfer.deltas). role (samples.ROLES) and deltas say what it is; `name` is derived,
    for display and keys: "L+RAST(lam=0.5)" for the recipe's swept pair, and a `combination`
    spells its sum out ("L+RAST(1*tiny-s-grpo+0.5*tiny-m-grpo)")."""

    role: str
    target: str
    deltas: tuple[Delta, ...] = ()
    combination: bool = False  # a recipe's `combinations` entry (named by its terms)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")

    @property
    def name(self) -> str:
        if self.combination:
            return "L+RAST(" + "+".join(delta.label for delta in self.deltas) + ")"
        return system_name(self.role, self.deltas[0].lam if self.deltas else 0.0)

    def sized_small_models(self) -> list[str]:
        """The small models it loads as placement sizes them: each base once, and each RL model
        by its base's name (it has that size): [base, base] for one pair."""
        bases = [delta.pair.base for delta in self.deltas]
        return [*dict.fromkeys(bases), *bases]

    def describe(self) -> dict:
        return {"name": self.name, "role": self.role, "target": self.target,
                "deltas": [delta.to_dict() for delta in self.deltas],
                "combination": self.combination}


def parse_config(argv: list[str] | None = None) -> TransferConfig:
    (config,) = parse_recipe((TransferConfig,), argv, "transfer")
    return config


def build_systems(config: TransferConfig) -> list[System]:
    """Systems in table order; ones that share models are adjacent so an engine can be reused.
    Every pair is resolved here, once (train.pairing: which base, and that its weights are the
    ones the RL model was trained from); names that would key two systems' results are refused."""
    swept = resolve_delta(config.small_rl, config.small_base)
    pair = swept.pair
    systems = []
    if config.include_small_base:
        systems.append(System("S", pair.base))
    if config.include_small_rl and pair.lora:
        # A LoRA adapter dir cannot be decoded alone; S + 1 * (S_RL - S) equals S_RL up to fp32
        # rounding, through the engine's adapter path.
        systems.append(System("S_RL", pair.base, (swept.with_lam(1.0),)))
    elif config.include_small_rl:
        systems.append(System("S_RL", pair.rl))
    systems.append(System("L", config.target))
    systems += [System("RAST", config.target, (swept.with_lam(lam),)) for lam in config.lam]
    systems += [System("RAST", config.target, resolve_combination(text), combination=True)
                for text in config.combinations]
    if config.target_rl:
        systems.append(System("L_RL", config.target_rl))
    names = [system.name for system in systems]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"two systems would both be named {', '.join(twice)} (their samples "
                        f"would mix): give each RL model of a combination a directory of its own "
                        f"name, and list each lambda once")
    decoded = [(system.role, system.target, system.deltas) for system in systems]
    same = next((s.name for s, key in zip(systems, decoded) if decoded.count(key) > 1), None)
    if same:
        raise UserError(f"two systems decode the same deltas as {same} (a combination that "
                        f"restates a swept lambda): drop one of them")
    return systems


def _missing_locally(name: str) -> str | None:
    """None when `name` loads without the network, else the hub id that is not cached."""
    from huggingface_hub import try_to_load_from_cache


    path = resolve_model(name)  # UserError for unknown names and unbuilt tiny models
    if Path(path).is_dir():
        return None
    for filename in ("config.json", "adapter_config.json"):
        if isinstance(try_to_load_from_cache(path, filename), str):
            return None
    return path


def validate_models(systems: list[System]) -> None:
    """Fail in one line, before loading anything, when a model is neither local nor cached."""
    from huggingface_hub import constants

    names = dict.fromkeys(name for s in systems for name in (
        s.target, *(model for delta in s.deltas for model in (delta.pair.base, delta.pair.rl))))
    missing = [m for m in map(_missing_locally, names) if m]
    if not missing:
        return
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): "
                        f"{', '.join(missing)}; download them first (`hf download <id>`) or unset "
                        f"HF_HUB_OFFLINE where the hub is reachable")
    logger.info("not cached, will download: %s", ", ".join(missing))


def check_systems(systems: list[System], config: TransferConfig) -> list[int]:
    """Check every system's models (tokenizers, embedding rows) and the device before the first
    token is decoded: a mismatch found when the RAST system loads comes hours late. Returns the
    eos/pad ids that only a small model's tokenizer declares (a hub RL checkpoint's <|im_end|>)."""
    check_device("device", config.device)
    extra_stop_ids = set()
    for target, pairs in dict.fromkeys((s.target, tuple(d.pair for d in s.deltas if d.lam))
                                       for s in systems):
        extra_stop_ids.update(check_models(target, list(pairs))[1])
    return sorted(extra_stop_ids)


# What decodes a system's samples besides the system itself (systems.json). batch_size fixes
# which problems share a batch, and padding changes floats; speculative draws RAST's samples
# with other random numbers (same distribution), and so does the engine: a resumed run never
# mixes samples of the HF engine and vLLM under one system.
DECODING_SETTINGS = ("temperature", "top_p", "max_new_tokens", "seed", "prompt_template",
                     "batch_size", "split", "stop_strings", "stop_ids", "speculative", "engine")


def check_signatures(output_dir: Path, systems: list[System], config: TransferConfig) -> None:
    """Refuse to mix samples of one system name decoded with other settings in one output_dir."""
    decoding = {key: getattr(config, key) for key in DECODING_SETTINGS}
    # keys a systems.json of an older version lacks read as the field's default (off)
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(TransferConfig) if f.name in DECODING_SETTINGS}
    signatures = {s.name: {**s.describe(), **decoding} for s in systems}
    path = output_dir / "systems.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    for name, signature in signatures.items():
        if name not in stored:
            continue
        changes = changed_settings(_with_deltas(stored[name]), signature, defaults)
        if changes:
            raise UserError(f"{output_dir} already holds samples of {name} with other settings "
                            f"({changes}); use a new output_dir or the old settings")
    write_json_atomic(path, {**stored, **signatures})


def _with_deltas(old: dict) -> dict:
    """A systems.json entry of a version that described a system by small_base / small_rl / lam
    (and pairs), as deltas: the pairs were resolved the same way then, so they compare."""
    if "deltas" in old or "small_rl" not in old:
        return old
    terms = old.get("pairs") or ([(old["small_base"], old["small_rl"], old["lam"])]
                                 if old["small_rl"] else [])
    deltas = []
    for base, rl, lam in terms:
        try:
            deltas.append(Delta(resolve_pair(rl, base), lam).to_dict())
        except UserError:  # gone or changed: it cannot match a system decoded now
            deltas.append({"base": base, "rl": rl, "lam": lam})
    rest = {k: v for k, v in old.items() if k not in ("small_base", "small_rl", "lam", "pairs")}
    return {**rest, "deltas": deltas, "combination": bool(old.get("pairs"))}


def done_samples(log: SampleLog, system: System, benchmark: str) -> list[Sample]:
    return [r for r in log.records if r.system == system.name and r.benchmark == benchmark]


def check_problems(output_dir: Path, benchmarks: dict[str, list[dict]]) -> None:
    """Refuse to resume samples of a problem id that now names another problem (problems.json
    keeps a digest of each id's problem and answer): a benchmark file without ids numbers its
    rows, so a row added at its top credited every answer to the problem after it."""
    path = output_dir / "problems.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    digests = {label: {p["id"]: hashlib.sha256(json.dumps([p["problem"], p["answer"]]).encode())
                       .hexdigest()[:16] for p in problems}
               for label, problems in benchmarks.items()}
    for label, by_id in digests.items():
        changed = [pid for pid, digest in by_id.items()
                   if stored.get(label, {}).get(pid, digest) != digest]
        if changed:
            raise UserError(f"{output_dir} holds samples of {label} problems that the benchmark "
                            f"now gives other text or answers (ids {', '.join(changed[:5])}"
                            f"{', ...' if len(changed) > 5 else ''}): give its rows ids of their "
                            f"own, or use a new output_dir")
    write_json_atomic(path, {**stored, **{label: {**stored.get(label, {}), **by_id}
                                          for label, by_id in digests.items()}})


def problems_to_do(system: System, benchmark: str, problems: list[dict], config: TransferConfig,
                   log: SampleLog, shard: tuple[int, int] = (0, 1)
                   ) -> tuple[list[list[dict]], int]:
    """(this shard's chunks of problems that miss a sample, number of chunks it owns): the run
    log's fixed chunks (transfer.runlog.chunks_to_do) of one system and benchmark."""
    done = {(r.problem_id, r.sample_index) for r in done_samples(log, system, benchmark)}
    return chunks_of_problems(problems, done, config, shard)


def chunks_of_problems(problems: list[dict], done: set[tuple[str, int]], config: TransferConfig,
                       shard: tuple[int, int]) -> tuple[list[list[dict]], int]:
    """problems_to_do for a known set of (problem id, sample index) already logged."""
    by_id = {p["id"]: p for p in problems}
    todo, total = chunks_to_do(list(by_id), config.samples, config.batch_size, done, shard)
    return [[by_id[key] for key in chunk] for chunk in todo], total


def evaluate_system(decoder: Decoder, system: System, benchmark: str, problems: list[dict],
                    config: TransferConfig, params, stop_ids: list[int], log: SampleLog,
                    shard: tuple[int, int] = (0, 1)) -> None:
    """Decode, grade and log each (problem, sample) of this shard not yet logged."""

    own = done_samples(log, system, benchmark)
    done = {(r.problem_id, r.sample_index) for r in own}
    todo, total = chunks_of_problems(problems, done, config, shard)
    correct, graded = sum(r.correct for r in own), len(own)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"{system.name} {benchmark}",
               unit="batch")
    before = decoder.counters()
    by_key = {f"{benchmark}/{p['id']}": p for chunk in todo for p in chunk}
    prompts = [render_prompt(config.prompt_template, p["problem"]) for p in by_key.values()]
    # The decoder batches batch_size // samples consecutive prompts, so its batches are exactly
    # the run log's chunks (only the last chunk of a benchmark may be short, and it stays last).
    for completions in decoder.generate_batches(prompts, params, n=config.samples,
                                                seed=config.seed, keys=list(by_key),
                                                stop_ids=stop_ids, batch_size=config.batch_size,
                                                progress=False):
        new = [c for c in completions if (by_key[c.key]["id"], c.sample_index) not in done]
        grades = grade_batch_by_rule([by_key[c.key]["answer"] for c in new],
                                     [c.text for c in new])
        records = [Sample(system.name, system.role, benchmark, by_key[c.key]["id"],
                          c.sample_index, c.seed, c.text, g.extracted, g.correct, g.reason,
                          len(c.token_ids), c.finished, token_ids=c.token_ids, stop=c.stop,
                          careful=is_careful(c.text) if benchmark == "tiny" else None,
                          correct_paper=paper.correct, deltas=system.deltas)
                   for c, g, paper in zip(new, grades["default"], grades["paper"])]
        log.append(records)
        done.update((r.problem_id, r.sample_index) for r in records)
        correct, graded = correct + sum(r.correct for r in records), graded + len(records)
        bar.update(1)
        bar.set_postfix(acc=f"{correct / max(graded, 1):.3f}",
                        **_speculation_notes(since(decoder.counters(), before)))
    bar.close()
    counted = since(decoder.counters(), before)
    if counted and todo:  # whether speculation pays on this pair (else it turns itself off)
        logger.info("%s on %s, speculative: draft acceptance %.3f, %.2f tokens per round",
                    system.name, benchmark, acceptance_rate(counted), tokens_per_round(counted))


def _speculation_notes(counted: dict[str, int]) -> dict[str, str]:
    if not counted:
        return {}
    return {"draft_acceptance": f"{acceptance_rate(counted):.3f}",
            "tokens_per_round": f"{tokens_per_round(counted):.2f}"}


def load_decoder(system: System, config: TransferConfig) -> Decoder:

    if config.engine == "vllm":
        return open_decoder(system.target, system.deltas, LoadOptions(
            engine="vllm", tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len, enforce_eager=config.enforce_eager,
            distributed_executor_backend=config.distributed_executor_backend,
            # L alone has no draft: it decodes plainly, as on the HF engine
            speculative=config.speculative and any(delta.lam for delta in system.deltas),
            draft_tokens=config.draft_tokens))
    device, small_device = config.device, None
    if device == "auto":  # several GPUs: L's layers over the first ones, the pair on its own
        device, small_device = gpu_layout(system, config)
    return open_decoder(system.target, system.deltas, LoadOptions(
        device=device, small_device=small_device, cache=config.cache, compile=config.compile,
        speculative=config.speculative, draft_tokens=config.draft_tokens))


def gpu_layout(system: System, config: TransferConfig):
    """(large device map, small pair device) from transfer.eval.placement's plan for the visible
    GPUs; ("auto", None), accelerate's balanced spread, when the plan has no separate pair GPU."""
    import torch


    large = placement.model_facts(system.target)
    small = [placement.model_facts(name) for name in system.sized_small_models()]
    gpus = torch.cuda.device_count()
    if large is None or not small or None in small or gpus < 2:
        return "auto", None
    card_gb = torch.cuda.get_device_properties(0).total_memory / placement.GB
    tokens = placement.sequence_tokens(config.max_new_tokens)
    plan = placement.plan(large, small, config.batch_size, tokens, gpus, card_gb)
    if not plan.fits or plan.pair_gpu < plan.large_gpus:
        return "auto", None
    logger.info("placement: %s over GPU 0..%d, small pair on GPU %d", system.target,
                plan.large_gpus - 1, plan.pair_gpu)
    return placement.large_device_map(large.layers, plan.large_gpus), f"cuda:{plan.pair_gpu}"


def run(config: TransferConfig, make_decoder=load_decoder) -> dict:
    """Evaluate every system on every benchmark (resuming), then report; returns the summary."""

    systems = build_systems(config)
    if config.dry_run:
        return dry_run(config, systems)
    validate_models(systems)
    extra_stop_ids = check_systems(systems, config)
    labels = [benchmark_label(name) for name in config.benchmarks]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UserError(f"benchmarks {config.benchmarks} give two benchmarks the label "
                        f"{', '.join(twice)} (their samples would mix): rename one file")
    benchmarks = {label: load_benchmark(name, config.split, config.limit)
                  for label, name in zip(labels, config.benchmarks)}
    output_dir = Path(config.output_dir)
    rank = this_shard()[0]
    # One run per output_dir: rank 0 of every run takes .lock (the other ranks .lock.rank<k>).
    with claim_output_dir(output_dir, "evaluation", ".lock" if rank == 0 else f".lock.rank{rank}"):
        return decode_and_report(config, systems, benchmarks, output_dir, make_decoder,
                                 extra_stop_ids)


def decode_and_report(config: TransferConfig, systems: list[System], benchmarks: dict,
                      output_dir: Path, make_decoder, extra_stop_ids=()) -> dict:
    """Decode and log every system's missing samples, then report from the log (rank 0)."""
    rank, world_size = shard = this_shard()
    if rank == 0:  # one writer of systems.json; the others wait until it is checked
        check_signatures(output_dir, systems, config)
        check_problems(output_dir, benchmarks)
        write_json_atomic(output_dir / "config.json", asdict(config))
    barrier(world_size)
    # One SamplingParams and one stop list for every system: the same stop rule for all.
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens,
                            stop_strings=tuple(config.stop_strings))
    # One list for every system: the recipe's stop ids, else the target's and any a small
    # model's tokenizer adds.
    stop_ids = config.stop_ids or sorted({*stop_token_ids(load_tokenizer(config.target)),
                                          *extra_stop_ids})
    own_file = output_dir / ("samples.jsonl" if world_size == 1 else f"samples.rank{rank}.jsonl")
    log = SampleLog(own_file, Sample, [path for path in sample_files(output_dir)
                                       if path != own_file])
    decoder, loaded = None, None  # the decoder, and the system it was loaded for
    for system in systems:
        if not any(problems_to_do(system, label, problems, config, log, shard)[0]
                   for label, problems in benchmarks.items()):
            continue  # finished in an earlier run: do not even load its models
        if (decoder is not None and system.target == loaded.target
                and sweepable(loaded.deltas, system.deltas)):
            decoder = decoder.with_lams([delta.lam for delta in system.deltas])  # lambda sweep
        else:
            decoder = None  # free them first: L and L_RL may not fit in memory together
            decoder = make_decoder(system, config)
        loaded = system
        for label, problems in benchmarks.items():
            evaluate_system(decoder, system, label, problems, config, params, stop_ids, log,
                            shard)
    decoder = None
    barrier(world_size)
    if rank != 0:
        return {}
    records = log.records
    if len(sample_files(output_dir)) > 1:  # rank files of this or an earlier distributed run
        records = merge_samples(output_dir, [s.name for s in systems], benchmarks)
    problem_ids = {label: {p["id"] for p in problems} for label, problems in benchmarks.items()}
    summary = summarize(config, systems, problem_ids, records)
    report(summary, records, output_dir, config, benchmarks)
    return summary


def dry_run(config: TransferConfig, systems: list[System]) -> dict:
    """Print the systems and the GPU plan of the largest one; nothing is loaded or downloaded."""
    import torch


    detected = (torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory / GB
                if torch.cuda.is_available() else 0.0)
    small_models = max((s.sized_small_models() for s in systems), key=len)
    print("systems: " + ", ".join(
        f"{s.name} [{s.target}" + "".join(f" + {d.lam:g} x ({d.pair.rl} - {d.pair.base})"
                                          for d in s.deltas if d.lam)
        + "]" for s in systems))
    print(describe(config, small_models, config.gpus, config.gpu_memory_gb, detected,
                   config.engine, config.tensor_parallel_size, config.gpu_memory_utilization))
    return {}


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        pin_gpus_of_this_process()
        return run(parse_config(argv))


if __name__ == "__main__":
    main()
