"""RAST decoding engine: a large base model steered by a small RL model pair, exact and cached.

Every model keeps its own KV cache; each prompt is prefilled once per model (n samples share the
prefill), then every generated token costs exactly one forward per model fed only that token.
Finished rows leave the batch (their cache rows are dropped), so they stop costing compute. The
base and RL small logits come from ONE forward of the pair stacked (transfer.decode.stacked_pair): of
the two models' weights batched together when the RL model has full weights, of one set of
weights when it is a LoRA adapter of the small base. lam = 0, or no small pair, is plain decoding
of the large model through this same loop, so baselines and RAST share every line. Several small
pairs add their deltas (lists of small_base / small_rl / lam; small models of one size share one
stacked forward).

    from transfer.decode.engine import RastEngine, SamplingParams
    engine = RastEngine.from_pretrained("tiny-l", small_rl="outputs/tiny-s-grpo", lam=1.0)
    completions = engine.generate(["Q: 47*8=\\nA: "], SamplingParams(max_new_tokens=64), n=4)

The command-line front end is `python -m transfer.generate --help`.
"""

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import DynamicCache

from train.errors import UserError
from train.models import (
    embedding_rows,
    load_model,
    load_tokenizer,
    resolve_model,
    stop_token_ids,
)
from train.pairing import Pair, resolve_pair
from transfer.decode.rast import (
    check_tokenizers_compatible,
    combine_pairs,
    sample_seed,
    sample_tokens,
)
from transfer.decode.speculative import Speculation
from transfer.decode.stacked_pair import lora_unstackable, stack_lora, stack_models, unstackable
from transfer.decode.static_cache import (
    BufferPool,
    StaticDecoder,
    compiled_decode_step,
    compiled_verify_step,
    decode_step,
    supports_static,
    verify_step,
)
from transfer.decode.stops import StopBy, completion_text, find_stop

logger = logging.getLogger(__name__)

