"""The pure RAST maths: alignment, fp32 combination, masking, warping once, per-row sampling."""

import logging

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from train.errors import UserError
from train.tiny.tokenizer import build_tokenizer
from transfer.decode.rast import (
    align_logits,
    check_tokenizers_compatible,
    combine_logits,
    sample_seed,
    sample_tokens,
    warp_logits,
)

SHARED = 98  # character tokenizer length; the fixtures' models have 128 and 160 embedding rows


def random_logits(rows, width, seed, dtype=torch.float32):
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_align_keeps_the_shared_range_and_refuses_narrower_logits():
    logits = random_logits(2, 160, 0)
    assert torch.equal(align_logits(logits, SHARED), logits[:, :SHARED])
    with pytest.raises(ValueError, match="fewer than the shared vocabulary"):
        align_logits(random_logits(2, 90, 0), SHARED)


def test_combine_different_embedding_sizes_matches_the_formula_and_masks_padding():
    large, base, rl = random_logits(3, 160, 0), random_logits(3, 128, 1), random_logits(3, 128, 2)
    combined = combine_logits(large, base, rl, lam=0.7, shared_vocab=SHARED)
    expected = (large.double()[:, :SHARED]
                + 0.7 * (rl.double()[:, :SHARED] - base.double()[:, :SHARED]))
    assert combined.shape == (3, 160)  # large model's width: its token ids stay valid
    assert combined.dtype == torch.float32
    torch.testing.assert_close(combined[:, :SHARED].double(), expected, rtol=0, atol=1e-5)
    assert torch.isneginf(combined[:, SHARED:]).all()


def test_combine_is_fp32_even_from_bf16_inputs():
    # bf16 spacing at 256 is 2: adding a 0.5 delta in bf16 loses it entirely, fp32 keeps it.
    large = torch.full((1, 4), 256.0, dtype=torch.bfloat16)
    base = torch.zeros(1, 4, dtype=torch.bfloat16)
    rl = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    combined = combine_logits(large, base, rl, lam=1.0, shared_vocab=3)
    assert combined.dtype == torch.float32
    assert combined[0, 0].item() == 256.5
    assert (large + (rl - base))[0, 0].item() == 256.0  # what bf16 arithmetic would give


def test_lam_zero_or_no_pair_is_the_large_model_alone():
    large, base, rl = random_logits(2, 160, 0), random_logits(2, 128, 1), random_logits(2, 128, 2)
    alone = torch.cat([large[:, :SHARED], torch.full((2, 160 - SHARED), float("-inf"))], dim=1)
    assert torch.equal(combine_logits(large, base, rl, lam=0.0, shared_vocab=SHARED), alone)
    assert torch.equal(combine_logits(large, shared_vocab=SHARED), alone)
    assert torch.equal(combine_logits(large, base, base, lam=1.0, shared_vocab=SHARED), alone)
    with pytest.raises(ValueError, match="both"):
        combine_logits(large, base, None, shared_vocab=SHARED)


def test_no_function_mutates_its_inputs():
    large, base, rl = random_logits(4, 160, 0), random_logits(4, 128, 1), random_logits(4, 128, 2)
    copies = [t.clone() for t in (large, base, rl)]
    combined = combine_logits(large, base, rl, lam=1.0, shared_vocab=SHARED)
    combined_copy = combined.clone()
    warp_logits(combined, temperature=0.5, top_k=5, top_p=0.9)
    sample_tokens(combined, [torch.Generator().manual_seed(i) for i in range(4)],
                  temperature=0.5, top_k=5, top_p=0.9)
    for tensor, copy in zip((large, base, rl, combined), (*copies, combined_copy)):
        assert torch.equal(tensor, copy)


