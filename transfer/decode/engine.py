"""RAST decoding engine: a large base model steered by small RL model pairs, exact and cached.

Every model keeps its own KV cache (transfer.decode.cached_model); each prompt is prefilled
once per model (n samples share the prefill), then every generated token costs exactly one
forward per model fed only that token. Finished rows leave the batch (their cache rows are
dropped), so they stop costing compute. The base and RL small logits come from ONE forward of
the pair stacked (transfer.decode.stacked_pair): of the two models' weights batched together
when the RL model has full weights, of one set of weights when it is a LoRA adapter of the small
base. No delta, or lam = 0, is plain decoding of the large model through this same loop, so
baselines and RAST share every line. Several small pairs add their deltas (small models of one
size share one stacked forward). It is the reference implementation of the decoder seam
(transfer.decode.decoder); loading and its checks live in transfer.decode.loading.

    from transfer.decode.decoder import SamplingParams
    from transfer.decode.engine import RastEngine
    from transfer.deltas import resolve_delta
    engine = RastEngine.from_deltas("tiny-l", (resolve_delta("outputs/tiny-s-grpo", lam=1.0),))
    completions = engine.generate(["Q: 47*8=\\nA: "], SamplingParams(max_new_tokens=64), n=4)

The command-line front end is `python -m transfer.generate --help`.
"""

import copy
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from train.errors import UserError
from train.models import load_model, resolve_model, stop_token_ids
from transfer.decode.cached_model import CachedModel, left_pad
from transfer.decode.decoder import (
    Completion,
    LoadOptions,
    SamplingParams,
    check_prompts,
    fit_context,
)
from transfer.decode.loading import (
    check_device,
    check_embedding_rows,
    check_models,
    device_and_dtype,
    load_pairs,
)
from transfer.decode.rast import combine_pairs, sample_seed, sample_tokens
from transfer.decode.speculative import Speculation
from transfer.decode.stacked_pair import lora_unstackable, stack_lora, stack_models, unstackable
from transfer.decode.stops import StopBy, completion_text, find_stop
from transfer.deltas import Delta, check_lam

logger = logging.getLogger(__name__)