RL_ADAPTER = "rl"  # name the LoRA adapter is loaded under for shared-weight mode
POOL_BUDGET_BYTES = 2 * 2**30  # KV bytes of idle static buffers (and graphs) kept per model


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    # Stop when the decoded completion contains one of these; its text is cut before it
    # (transfer.decode.stops). The RAST runner's list stops a plain-prompt base model that starts
    # a second "Question:"/"user" turn. Empty: only stop ids end a completion.
    stop_strings: tuple[str, ...] = ()
    # A prompt that does not leave max_new_tokens positions of the model's context is refused;
    # True keeps its last (context - max_new_tokens) tokens instead, with a warning.
    truncate_prompts: bool = False

    def __post_init__(self):
        self.stop_strings = tuple(self.stop_strings)
        if not all(isinstance(stop, str) and stop for stop in self.stop_strings):
            raise UserError(f"stop_strings must be non-empty strings, got {self.stop_strings}")
        # NaN passes every comparison below: --lam nan --temperature 0 decoded argmax(NaN) = id 0,
        # the end token, and reported empty "finished" completions.
        for name in ("temperature", "top_p"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Completion:
    key: str
    sample_index: int
    seed: int
    token_ids: list[int]  # every sampled id, ending with the one that stopped it when finished
    text: str  # decoded token_ids cut before the stop: without a stop id, before a stop string
    finished: bool  # False: cut at max_new_tokens
    stop: StopBy = None  # what ended it: a stop id, a stop string, or None (max_new_tokens)


class CachedModel:
    """One model of the decode loop: its KV cache, attention mask and next positions, plus counters.

    copies > 1: every call runs the batch that many times in ONE forward and returns one logits
    tensor per copy. For a stacked pair (transfer.decode.stacked_pair) the copies meet different
    weights; with `adapters` = ("__base__", "rl") the model is a peft LoRA model and copy i runs
    adapter i (peft mixed-adapter batch, which needs eval mode).

    cache: "dynamic" (a DynamicCache that grows and drops finished rows at once), "static" (fixed
    buffers after prefill, transfer.decode.static_cache) or "cuda-graphs" (static, each step replayed as
    a CUDA graph); "auto" takes cuda-graphs for a model on one GPU, else dynamic (static when
    compiling). compile: torch.compile the fixed-shape step (fuses kernels; costs tens of seconds
    once per model and process, so it pays on long runs). overlap: with cuda-graphs, replay on a
    stream of this model's own, so RastEngine can run the three models' steps concurrently.
    """

    def __init__(self, name: str, model, copies: int = 1, adapters: tuple[str, ...] | None = None,
                 cache: str = "auto", compile: bool = False, overlap: bool = True):
        if adapters is not None and len(adapters) != copies:
            raise ValueError(f"{len(adapters)} adapters for {copies} copies")
        self.name, self.model = name, model.eval()
        self.adapters, self.copies = adapters, copies
        self.input_device = model.get_input_embeddings().weight.device
        self.cache_mode = _cache_mode(name, model, adapters, cache, compile)
        self.static, self.pool = None, BufferPool(POOL_BUDGET_BYTES)
        self.step_fn = compiled_decode_step() if compile else decode_step
        self.verify_fn = compiled_verify_step() if compile else verify_step
        self.stream = (torch.cuda.Stream(self.input_device)
                       if overlap and self.cache_mode == "cuda-graphs" else None)
        self.prefill_calls = self.prefill_rows = self.decode_calls = self.decode_rows = 0

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                max_new_tokens: int) -> list[torch.Tensor]:
        """Start a fresh cache with left-padded prompts; last-position logits per copy."""
        if self.static is not None:
            self.static.close()  # its buffers (and CUDA graph) wait in the pool for reuse
        self.cache, self.static = DynamicCache(config=self.model.config), None
        self.max_columns = input_ids.shape[1] + max_new_tokens
        self.batch = input_ids.shape[0]  # rows of the caller's batch (each run `copies` times)
        self.attention_mask = self._tile(attention_mask.to(self.input_device))
        # Left padding: a row's positions count its real tokens only, as generate() does;
        # without this every padded row would be shifted and differ from decoding it alone.
        positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1:] + 1
        self.prefill_calls += 1
        input_ids = self._tile(input_ids.to(self.input_device))
        self.prefill_rows += input_ids.shape[0]
        return self._forward(input_ids, positions)

    def decode(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Feed one new token per row [rows]; next-token logits per copy."""
        self.decode_calls += 1
        tokens = self._tile(token_ids.to(self.input_device))
        if self.cache_mode != "dynamic":
            self.decode_rows += self._fixed_buffers().rows
            return list(self.static.step(tokens).chunk(self.copies))
        tokens = tokens[:, None]
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(tokens)], dim=-1)
        positions, self.next_position = self.next_position, self.next_position + 1
        self.decode_rows += tokens.shape[0]
        return self._forward(tokens, positions)

    def verify(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Feed `width` tokens per row [rows, width] in ONE forward (speculative decoding's
        verify pass); logits at every position [rows, width, vocab] per copy. Counted as a
        decode call computing rows x width rows."""
        self.decode_calls += 1
        width = token_ids.shape[1]
        tokens = self._tile(token_ids.to(self.input_device))
        if self.cache_mode != "dynamic":
            self.decode_rows += self._fixed_buffers().rows * width
            return list(self.static.verify(tokens).chunk(self.copies))
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(tokens.shape)], dim=-1)
        offsets = torch.arange(width, device=self.input_device)
        positions, self.next_position = self.next_position + offsets, self.next_position + width
        self.decode_rows += tokens.numel()
        return self._forward(tokens, positions, keep=width)

    def rollback(self, fed: int, keep: torch.Tensor) -> None:
        """Of the last `fed` tokens fed, row i keeps its first keep[i] [rows] (speculative
        decoding's accepted drafts); the rest of each row is masked out and its next position
        moves back, and columns no row keeps are cut from the cache."""
        keep = self._tile(keep.to(self.input_device))
        if self.static is not None:
            self.static.rollback(fed, keep)
            return
        dropped = torch.arange(fed, device=self.input_device)[None, :] >= keep[:, None]
        self.attention_mask[:, -fed:].masked_fill_(dropped, 0)
        self.next_position = self.next_position - (fed - keep)[:, None]
        unused = fed - int(keep.max())
        if unused > 0:
            self.cache.crop(-unused)
            self.attention_mask = self.attention_mask[:, :-unused]

    def _fixed_buffers(self) -> StaticDecoder:
        """The static decoder; the first call after prefill moves the cache into fixed buffers."""
        if self.static is None:
            self.static = StaticDecoder(self.model, self.pool, self.cache, self.attention_mask,
                                        self.next_position, self.max_columns,
                                        cuda_graphs=self.cache_mode == "cuda-graphs",
                                        step_fn=self.step_fn, verify_fn=self.verify_fn)
            self.cache = None
        return self.static

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows of the batch, in this order, in the cache and the mask."""
        rows = rows.to(self.input_device)
        tiled = torch.cat([rows + copy * self.batch for copy in range(self.copies)])
        self.batch = len(rows)
        if self.static is not None:
            self.static.keep_rows(tiled)
            return
        self.cache.reorder_cache(tiled)  # index_select per layer, on each layer's own device
        self.attention_mask = self.attention_mask[tiled]
        self.next_position = self.next_position[tiled]

    def _tile(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor] * self.copies) if self.copies > 1 else tensor

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 keep: int = 0) -> list[torch.Tensor]:
        """Logits of the last position per copy [rows, vocab]; keep > 0: of the last `keep`
        positions [rows, keep, vocab]."""
        extra = {}
        if self.adapters:  # peft needs adapter_names at every step, cache or not
            rows = input_ids.shape[0] // self.copies
            extra["adapter_names"] = [name for name in self.adapters for _ in range(rows)]
        output = self.model(input_ids=input_ids, attention_mask=self.attention_mask,
                            position_ids=position_ids, past_key_values=self.cache, use_cache=True,
                            logits_to_keep=max(keep, 1), **extra)
        logits = output.logits if keep else output.logits[:, -1]
        return list(logits.chunk(self.copies))


CACHE_MODES = ("auto", "dynamic", "static", "cuda-graphs")


def _cache_mode(name: str, model, adapters, cache: str, compile: bool = False) -> str:
    """Resolve "auto" and refuse a mode this model cannot run."""
    if cache not in CACHE_MODES:
        raise UserError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    devices = {param.device for param in model.parameters()}
    one_gpu = len(devices) == 1 and next(iter(devices)).type == "cuda"
    unfit = ("it is a LoRA pair (peft's mixed batch indexes on the host)" if adapters else
             None if supports_static(model) else "it has sliding-window attention layers")
    if cache == "auto" and unfit:
        cache = "dynamic"
    elif cache == "auto":
        cache = "cuda-graphs" if one_gpu else "static" if compile else "dynamic"
    if cache != "dynamic" and unfit:
        raise UserError(f"cache={cache} does not fit the {name} model: {unfit}; use cache=dynamic")
    if compile and cache == "dynamic":
        raise UserError(f"compile needs cache=static or cuda-graphs, and the {name} model runs "
                        f"cache=dynamic{f' ({unfit})' if unfit else ''}: drop compile")
    if cache == "cuda-graphs" and not one_gpu:
        raise UserError(f"cache=cuda-graphs needs the {name} model on one GPU, it is on "
                        f"{sorted(map(str, devices))}: use cache=dynamic or static")
    return cache


class RastEngine:
    """Decode prompts with softmax(z_large + lam * (z_small_rl - z_small_base)).

    Takes loaded models; `from_pretrained` loads them by name. `small_rl` is the RL model, or the
    name of a LoRA adapter loaded into `small_base` (a peft model) for shared-weight mode.
    `tokenizer` gives the shared vocabulary (its length) and text; without one (random-weight
    benchmarks on ids) pass `vocab_size` and use `decode`. `stack_small`: run the small pair as
    one stacked model where it can (transfer.decode.stacked_pair: one forward for both, no extra memory;
    full-weight models' parameters become views of the stacked weights), else as two models (a
    LoRA pair: peft's mixed-adapter batch, which only runs cache=dynamic). `cache` picks each
    model's KV cache and `compile` compiles its step (see CachedModel): "auto" replays CUDA
    graphs for every model on a single GPU. With graphs, each model's step runs on its own CUDA
    stream (`overlap`): the small pair's many tiny kernels, which leave most of the GPU idle, run
    beside the large model's bandwidth-bound ones instead of after them. `default_stop_ids`: the
    large model's (train.models.stop_token_ids) plus `extra_stop_ids`, where from_pretrained puts
    the eos/pad ids only the small models' tokenizers declare.

    `speculative`: S_RL drafts tokens that L verifies in one forward, sampling exactly the same
    distribution (transfer.decode.speculative; `draft_tokens` k per round, None = adaptive from
    the running acceptance rate and step times, down to 0 where drafting does not pay). Greedy
    output is the plain loop's; sampled tokens differ from the plain loop's but not in
    distribution. It needs a small pair: with lam = 0 the pair then only drafts.

    Several small pairs: small_base and small_rl are lists (pair i = small_base[i], small_rl[i])
    and lam a list of one lambda per pair, or one number for all; the logits are then
    z_large + sum_i lam[i] * (z_rl_i - z_base_i) (transfer.decode.rast.combine_pairs). The small
    models of one architecture and size run as one stacked model (2n row blocks; a model two
    pairs share counts once), other sizes and LoRA pairs as units of their own; the first pair's
    RL model drafts for speculation.
    """

    def __init__(self, large, small_base=None, small_rl=None, *,
                 lam: float | list[float] = 1.0, tokenizer=None, vocab_size: int | None = None,
                 stack_small: bool = True, cache: str = "auto", compile: bool = False,
                 overlap: bool = True, extra_stop_ids=(), speculative: bool = False,
                 draft_tokens: int | None = None):
        bases, rls = _as_list(small_base), _as_list(small_rl)
        if len(bases) != len(rls):
            raise ValueError(f"give as many small_base as small_rl ({len(bases)} vs {len(rls)})")
        self.lams, self.tokenizer = pair_lams(lam, len(rls)), tokenizer
        self.shared_vocab = len(tokenizer) if tokenizer is not None else vocab_size
        if self.shared_vocab is None:
            raise ValueError("pass a tokenizer or vocab_size")
        for name, model in (("large", large), *(("small_base", m) for m in bases),
                            *(("small_rl", m) for m in rls)):
            if not isinstance(model, str):  # str: a LoRA adapter's name
                check_embedding_rows(name, model.config.vocab_size, self.shared_vocab)
        options = {"cache": cache, "compile": compile, "overlap": overlap}
        self.large = CachedModel("large", large, **options)
        plain = not rls or (not any(self.lams) and not speculative)  # the large model alone
        # self.slots[i]: where pair i's (base, RL) logits sit among the small units' outputs
        self.small, self.slots = (([], []) if plain else
                                  _small_units(bases, rls, stack_small, options))
        # Speculative RAST needs S_RL as its draft; without a small pair it is plain decoding.
        self.speculative = (Speculation(draft_tokens) if speculative and self.small else None)
        own_stop_ids = (stop_token_ids(tokenizer, large.generation_config)
                        if tokenizer is not None else [])
        self.default_stop_ids = sorted({*own_stop_ids, *extra_stop_ids})

    @classmethod
    def from_pretrained(cls, target: str, small_base: str | list | None = None,
                        small_rl: str | list[str] | None = None, lam: float | list[float] = 1.0,
                        device=None, dtype=None, small_device=None, stack_small: bool = True,
                        cache: str = "auto", compile: bool = False, speculative: bool = False,
                        draft_tokens: int | None = None) -> "RastEngine":
        """Load a RAST triple by registry name, local directory or hub id.

        target is the large base L. small_rl may be a full model or a LoRA adapter directory of
        small_base (shared weights); with small_base None it must be a train.grpo output holding
        rast_pair.json (train.pairing.resolve_pair). Several pairs: lists of small_rl, of
        small_base (None entries, or None for all: each one's rast_pair.json) and of lam (or one
        lam for all); a pair at lam 0 is not loaded. device: a device, "auto" or an accelerate
        device map dict for the large model (multi-GPU); small_device defaults to the last GPU
        then, else to device. dtype: bf16 on GPU, fp32 on CPU. stack_small, cache, compile,
        speculative, draft_tokens: see RastEngine and CachedModel.
        """
        rls = _as_list(small_rl)
        bases = _as_list(small_base) or [None] * len(rls)
        if not rls and small_base is not None:
            raise UserError(f"small_base {small_base!r} given without small_rl: pass both, or "
                            f"neither to decode the large model alone")
        if len(bases) != len(rls):
            raise UserError(f"{len(bases)} small_base for {len(rls)} small_rl: give one base per "
                            f"RL model, or none to read each one's rast_pair.json")
        lams = pair_lams(lam, len(rls))
        # with speculation the first pair's S_RL drafts, even at lam = 0
        keep = [i for i in range(len(rls)) if lams[i] != 0 or (speculative and i == 0)]
        pairs = [resolve_pair(rls[i], bases[i]) for i in keep]
        large_map, small_map, dtype = device_and_dtype(device, dtype, small_device)
        check_device("device", large_map)
        check_device("small device", small_map)
        target = resolve_model(target)
        # The small models' own eos/pad (an RL checkpoint's <|im_end|>, say) also end a completion.
        tokenizer, extra_stop_ids = check_models(target, pairs)
        large_model = load_model(target, dtype=dtype, device_map=large_map)
        if not pairs:
            logger.info("decoding %s alone (lam=%s, small pairs: %s)", target, lam, small_rl)
            return cls(large_model, tokenizer=tokenizer, lam=0.0, cache=cache, compile=compile)
        loaded = {}  # a model several pairs name is loaded once

        def load(name: str):
            if name not in loaded:
                loaded[name] = load_model(name, dtype=dtype, device_map=small_map)
            return loaded[name]

        small_bases, small_rls = [], []
        for i, pair in enumerate(pairs):
            if pair.lora:  # the adapter goes into a base of its own, loaded for it
                logger.info("%s is a LoRA adapter of %s: one shared forward", pair.rl, pair.base)
                adapter = RL_ADAPTER if i == 0 else f"{RL_ADAPTER}{i}"
                small_bases.append(PeftModel.from_pretrained(
                    load_model(pair.base, dtype=dtype, device_map=small_map), pair.rl,
                    adapter_name=adapter))
                small_rls.append(adapter)
            else:
                small_bases.append(load(pair.base))
                small_rls.append(load(pair.rl))
        return cls(large_model, small_bases, small_rls, lam=[lams[i] for i in keep],
                   tokenizer=tokenizer, stack_small=stack_small, cache=cache, compile=compile,
                   speculative=speculative, draft_tokens=draft_tokens,
                   extra_stop_ids=extra_stop_ids)

    def generate_batches(self, prompts: list[str], params: SamplingParams, n: int = 1,
                         seed: int = 0, keys: list[str] | None = None,
                         stop_ids: list[int] | None = None, batch_size: int = 16,
                         progress: bool = True) -> Iterator[list[Completion]]:
        """Yield the completions of each batch as it finishes, ordered by (prompt, sample).

        batch_size counts sequences decoded together; a batch holds max(1, batch_size // n)
        prompts with all n samples of each (so a prompt is never prefilled twice). The seed of
        sample i of a prompt is sample_seed(seed, key, i), key defaulting to the prompt text.
        """
        keys = list(prompts) if keys is None else list(keys)
        if len(keys) != len(prompts):
            raise UserError(f"{len(keys)} keys for {len(prompts)} prompts")
        not_text = next((i for i, prompt in enumerate(prompts) if not isinstance(prompt, str)), None)
        if not_text is not None:
            raise UserError(f"prompt {keys[not_text]!r} is a {type(prompts[not_text]).__name__}, "
                            f"not a string: give every prompt as text")
        # Every prompt is tokenized and fitted to the context before the first token is decoded.
        all_ids = self.fit_context(self.tokenizer(list(prompts))["input_ids"] if prompts else [],
                                   params, keys)
        prompts_per_batch = max(1, batch_size // n)
        bar = tqdm(total=len(prompts), unit="prompt", desc="decode", disable=not progress)
        for start in range(0, len(prompts), prompts_per_batch):
            batch_keys = keys[start:start + prompts_per_batch]
            seeds = [[sample_seed(seed, key, i) for i in range(n)] for key in batch_keys]
            prompt_ids = all_ids[start:start + prompts_per_batch]
            rows = iter(self.decode(prompt_ids, seeds, params, stop_ids))
            completions = []
            for key, key_seeds in zip(batch_keys, seeds):
                for index, row_seed in enumerate(key_seeds):
                    ids, stop = next(rows)
                    text = completion_text(ids, stop, params.stop_strings, self.tokenizer.decode)
                    completions.append(Completion(key, index, row_seed, ids, text,
                                                  stop is not None, stop))
            bar.update(len(batch_keys))
            yield completions
        bar.close()

    def generate(self, prompts: list[str], params: SamplingParams, n: int = 1, seed: int = 0,
                 keys: list[str] | None = None, stop_ids: list[int] | None = None,
                 batch_size: int = 16, progress: bool = True) -> list[Completion]:
        """All completions, ordered by (prompt, sample); see generate_batches."""
        batches = self.generate_batches(prompts, params, n, seed, keys, stop_ids, batch_size,
                                        progress)
        return [completion for batch in batches for completion in batch]

    @torch.inference_mode()
    def decode(self, prompt_ids: list[list[int]], seeds: list[list[int]], params: SamplingParams,
               stop_ids: list[int] | None = None,
               on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
               ) -> list[tuple[list[int], StopBy]]:
        """Decode token ids: len(seeds[p]) samples of prompt p, one seed each (ignored when greedy).

        Returns (generated ids, what stopped it) per row, prompt-major: a stop id, a stop string
        of params.stop_strings (transfer.decode.stops.find_stop), or None at max_new_tokens.
        on_step(rows, combined_logits) sees every step's fp32 combined logits and which rows they
        belong to (for tests).
        """
        if any(len(ids) == 0 for ids in prompt_ids):
            raise UserError("empty prompt: every prompt needs at least one token")
        if params.stop_strings and self.tokenizer is None:
            raise UserError("stop_strings need a tokenizer to decode text: load the engine with "
                            "one, or drop stop_strings")
        prompt_ids = self.fit_context(prompt_ids, params)
        stop = set(self.default_stop_ids if stop_ids is None else stop_ids)
        text_of = self.tokenizer.decode if params.stop_strings else None
        if self.speculative:
            return self.speculative.decode(self, prompt_ids, seeds, params, stop, on_step)
        logits, expand = self.prefill(prompt_ids, seeds, params.max_new_tokens)
        output_device = logits[0].device
        greedy = params.temperature == 0
        generators = None if greedy else [torch.Generator(output_device).manual_seed(s)
                                          for row_seeds in seeds for s in row_seeds]
        active = torch.arange(len(expand))  # original row index of each row still decoding
        outputs = [[] for _ in range(len(expand))]
        stopped_by: dict[int, int | str] = {}
        for step in range(params.max_new_tokens):
            combined = self.combine(logits)
            if on_step is not None:
                on_step(active, combined)
            row_generators = None if greedy else [generators[row] for row in active.tolist()]
            tokens = sample_tokens(combined, row_generators, temperature=params.temperature,
                                   top_k=params.top_k, top_p=params.top_p)
            keep = []
            for i, (row, token) in enumerate(zip(active.tolist(), tokens.tolist())):
                outputs[row].append(token)
                hit = find_stop(outputs[row], len(outputs[row]) - 1, stop, params.stop_strings,
                                text_of)
                if hit is None:
                    keep.append(i)
                else:
                    stopped_by[row] = hit[1]
            if not keep or step + 1 == params.max_new_tokens:
                break
            if len(keep) < len(tokens):  # compaction: finished rows leave every cache
                keep_index = torch.tensor(keep)
                for model in self.models():
                    model.keep_rows(keep_index)
                active, tokens = active[keep_index], tokens[keep_index.to(tokens.device)]
            logits = self._decode_step(tokens)
        return [(ids, stopped_by.get(row)) for row, ids in enumerate(outputs)]

    def combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """The RAST logits from [large, *every small unit's outputs] (any leading shape)."""
        large, *small = logits
        pairs = [(small[base], small[rl]) for base, rl in self.slots]
        return combine_pairs(large, pairs, self.lams[:len(pairs)],
                             shared_vocab=self.shared_vocab)

    def prefill(self, prompt_ids: list[list[int]], seeds: list[list[int]],
                columns: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Prefill every model once per prompt, with room for `columns` more per row, and repeat
        each prompt's rows len(seeds[p]) times. -> (next-token logits per model unit and copy,
        the prompt index of each row)."""
        input_ids, attention_mask = left_pad(prompt_ids, self._pad_id())
        logits = [part for model in self.models()
                  for part in model.prefill(input_ids, attention_mask, columns)]
        # n samples per prompt: repeat the prefilled cache rows instead of prefilling n times.
        samples_per_prompt = torch.tensor([len(row_seeds) for row_seeds in seeds])
        expand = torch.arange(len(prompt_ids)).repeat_interleave(samples_per_prompt)
        for model in self.models():
            model.keep_rows(expand)
        return [part[expand.to(part.device)] for part in logits], expand

    def context_length(self) -> int | None:
        """Positions every model can attend over (max_position_embeddings), None if unstated."""
        lengths = [getattr(model.model.config, "max_position_embeddings", None)
                   for model in self.models()]
        return min((length for length in lengths if length), default=None)

    def fit_context(self, prompt_ids: list[list[int]], params: SamplingParams,
                    keys: list[str] | None = None) -> list[list[int]]:
        """The prompts, each leaving max_new_tokens positions of the context: a longer one is
        refused, or cut to its last tokens when params.truncate_prompts asks for that.

        Past the context the positions are ones the model never trained on, and its output is
        fluent-looking nonsense: a 5,000-token prompt against 128 positions decoded without a word.
        """
        context = self.context_length()
        if context is None:
            return prompt_ids
        room = context - params.max_new_tokens
        if room < 1:
            raise UserError(f"max_new_tokens {params.max_new_tokens} leaves no room for a prompt "
                            f"in the model's context of {context} positions: lower it")
        too_long = [i for i, ids in enumerate(prompt_ids) if len(ids) > room]
        if not too_long:
            return prompt_ids
        first = too_long[0]
        name = keys[first] if keys is not None else f"#{first}"
        if not params.truncate_prompts:
            raise UserError(f"prompt {name!r} has {len(prompt_ids[first])} tokens, more than the "
                            f"{room} that the context of {context} positions leaves beside "
                            f"max_new_tokens {params.max_new_tokens} ({len(too_long)} prompt(s) "
                            f"too long): shorten it, lower max_new_tokens, or ask for "
                            f"truncation to its last {room} tokens (--truncate-prompts)")
        logger.warning("truncating %d prompt(s) to their last %d tokens (context %d - "
                       "max_new_tokens %d), the first is %r", len(too_long), room, context,
                       params.max_new_tokens, name)
        return [ids[-room:] for ids in prompt_ids]

    def forward_counts(self) -> dict[str, dict[str, int]]:
        """Forwards run so far per model: prefill/decode calls and the batch rows they computed
        (a stacked or LoRA small pair, "small_base+rl", computes each row twice)."""
        return {model.name: {"prefill_calls": model.prefill_calls,
                             "prefill_rows": model.prefill_rows,
                             "decode_calls": model.decode_calls, "decode_rows": model.decode_rows}
                for model in self.models()}

    def _decode_step(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """One forward per model; models with a stream of their own run concurrently."""
        logits = []
        for model in self.models():
            if model.stream is None:
                logits += model.decode(tokens)
                continue
            model.stream.wait_stream(torch.cuda.current_stream(model.stream.device))  # tokens
            with torch.cuda.stream(model.stream):
                logits += model.decode(tokens)
        for model in self.models():  # the combination reads every model's logits
            if model.stream is not None:
                torch.cuda.current_stream(model.stream.device).wait_stream(model.stream)
        return logits

    def models(self) -> list[CachedModel]:
        return [self.large, *self.small]

    def _pad_id(self) -> int:
        # Any id works: padded positions are masked out. Prefer the tokenizer's own.
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return 0


def _small_units(bases: list, rls: list, stack: bool, options: dict
                 ) -> tuple[list[CachedModel], list[tuple[int, int]]]:
    """The small models' CachedModels, and per pair the indices of its base's and its RL
    model's logits among the units' outputs, in order.

    Full-weight models (each counted once, however many pairs name it) run as one stacked model
    per group of stackable ones (transfer.decode.stacked_pair: one pair of one size is one
    2-block model; two pairs of one size one 4-block model); a LoRA pair (small_rl names an
    adapter in its small_base, a peft model) is a unit of its own: stacked where it can be, else
    peft's mixed-adapter batch. Unstackable models run as a forward each."""
    def label(kind: str, i: int) -> str:
        return kind if len(rls) == 1 else f"{kind}_{i + 1}"

    members = {}  # id(model) -> (model, label): the distinct full-weight models
    for i, (base, rl) in enumerate(zip(bases, rls)):
        if not isinstance(rl, str):
            members.setdefault(id(base), (base, label("small_base", i)))
            members.setdefault(id(rl), (rl, label("small_rl", i)))
    groups = []
    for model, name in members.values():
        group = next((g for g in groups if stack and unstackable(g[0][0], model) is None), None)
        if group is None:
            groups.append([(model, name)])
        else:
            group.append((model, name))
    if stack and len(members) == 2 == len(groups):
        logger.warning("the small pair runs as two forwards per token: cannot stack it, %s",
                       unstackable(*(m for m, _ in members.values())))
    units, index = [], {}  # id(model) -> where its logits sit among the units' outputs
    for group in groups:
        for model, _ in group:
            index[id(model)] = len(index)
        names = [name for _, name in group]
        name = "small_base+rl" if names == ["small_base", "small_rl"] else "+".join(names)
        units.append(CachedModel(name, stack_models([m for m, _ in group]), copies=len(group),
                                 **options) if len(group) > 1
                     else CachedModel(name, group[0][0], **options))
    slots, outputs = [], len(index)
    for i, (base, rl) in enumerate(zip(bases, rls)):
        if isinstance(rl, str):  # after every full-weight unit: (base, adapted) outputs
            slots.append((outputs, outputs + 1))
            outputs += 2
            units.append(_lora_unit(base, rl, stack, options, label("small_base+rl", i)))
        else:
            slots.append((index[id(base)], index[id(rl)]))
    return units, slots


def _lora_unit(model, adapter: str, stack: bool, options: dict, name: str) -> CachedModel:
    """A LoRA pair as one unit: stacked (transfer.decode.stacked_pair) where it can be, else
    peft's mixed-adapter batch."""
    if stack:
        reason = lora_unstackable(model, adapter)
        if reason is None:
            return CachedModel(name, stack_lora(model, adapter), copies=2, **options)
        logger.warning("the small pair runs in peft's mixed batch (cache=dynamic only): cannot "
                       "stack it, %s", reason)
    return CachedModel(name, model, copies=2, adapters=("__base__", adapter), **options)


def _as_list(models) -> list:
    """None -> [], a list or tuple as a list, anything else (one model or name) -> [it]."""
    if models is None:
        return []
    return list(models) if isinstance(models, list | tuple) else [models]


def pair_lams(lam: float | list[float], pairs: int) -> list[float]:
    """One lambda per small pair: a number is shared by all pairs (as the paper's code does)."""
    lams = ([float(value) for value in lam] if isinstance(lam, list | tuple)
            else [float(lam)] * max(pairs, 1))
    for value in lams:
        check_lam(value)
    if pairs and len(lams) != pairs:
        raise UserError(f"{len(lams)} lambdas for {pairs} small pairs: give one per pair, or one "
                        f"for all")
    return lams


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def check_lam(lam: float) -> None:
    if not math.isfinite(lam):
        raise UserError(f"lambda must be a finite number, got {lam}")


def check_embedding_rows(name: str, rows: int | None, tokenizer_length: int) -> None:
    """Every id the tokenizer can produce needs a row of the model's embedding (and logits)."""
    if rows is not None and rows < tokenizer_length:
        raise UserError(f"{name} has {rows} embedding rows, fewer than the {tokenizer_length} "
                        f"tokens of the tokenizer it is decoded with: it belongs to another "
                        f"tokenizer; use models of one family")


def check_models(target: str, pairs: list[Pair] = ()) -> tuple[object, list[int]]:
    """What can be checked of a RAST triple (or of L and several small pairs) without loading
    weights: every pair shares the target's tokenizer and every embedding has a row per token.
    Returns the target's tokenizer and the eos/pad ids only the pairs' tokenizers declare
    (check_pair_tokenizers). Evaluation runs it for every system before decoding the first one."""
    tokenizer = load_tokenizer(target)
    check_embedding_rows(target, embedding_rows(target), len(tokenizer))
    extra_stop_ids = set()
    for pair in pairs:
        extra_stop_ids.update(check_pair_tokenizers(tokenizer, target, pair))
        for name in (pair.base, pair.rl):
            check_embedding_rows(name, embedding_rows(name), len(tokenizer))
    return tokenizer, sorted(extra_stop_ids)


def check_pair_tokenizers(tokenizer, target: str, pair: Pair) -> list[int]:
    """Refuse a small pair whose tokenizers map a token to another id than the target's (RAST
    adds logits by id); return the eos/pad ids only the pair's tokenizers declare."""
    extra_stop_ids = check_tokenizers_compatible(tokenizer, load_tokenizer(pair.base), target,
                                                 pair.base)
    if pair.rl_tokenizer:
        extra_stop_ids += check_tokenizers_compatible(tokenizer, load_tokenizer(pair.rl), target,
                                                      pair.rl)
    return sorted(set(extra_stop_ids))


def device_and_dtype(device=None, dtype=None, small_device=None):
    """-> (large model device_map, small pair device_map, dtype): bf16 on GPU, fp32 on CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spread = device == "auto" or isinstance(device, dict)  # accelerate places the large model
    on_gpu = torch.cuda.is_available() if spread else str(device).startswith("cuda")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    if small_device is None:
        small_device = f"cuda:{torch.cuda.device_count() - 1}" if spread and on_gpu else (
            "cpu" if spread else device)
    return device, small_device, dtype


def check_device(name: str, device) -> None:
    """Refuse a device this torch cannot use, in one line, before any model loads."""
    if device is None or device == "auto" or isinstance(device, dict):
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"{name} {device!r} is not a device: use cpu, cuda, cuda:<index> or "
                        f"auto") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{name} {device!r}: this torch sees no CUDA GPU (torch "
                        f"{torch.__version__}); use cpu, or a CUDA build of torch on a GPU machine")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) "
                        f"are visible")