def test_warp_applies_temperature_top_k_and_top_p_once():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.equal(warp_logits(logits, temperature=2.0), logits / 2.0)
    assert torch.isneginf(warp_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # softmax(logits) = [.032, .087, .237, .644]: top_p 0.8 keeps the two largest (0.881)
    assert torch.isneginf(warp_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.equal(warp_logits(logits), logits)
    with pytest.raises(ValueError, match="greedy"):
        warp_logits(logits, temperature=0.0)


def test_sampling_draws_from_the_warped_combined_distribution_exactly():
    large, base, rl = random_logits(1, 160, 3), random_logits(1, 128, 4), random_logits(1, 128, 5)
    combined = combine_logits(large, base, rl, lam=1.0, shared_vocab=SHARED)

    def draws(sample_once, seed=7, count=200):
        rng = torch.Generator().manual_seed(seed)
        return [sample_once(rng).item() for _ in range(count)]

    engine_draws = draws(lambda rng: sample_tokens(combined, [rng], temperature=0.7, top_p=0.9))
    reference = warp_logits(combined / 0.7, top_p=0.9).softmax(-1)[0]
    twice = warp_logits(combined / 0.49, top_p=0.9).softmax(-1)[0]  # temperature applied twice
    assert engine_draws == draws(lambda rng: torch.multinomial(reference, 1, generator=rng))
    assert engine_draws != draws(lambda rng: torch.multinomial(twice, 1, generator=rng))
    assert max(engine_draws) < SHARED  # padding ids are never drawn


def test_filters_act_after_combining():
    # The large model alone prefers id 0; the RL delta moves the argmax to id 2. top_k=1 on the
    # combination must keep id 2 (filtering the large model first would have kept id 0).
    large = torch.tensor([[3.0, 0.0, 2.0, 0.0]])
    base, rl = torch.zeros(1, 4), torch.tensor([[0.0, 0.0, 2.0, 0.0]])
    combined = combine_logits(large, base, rl, lam=1.0, shared_vocab=3)
    generators = [torch.Generator().manual_seed(seed) for seed in range(1)]
    assert [sample_tokens(combined, generators, top_k=1).item() for _ in range(20)] == [2] * 20
    assert sample_tokens(combined, None).item() == 2


def test_each_row_samples_from_its_own_generator_whatever_its_batch():
    logits = random_logits(3, 50, 0)
    together = sample_tokens(logits, [torch.Generator().manual_seed(seed) for seed in (10, 11, 12)])
    alone = sample_tokens(logits[2:], [torch.Generator().manual_seed(12)])
    assert together[2] == alone[0]


def test_sample_seed_is_stable_and_separates_prompts_samples_and_seeds():
    seeds = {sample_seed(s, key, i) for s in (0, 1) for key in ("a", "b") for i in (0, 1)}
    assert len(seeds) == 8
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1)
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_identical_tokenizers_pass():
    check_tokenizers_compatible(build_tokenizer(), build_tokenizer(), "large", "small")


@pytest.mark.parametrize("change", ["extra token", "moved token"])
def test_incompatible_tokenizers_are_refused_in_one_line_naming_both(change):
    other = build_tokenizer()
    if change == "extra token":
        other.add_tokens(["<think>"])
    else:  # the same strings, two of them with swapped ids
        vocab = other.get_vocab()
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        other = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        unk_token="<unk>")
    with pytest.raises(UserError) as error:
        check_tokenizers_compatible(build_tokenizer(), other, "Qwen/Qwen2.5-7B", "llama-1b")
    message = str(error.value)
    assert "'Qwen/Qwen2.5-7B'" in message and "'llama-1b'" in message and "\n" not in message
    assert ("98 vs 99 tokens" if change == "extra token" else "'a' has different ids") in message


def test_tokenizers_declaring_another_eos_are_compatible_and_return_its_stop_id(caplog):
    # A hub RL checkpoint may declare eos <|im_end|> where its base declares <|endoftext|>.
    rl = build_tokenizer()
    rl.eos_token = "."
    with caplog.at_level(logging.WARNING, logger="transfer.decode.rast"):
        extra_stop_ids = check_tokenizers_compatible(build_tokenizer(), rl, "base", "rl")
    assert extra_stop_ids == [rl.convert_tokens_to_ids(".")]
    assert "'eos_token': '.'" in caplog.text
    # The other way round nothing is new: the RL tokenizer's pad already is <|endoftext|>.
    assert check_tokenizers_compatible(rl, build_tokenizer(), "rl", "base") == []


def test_a_qwen_rl_tokenizer_declaring_im_end_pairs_with_its_base(qwen_tokenizer):
    # SimpleRL-Zoo's checkpoints declare eos <|im_end|> (151645); Qwen2.5 bases <|endoftext|>.
    base, rl = AutoTokenizer.from_pretrained(qwen_tokenizer), AutoTokenizer.from_pretrained(
        qwen_tokenizer)
    rl.eos_token = "<|im_end|>"
    assert check_tokenizers_compatible(base, rl, "Qwen/Qwen2.5-1.5B", "rl") == [151645]
    with pytest.raises(UserError, match=r"\(151665 vs 98 tokens\)"):
        check_tokenizers_compatible(base, build_tokenizer(), "Qwen/Qwen2.5-1.5B", "tiny-s")