class RastEngine:
    """Decode prompts with softmax(z_large + sum_i lams[i] * (z_rl_i - z_base_i)).

    Takes loaded models; `from_deltas` loads them from resolved deltas. `pairs` holds one
    (small base, small RL) per pair, the RL model either a model or the name of a LoRA adapter
    loaded into the base (a peft model) for shared-weight mode; `lams` one lambda per pair.
    `tokenizer` gives the shared vocabulary (its length) and text; without one (random-weight
    benchmarks on ids) pass `vocab_size` and use `decode`. `stack_small`: run the small pair as
    one stacked model where it can (transfer.decode.stacked_pair: one forward for both, no extra memory;
    full-weight models' parameters become views of the stacked weights), else as two models (a
    LoRA pair: peft's mixed-adapter batch, which only runs cache=dynamic). `cache` picks each
    model's KV cache and `compile` compiles its step (see CachedModel): "auto" replays CUDA
    graphs for every model on a single GPU. With graphs, each model's step runs on its own CUDA
    stream (`overlap`): the small pair's many tiny kernels, which leave most of the GPU idle, run
    beside the large model's bandwidth-bound ones instead of after them. `default_stop_ids`: the
    large model's (train.models.stop_token_ids) plus `extra_stop_ids`, where from_deltas puts
    the eos/pad ids only the small models' tokenizers declare.

    `speculative`: S_RL drafts tokens that L verifies in one forward, sampling exactly the same
    distribution (transfer.decode.speculative; `draft_tokens` k per round, None = adaptive from
    the running acceptance rate and step times, down to 0 where drafting does not pay). Greedy
    output is the plain loop's; sampled tokens differ from the plain loop's but not in
    distribution. It needs a small pair: with lam = 0 the pair then only drafts.

    Several small pairs combine by transfer.decode.rast.combine_pairs. The small models of one
    architecture and size run as one stacked model (2n row blocks; a model two pairs share counts
    once), other sizes and LoRA pairs as units of their own; the first pair's RL model drafts for
    speculation. `with_lams` sweeps lambda over the loaded models.
    """

    def __init__(self, large, pairs: Sequence[tuple[object, object]] = (),
                 lams: Sequence[float] = (), *, tokenizer=None, vocab_size: int | None = None,
                 stack_small: bool = True, cache: str = "auto", compile: bool = False,
                 overlap: bool = True, extra_stop_ids=(), speculative: bool = False,
                 draft_tokens: int | None = None, deltas: tuple[Delta, ...] = ()):
        if len(lams) != len(pairs):
            raise ValueError(f"{len(lams)} lambdas for {len(pairs)} small pairs: one per pair")
        self.lams, self.tokenizer = [check_lam(lam) for lam in lams], tokenizer
        self.deltas = deltas  # the resolved pairs these models were loaded for (from_deltas)
        self.shared_vocab = len(tokenizer) if tokenizer is not None else vocab_size
        if self.shared_vocab is None:
            raise ValueError("pass a tokenizer or vocab_size")
        for name, model in (("large", large), *(("small_base", base) for base, _ in pairs),
                            *(("small_rl", rl) for _, rl in pairs)):
            if not isinstance(model, str):  # str: a LoRA adapter's name
                check_embedding_rows(name, model.config.vocab_size, self.shared_vocab)
        options = {"cache": cache, "compile": compile, "overlap": overlap}
        self.large = CachedModel("large", large, **options)
        plain = not pairs or (not any(self.lams) and not speculative)  # the large model alone
        # self.slots[i]: where pair i's (base, RL) logits sit among the small units' outputs
        self.small, self.slots = ([], []) if plain else _small_units(pairs, stack_small, options)
        # Speculative RAST needs S_RL as its draft; without a small pair it is plain decoding.
        self.speculative = (Speculation(draft_tokens) if speculative and self.small else None)
        own_stop_ids = (stop_token_ids(tokenizer, large.generation_config)
                        if tokenizer is not None else [])
        self.default_stop_ids = sorted({*own_stop_ids, *extra_stop_ids})

    @classmethod
    def from_deltas(cls, target: str, deltas: tuple[Delta, ...] = (),
                    options: LoadOptions | None = None) -> "RastEngine":
        """Load `target` (registry name, local directory or hub id) steered by resolved deltas
        (transfer.deltas; none: the target alone). A pair at lam 0 is not loaded, except the
        first with speculation, whose S_RL drafts. options (transfer.decode.decoder.LoadOptions):
        device "auto" or a device map spreads the large model over GPUs and puts the pairs on the
        last one; bf16 on GPU, fp32 on CPU; stack_small, cache, compile, speculative and
        draft_tokens as for RastEngine.
        """
        options = options or LoadOptions()
        keep = tuple(delta for i, delta in enumerate(deltas)
                     if delta.lam != 0 or (options.speculative and i == 0))
        large_map, small_map, dtype = device_and_dtype(options.device, options.dtype,
                                                       options.small_device)
        check_device("device", large_map)
        check_device("small device", small_map)
        target = resolve_model(target)
        # The small models' own eos/pad (an RL checkpoint's <|im_end|>, say) also end a completion.
        tokenizer, extra_stop_ids = check_models(target, [delta.pair for delta in keep])
        large_model = load_model(target, dtype=dtype, device_map=large_map)
        if not keep:
            logger.info("decoding %s alone", target)
            return cls(large_model, tokenizer=tokenizer, cache=options.cache,
                       compile=options.compile)
        pairs = load_pairs([delta.pair for delta in keep], dtype, small_map)
        return cls(large_model, pairs, [delta.lam for delta in keep], tokenizer=tokenizer,
                   stack_small=options.stack_small, cache=options.cache, compile=options.compile,
                   speculative=options.speculative, draft_tokens=options.draft_tokens,
                   extra_stop_ids=extra_stop_ids, deltas=keep)

    def with_lams(self, lams: Sequence[float]) -> "RastEngine":
        """The same loaded models at other strengths, one per pair (a lambda sweep loads L once).
        Shares every model, cache buffer and the speculation schedule with this engine."""
        lams = [check_lam(lam) for lam in lams]
        if not self.small or len(lams) != len(self.lams) or not all(lams):
            raise ValueError(f"with_lams needs a non-zero lambda for each of the "
                             f"{len(self.lams)} loaded pairs, got {lams}")
        swept = copy.copy(self)
        swept.lams = lams
        swept.deltas = tuple(delta.with_lam(lam) for delta, lam in zip(self.deltas, lams))
        return swept

    def counters(self) -> dict[str, int]:
        """Speculation's running counts (drafted, accepted, emitted, rounds...); {} without it."""
        return dict(self.speculative.stats) if self.speculative else {}

    def generate_batches(self, prompts: list[str], params: SamplingParams, n: int = 1,
                         seed: int = 0, keys: list[str] | None = None,
                         stop_ids: list[int] | None = None, batch_size: int = 16,
                         progress: bool = True) -> Iterator[list[Completion]]:
        """Yield the completions of each batch as it finishes, ordered by (prompt, sample).

        batch_size counts sequences decoded together; a batch holds max(1, batch_size // n)
        prompts with all n samples of each (so a prompt is never prefilled twice). The seed of
        sample i of a prompt is sample_seed(seed, key, i), key defaulting to the prompt text.
        """
        keys = check_prompts(prompts, keys)
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
                    text = completion_text(ids, stop, params.stop_strings, self.text)
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
        text_of = self.text if params.stop_strings else None
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
        """The prompts fitted to every model's context (transfer.decode.decoder.fit_context)."""
        return fit_context(prompt_ids, params, self.context_length(), keys)

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

    def text(self, ids: list[int]) -> str:
        """A completion's text as the paper's vLLM decodes it: special tokens add none."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def models(self) -> list[CachedModel]:
        return [self.large, *self.small]

    def _pad_id(self) -> int:
        # Any id works: padded positions are masked out. Prefer the tokenizer's own.
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return 0


def _small_units(pairs: Sequence[tuple[object, object]], stack: bool, options: dict
                 ) -> tuple[list[CachedModel], list[tuple[int, int]]]:
    """The small models' CachedModels, and per pair the indices of its base's and its RL
    model's logits among the units' outputs, in order.

    Full-weight models (each counted once, however many pairs name it) run as one stacked model
    per group of stackable ones (transfer.decode.stacked_pair: one pair of one size is one
    2-block model; two pairs of one size one 4-block model); a LoRA pair (small_rl names an
    adapter in its small_base, a peft model) is a unit of its own: stacked where it can be, else
    peft's mixed-adapter batch. Unstackable models run as a forward each."""
    def label(kind: str, i: int) -> str:
        return kind if len(pairs) == 1 else f"{kind}_{i + 1}"

    members = {}  # id(model) -> (model, label): the distinct full-weight models
    for i, (base, rl) in enumerate(pairs):
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
    for i, (base, rl) in enumerate(pairs):
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
