"""The RAST maths as pure functions: align vocabularies, combine logits, warp, sample.

At every decoding step the large base model's next-token logits are shifted by the small pair's
RL delta and sampled once (Ouyang et al. 2025, arXiv 2506.15710):

    p(x_t | x_<t) = softmax(z_large + lam * (z_small_rl - z_small_base))

or, with several small pairs (combine_pairs), z_large + sum_i lam_i * (z_rl_i - z_base_i).

Nothing here touches a model, a cache or a file, and no function mutates its inputs; the decode
loop in transfer/decode/engine.py calls these once per step. Try it:

    python -c "import torch; from transfer.decode.rast import combine_logits; \
print(combine_logits(torch.zeros(1, 4), torch.zeros(1, 3), torch.ones(1, 3), lam=0.5, shared_vocab=3))"
"""

import hashlib
import logging

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from train.errors import UserError

logger = logging.getLogger(__name__)


def align_logits(logits: torch.Tensor, shared_vocab: int) -> torch.Tensor:
    """The first `shared_vocab` columns of `logits` [..., rows]: the ids a tokenizer can produce.

    151936 vs 152064: Qwen2.5 models pad their embedding matrices to different sizes for one
    151665-token tokenizer; the extra rows are never real tokens, so every model is cut to the
    tokenizer's length instead of to a hard-coded width.

    >>> align_logits(torch.arange(6.0).reshape(1, 6), shared_vocab=4)
    tensor([[0., 1., 2., 3.]])
    """
    if logits.shape[-1] < shared_vocab:
        raise ValueError(f"logits have {logits.shape[-1]} columns, fewer than the shared "
                         f"vocabulary of {shared_vocab} tokens")
    return logits[..., :shared_vocab]


def combine_logits(large_logits: torch.Tensor, small_base_logits: torch.Tensor | None = None,
                   small_rl_logits: torch.Tensor | None = None, *, lam: float = 1.0,
                   shared_vocab: int) -> torch.Tensor:
    """z_large + lam * (z_small_rl - z_small_base) in fp32, as wide as the large model's logits.

    Columns >= shared_vocab (embedding padding) are -inf, so they are never sampled while token
    ids keep the large model's numbering. Inputs may be bf16 and of different widths; all
    arithmetic is fp32 (the reference code adds bf16 logits, which loses the small delta).
    Without a small pair, or with lam == 0, this is the large model's aligned logits alone.
    One pair of `combine_pairs`.

    >>> large = torch.tensor([[1.0, 2.0, 3.0, 9.0]])  # 4 embedding rows, 3 real tokens
    >>> combine_logits(large, torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]]),
    ...                lam=0.5, shared_vocab=3)
    tensor([[2., 2., 3., -inf]])
    """
    if (small_base_logits is None) != (small_rl_logits is None):
        raise ValueError("give both small_base_logits and small_rl_logits, or neither")
    pairs = [] if small_base_logits is None else [(small_base_logits, small_rl_logits)]
    return combine_pairs(large_logits, pairs, [lam] * len(pairs), shared_vocab=shared_vocab)


