"""The stacked small pair: one forward giving both models' logits, sharing their memory, and a
clear reason wherever two models cannot be stacked."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from transfer.bench.ops import decode_step_ops
from transfer.decode.cached_model import CachedModel
from transfer.decode.stacked_pair import (
    lora_unstackable,
    stack_lora,
    stack_models,
    stack_pair,
    unstackable,
)


def qwen2(seed: int, tie: bool = True, **overrides) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=tie,
                         **overrides)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def storages(*models) -> set[int]:
    return {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}


@pytest.mark.parametrize("tie", [True, False])
def test_stacked_forward_gives_each_models_logits_and_shares_their_memory(tie):
    base, rl = qwen2(0, tie), qwen2(1, tie)
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        expected = [m(ids, attention_mask=mask).logits for m in (base, rl)]
    unique_bytes = sum(p.nbytes for p in {*base.parameters(), *rl.parameters()})
    stacked = stack_pair(base, rl)

    assert storages(base, rl) == storages(stacked)  # the models view the stacked weights
    assert sum(p.nbytes for p in stacked.parameters()) == unique_bytes
    with torch.no_grad():
        logits = stacked(torch.cat([ids, ids]), attention_mask=torch.cat([mask, mask])).logits
        close(logits[:3], expected[0])  # bmm vs linear: equal up to float summation order
        close(logits[3:], expected[1])
        for model, before in zip((base, rl), expected):  # each model still works alone
            assert torch.equal(model(ids, attention_mask=mask).logits, before)

        # decoding with a cache: prefill then one token, as the engine does
        cache, caches = DynamicCache(config=stacked.config), [DynamicCache(config=base.config)
                                                              for _ in range(2)]
        stacked(torch.cat([ids, ids]), past_key_values=cache, use_cache=True)
        step = stacked(torch.cat([ids[:, :1]] * 2), past_key_values=cache, use_cache=True).logits
        for half, (model, model_cache) in enumerate(zip((base, rl), caches)):
            model(ids, past_key_values=model_cache, use_cache=True)
            alone = model(ids[:, :1], past_key_values=model_cache, use_cache=True).logits
            close(step[3 * half:3 * half + 3], alone)


@pytest.mark.parametrize("tie", [True, False])
def test_four_models_stacked_give_four_blocks_of_logits_from_one_forward(tie):
    """Two small pairs of one size (the paper's multi-delta decoding): 2n row blocks."""
    models = [qwen2(seed, tie) for seed in range(4)]
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        expected = [m(ids).logits for m in models]
        stacked = stack_models(models)
        assert storages(*models) == storages(stacked)
        logits = stacked(torch.cat([ids] * 4)).logits
        for block, alone in enumerate(expected):
            close(logits[2 * block:2 * block + 2], alone)
    with pytest.raises(ValueError, match="stack two or more models"):
        stack_models(models[:1])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_stacked_decode_step_launches_the_ops_of_one_model_not_two(cache):
    """What makes the pair cheap on a GPU, where a small step costs its kernel launches: counted
    ATen ops (views excepted) of one decode step, at batch 3 with left padding."""
    base, rl = qwen2(0), qwen2(1)
    prompts = [[1, 2, 3, 4], [5, 6], [7]]
    one = decode_step_ops(CachedModel("small_base", base, cache=cache), prompts)
    pair = decode_step_ops(CachedModel("small_base+rl", stack_pair(base, rl), copies=2,
                                       cache=cache), prompts)
    assert one > 50  # the count sees a whole forward
    assert one <= pair <= one + 4  # the stacked embedding adds its id offset


def test_a_model_stacked_with_itself_gives_its_logits_twice():
    model, ids = qwen2(0), torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        expected = model(ids).logits
        logits = stack_pair(model, model)(torch.cat([ids, ids])).logits
    close(logits[:2], expected)
    close(logits[2:], expected)


def test_unstackable_pairs_are_named_with_their_reason():
    base = qwen2(0)
    # as TRL saves RL checkpoints: no cache, other ids, the dtype trained in (weights are fp32)
    assert unstackable(base, qwen2(1, use_cache=False, bos_token_id=5, dtype="bfloat16")) is None
    assert "parameters differ in names, shapes or dtypes" in unstackable(
        base, qwen2(1).to(torch.bfloat16))
    assert "configs differ in rms_norm_eps" in unstackable(base, qwen2(1, rms_norm_eps=1e-3))
    assert "configs differ in tie_word_embeddings" in unstackable(base, qwen2(1, tie=False))
    assert "different classes" in unstackable(base, base.model)
    lora = [get_peft_model(qwen2(seed), LoraConfig(r=2, target_modules=["q_proj"]))
            for seed in (0, 1)]
    assert "peft model" in unstackable(*lora)
    other = qwen2(1)
    base.model.norm, other.model.norm = nn.LayerNorm(32), nn.LayerNorm(32)
    assert unstackable(base, other) == ("model.norm is of type LayerNorm (stacking knows linear, "
                                        "embedding and RMS norm layers)")
    with pytest.raises(ValueError, match="cannot stack the small models: model.norm is of type"):
        stack_pair(base, other)


def test_stacked_lora_gives_the_base_and_the_adapted_logits_from_one_set_of_weights():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False)  # random B: the adapter changes the logits
    peft_model = get_peft_model(qwen2(0), config, adapter_name="rl").eval()
    ids = torch.randint(0, 64, (3, 7))
    with torch.no_grad():
        adapted = peft_model(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
        stacked = stack_lora(peft_model, "rl")
        logits = stacked(torch.cat([ids, ids])).logits
        assert not torch.allclose(adapted, base)
        close(logits[:3], base)
        close(logits[3:], adapted)
        assert torch.equal(peft_model(ids).logits, adapted)  # the peft model is left as it was
    assert {id(p) for p in stacked.parameters()} <= {id(p) for p in peft_model.parameters()}

    assert lora_unstackable(qwen2(0), "rl") == "not a peft model"
    dora = get_peft_model(qwen2(0), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True),
                          adapter_name="rl")
    assert "uses a LoRA variant (DoraLinearVariant)" in lora_unstackable(dora, "rl")
    embedding = get_peft_model(qwen2(0, tie=False), LoraConfig(r=2, target_modules=[
        "embed_tokens"]), adapter_name="rl")
    assert lora_unstackable(embedding, "rl") == (
        "base_model.model.model.embed_tokens is of type Embedding (stacking knows LoRA on linear "
        "layers)")
    with pytest.raises(ValueError, match="cannot stack the LoRA pair"):
        stack_lora(embedding, "rl")
