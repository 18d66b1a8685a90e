"""The decoder seam: what evaluation, `transfer.generate` and analysis ask of a decoder.

A decoder turns prompts into completions: `generate_batches(prompts, params, n, seed, keys,
stop_ids, batch_size)` yields each batch's `Completion`s (text, token ids, what stopped it) in
(prompt, sample) order, sample i of a prompt seeded by `transfer.decode.rast.sample_seed(seed,
key, i)`. `with_lams` gives the same loaded models at other strengths (a lambda sweep loads the
large model once), and `counters` what the decoder counts of its own work (speculation's
drafts). `transfer.decode.engine.RastEngine` (Hugging Face models, exact, the reference)
implements it; `transfer.decode.backends.open_decoder` is the one place that picks and loads an
implementation, so a second backend plugs in there without a change to `transfer/eval/`.

    from transfer.decode.backends import open_decoder
    from transfer.decode.decoder import SamplingParams
    from transfer.deltas import resolve_delta
    decoder = open_decoder("tiny-l", (resolve_delta("outputs/tiny-s-grpo", lam=1.0),))
    completions = decoder.generate(["Q: 47*8=\\nA: "], SamplingParams(max_new_tokens=64), n=4)
"""

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from train.errors import UserError
from transfer.decode.stops import StopBy
from transfer.deltas import Delta

logger = logging.getLogger(__name__)


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


class Decoder(Protocol):
    deltas: tuple[Delta, ...]  # what it steers the large model with; () = the model alone

    def generate_batches(self, prompts: list[str], params: SamplingParams, n: int = 1,
                         seed: int = 0, keys: list[str] | None = None,
                         stop_ids: list[int] | None = None, batch_size: int = 16,
                         progress: bool = True) -> Iterator[list[Completion]]: ...

    def generate(self, prompts: list[str], params: SamplingParams, n: int = 1, seed: int = 0,
                 keys: list[str] | None = None, stop_ids: list[int] | None = None,
                 batch_size: int = 16, progress: bool = True) -> list[Completion]: ...

    def with_lams(self, lams: Sequence[float]) -> "Decoder": ...

    def counters(self) -> dict[str, int]: ...


ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a decoder: which engine, placement, precision, and each engine's options."""

    engine: str = "hf"  # hf: transfer.decode.engine (exact reference); vllm: vllm_engine
    device: object = None  # the large model's: a device, "auto" or an accelerate device map
    small_device: str | None = None  # default: the last GPU with device "auto", else device
    dtype: object = None  # default: bfloat16 on GPU, float32 on CPU
    stack_small: bool = True
    cache: str = "auto"
    compile: bool = False
    speculative: bool = False
    draft_tokens: int | None = None
    # vLLM: GPUs one model is split over, the share of GPU memory (of host RAM on CPU) it takes
    # (default 0.9; on CPU a 1 GiB KV cache instead), positions per sequence (default: the
    # models' context), CUDA graphs off (default: off on GPU, on on CPU), and its executor beyond
    # one node ("ray").
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None
    distributed_executor_backend: str | None = None
    vllm_args: dict = field(default_factory=dict)  # any other vllm.LLM keyword argument

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")


def check_prompts(prompts: list, keys: list[str] | None) -> list[str]:
    """The keys of `prompts` (default: the prompts themselves), refusing a key count that does
    not match and a prompt that is not text; one rule for every engine."""
    keys = list(prompts) if keys is None else list(keys)
    if len(keys) != len(prompts):
        raise UserError(f"{len(keys)} keys for {len(prompts)} prompts")
    not_text = next((i for i, prompt in enumerate(prompts) if not isinstance(prompt, str)), None)
    if not_text is not None:
        raise UserError(f"prompt {keys[not_text]!r} is a {type(prompts[not_text]).__name__}, "
                        f"not a string: give every prompt as text")
    return keys


def fit_context(prompt_ids: list[list[int]], params: SamplingParams, context: int | None,
                keys: list[str] | None = None) -> list[list[int]]:
    """The prompts, each leaving max_new_tokens of the `context` positions: a longer one is
    refused, or cut to its last tokens when params.truncate_prompts asks for that. One rule for
    every engine.

    Past the context the positions are ones the model never trained on, and its output is
    fluent-looking nonsense: a 5,000-token prompt against 128 positions decoded without a word.
    """
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


def sweepable(loaded: Sequence[Delta], wanted: Sequence[Delta]) -> bool:
    """Whether a decoder loaded for `loaded` serves `wanted` by `with_lams`: the same pairs in
    the same order, every lambda non-zero (a pair at 0 is not loaded at all)."""
    return (len(loaded) == len(wanted) > 0
            and all(a.pair == b.pair and a.lam and b.lam for a, b in zip(loaded, wanted)))


def acceptance_rate(counters: dict[str, int]) -> float:
    """Share of drafted tokens a speculative decoder accepted (bonus positions not counted)."""
    return counters.get("accepted", 0) / max(counters.get("drafted", 0), 1)


def tokens_per_round(counters: dict[str, int]) -> float:
    """Tokens a row emits per speculative round: its accepted drafts + one corrected or bonus."""
    return counters.get("emitted", 0) / max(counters.get("row_rounds", 0), 1)


def since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counters of what happened after `before` (an earlier copy of counters())."""
    return {key: value - before.get(key, 0) for key, value in now.items()}