def combine_pairs(large_logits: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                  lams: list[float], *, shared_vocab: int) -> torch.Tensor:
    """z_large + sum_i lams[i] * (z_rl_i - z_base_i) over pairs[i] = (z_base_i, z_rl_i): the
    deltas of several small RL models (of one size or several) steering one large model, as the
    paper's vLLM fork combines up to three. Same rules as combine_logits, which is its one-pair
    case; the deltas are added in the order given.

    >>> zero, one = torch.zeros(1, 2), torch.ones(1, 2)
    >>> combine_pairs(torch.zeros(1, 2), [(zero, one), (one, zero)], [1.0, 0.5], shared_vocab=2)
    tensor([[0.5000, 0.5000]])
    """
    if len(lams) != len(pairs):
        raise ValueError(f"{len(lams)} lambdas for {len(pairs)} small pairs")
    combined = align_logits(large_logits, shared_vocab).float()
    for (small_base_logits, small_rl_logits), lam in zip(pairs, lams):
        if lam == 0:
            continue
        rl_delta = (align_logits(small_rl_logits, shared_vocab).float()
                    - align_logits(small_base_logits, shared_vocab).float())
        combined = combined + lam * rl_delta.to(combined.device)
    padding = large_logits.shape[-1] - shared_vocab
    masked = combined.new_full((*combined.shape[:-1], padding), float("-inf"))
    return torch.cat([combined, masked], dim=-1)


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (transformers' order), each once, on [rows, vocab].

    Call it on COMBINED logits: warping each model before combining is not the same
    distribution. top_k=0 and top_p=1.0 switch those filters off. Returns a new tensor.

    >>> warp_logits(torch.tensor([[0.0, 1.0, 2.0]]), temperature=2.0, top_k=2)
    tensor([[  -inf, 0.5000, 1.0000]])
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to warp (use greedy for 0), got {temperature}")
    warped = logits
    if temperature != 1.0:
        warped = TemperatureLogitsWarper(float(temperature))(None, warped)
    if top_k > 0:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    return warped


def sample_tokens(logits: torch.Tensor, generators: list[torch.Generator] | None, *,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One token id per row of combined logits [rows, vocab]: argmax when generators is None,
    else one draw per row from that row's own generator (so a row's tokens do not depend on which
    other rows share its batch).

    >>> sample_tokens(torch.tensor([[0.0, 5.0, 1.0]]), None)
    tensor([1])
    >>> rng = torch.Generator().manual_seed(0)
    >>> sample_tokens(torch.tensor([[2.0, 0.0, float("-inf")]]), [rng], top_k=1)
    tensor([0])
    """
    if generators is None:
        return logits.argmax(dim=-1)
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{len(generators)} generators for {logits.shape[0]} rows")
    probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    draws = [torch.multinomial(row, 1, generator=rng) for row, rng in zip(probs, generators)]
    return torch.cat(draws)


def sample_seed(seed: int, key: str, sample_index: int) -> int:
    """A stable 63-bit seed for one sample of one prompt: same inputs, same seed, on any machine.

    Python's hash() is salted per process, hence sha256.

    >>> sample_seed(0, "Q: 7*8=", 0) == sample_seed(0, "Q: 7*8=", 0) != sample_seed(0, "Q: 7*8=", 1)
    True
    """
    digest = hashlib.sha256(f"{seed}\0{key}\0{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_tokenizers_compatible(tokenizer_a, tokenizer_b, name_a: str, name_b: str) -> list[int]:
    """Raise UserError unless both tokenizers map every token to the same id, special tokens
    included; return the ids tokenizer_b declares as eos or pad that tokenizer_a does not.

    RAST adds logits id by id, so one id must mean one string in all three models. Which token a
    tokenizer declares as eos, pad or bos is a setting, not part of that mapping: hub RL
    checkpoints (SimpleRL-Zoo's) may say eos <|im_end|> where their base says <|endoftext|>. Such
    a difference is logged, and the returned ids belong in the decoder's stop set.

    >>> from train.tiny.tokenizer import build_tokenizer
    >>> rl = build_tokenizer()
    >>> rl.eos_token = "."
    >>> check_tokenizers_compatible(build_tokenizer(), rl, "base", "rl")
    [17]
    """
    vocab_a, vocab_b = tokenizer_a.get_vocab(), tokenizer_b.get_vocab()
    if vocab_a != vocab_b:
        differing = sorted(set(vocab_a.items()) ^ set(vocab_b.items()),
                           key=lambda item: (item[1], item[0]))  # deterministic: id, then token
        reason = (f"{len(vocab_a)} vs {len(vocab_b)} tokens" if len(vocab_a) != len(vocab_b)
                  else f"token {differing[0][0]!r} has different ids")
        raise UserError(f"tokenizers of {name_a!r} and {name_b!r} differ ({reason}); RAST needs "
                        f"models that share one tokenizer")
    declared_a, declared_b = _declared_tokens(tokenizer_a), _declared_tokens(tokenizer_b)
    if declared_a != declared_b:
        logger.warning("tokenizers of %r and %r share every id but declare %s vs %s; decoding "
                       "stops on the eos and pad tokens of both", name_a, name_b,
                       declared_a, declared_b)
    return sorted(_end_ids(tokenizer_b) - _end_ids(tokenizer_a))


def _declared_tokens(tokenizer) -> dict:
    return {name: getattr(tokenizer, name, None) for name in ("eos_token", "pad_token", "bos_token")}


def _end_ids(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
