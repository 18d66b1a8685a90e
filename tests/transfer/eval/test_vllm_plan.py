"""The dry run's plan for engine: vllm (transfer.eval.placement): KV bytes per GPU under tensor
parallelism, the pool and the sequences it holds, the lengths arithmetic, and the refusal of a
tensor_parallel_size the small models' heads cannot take. Numbers from the registry's Qwen2.5
configs (train.models.MODELS), checked against arithmetic written out here."""

import pytest

from train.errors import UserError
from transfer.eval import evaluate, placement
from transfer.eval.evaluate import TransferConfig

KIB = 1024


def facts(*names):
    return [placement.model_facts(name) for name in names]


def test_the_pairs_kv_bytes_per_token_on_each_gpu():
    """32B: 64 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 256 KiB; 1.5B: 28 x 2 x 128 x 4
    = 28 KiB, a pair 56 KiB (+21.9%). At TP 4 L keeps 2 of its 8 KV heads per GPU (64 KiB), the
    pair's 2 KV heads are replicated, one per GPU (28 KiB): +43.8%. 0.5B: 24 x 2 x 64 x 4 = 12
    KiB, a pair +9.4% of 32B."""
    large, small, tiny = facts("32B", "1.5B", "0.5B")
    assert placement.kv_bytes_per_gpu(large.architecture, 1) == 64 * 8 * 128 * 2 * 2 == 256 * KIB
    assert placement.kv_bytes_per_gpu(small.architecture, 1) == 28 * 2 * 128 * 2 * 2 == 28 * KIB
    assert placement.kv_bytes_per_gpu(tiny.architecture, 1) == 24 * 2 * 64 * 2 * 2 == 12 * KIB
    plans = {tp: placement.vllm_plan(large, [small, small], tp, 80) for tp in (1, 2, 4, 8)}
    assert {tp: round(p.pair_kv / p.large_kv, 4) for tp, p in plans.items()} == {
        1: 0.2188, 2: 0.2188, 4: 0.4375, 8: 0.875}
    assert (plans[4].large_kv, plans[4].pair_kv) == (64 * KIB, 28 * KIB)
    half = placement.vllm_plan(large, [tiny, tiny], 1, 141)
    assert half.pair_kv / half.large_kv == pytest.approx(0.09375)


def test_the_pool_is_the_memory_share_less_weights_and_activations():
    large, small = facts("32B", "1.5B")
    tp2 = placement.vllm_plan(large, [small, small], 2, 80)
    weights = (64.0 + 2 * 3.09) / 2
    assert tp2.weights_gb == pytest.approx(weights)
    assert tp2.pool_gb == pytest.approx(80 * 0.9 - weights - placement.VLLM_ACTIVATIONS_GB)
    assert tp2.pool_tokens == int(tp2.pool_gb * 1e9 / ((128 + 28) * KIB))
    assert tp2.sequences(17408) == tp2.pool_tokens // 17408 == 11
    assert tp2.sequences(1) == placement.VLLM_MAX_NUM_SEQS  # vLLM's max_num_seqs caps it
    assert placement.vllm_plan(large, [small, small], 1, 80).pool_tokens == 0  # 70 GB of 72


def test_length_statistics_of_the_capped_lognormal():
    """A near-constant length l: mean l, a decoded token's mean context prompt + l/2 (it is in
    the middle of its row on average), and the longest of a batch l. A spread: the longest of a
    batch grows with the batch, the cap bounds it, and long rows weigh more in the context."""
    fixed = placement.Lengths(cap=16384, mean_tokens=100, sigma=1e-4, prompt_tokens=10)
    assert fixed.mean == pytest.approx(100, abs=0.01)
    assert fixed.context == pytest.approx(10 + 50, abs=0.01)
    assert fixed.longest(64) == pytest.approx(100, abs=0.01)
    spread = placement.Lengths(cap=16384)
    assert spread.mean == pytest.approx(1000, rel=0.01)  # the cap cuts 0.05% of the draws
    assert spread.longest(1) == pytest.approx(spread.mean)
    assert spread.mean < spread.longest(16) < spread.longest(64) < 16384
    assert spread.context > placement.MEAN_PROMPT_TOKENS + spread.mean / 2
    capped = placement.Lengths(cap=512)
    assert capped.longest(4096) == pytest.approx(512, rel=0.01)


def test_the_sweep_arithmetic_favours_refilling_over_worst_case_batches():
    """Same models, same lengths: the HF engine's batch runs as long as its longest row, vLLM
    keeps its pool full; both read the weights once a step, so sequences in flight per step
    decide it."""
    large, small = facts("32B", "1.5B")
    lengths = placement.Lengths(cap=16384)
    hf = placement.hf_sweep_seconds(large, [small, small], 64, lengths, 1000, 80)
    steps = lengths.longest(64) * 16  # 1000 samples = 16 batches (the last one partly full)
    assert hf > steps * (64 + 2 * 3.09) * 1e9 / 3.35e12
    plan = placement.vllm_plan(large, [small, small], 2, 80)
    vllm, running = placement.vllm_sweep_seconds(plan, large, [small, small], lengths, 1000, 80)
    assert running == plan.sequences(lengths.context) > 100
    assert vllm * 2 < hf * 6 / 10  # GPU-seconds: TP 2 against the HF plan's 6 GPUs, 10x fewer


@pytest.mark.parametrize(("small", "tp", "ok"), [
    ("0.5B", 2, True), ("0.5B", 4, False), ("0.5B", 8, False),  # 14 heads
    ("1.5B", 4, True), ("1.5B", 8, False),  # 12 heads, 2 KV heads replicated at 4
    ("7B", 4, True), ("7B", 8, False)])  # 28 heads, 4 KV heads
def test_a_tensor_parallel_size_the_heads_cannot_take_is_refused_in_one_line(small, tp, ok):
    large, pair = facts("32B", small)
    architectures = {"Qwen/Qwen2.5-32B": large.architecture,
                     f"Qwen/Qwen2.5-{small}": pair.architecture}
    assert placement.tensor_parallel_ok(pair.architecture, tp) is ok
    if ok:
        placement.check_tensor_parallel(architectures, tp)
        return
    with pytest.raises(UserError) as refused:
        placement.check_tensor_parallel(architectures, tp)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"tensor_parallel_size {tp}: Qwen/Qwen2.5-{small} has "
                              f"{pair.architecture.heads} attention heads")
    assert "use tensor_parallel_size 1 or 2" in message


def test_dry_run_of_the_32B_recipe_on_vllm_states_both_engines(capsys):
    config = TransferConfig(target="Qwen/Qwen2.5-32B", max_new_tokens=16384, samples=32)
    text = placement.describe(config, ["Qwen/Qwen2.5-1.5B"] * 2, 8, 80, (0, 0.0), engine="vllm",
                              tensor_parallel_size=4)
    assert "KV per token per GPU: L 64 KiB, small models 28 KiB: +43.8% over L alone" in text
    assert "HF engine on the same 4 GPUs: 39 rows sized for the worst case" in text
    assert "30 sequences at the worst case (17408 tokens)" in text
    assert "sweep estimate (ARITHMETIC, not measured" in text
    assert "does NOT fit" in placement.describe(config, ["Qwen/Qwen2.5-1.5B"] * 2, 8, 80, (0, 0.0),
                                                engine="vllm", tensor_parallel_size=1)
    assert "(2 or 4 fits)" in placement.describe(config, ["Qwen/Qwen2.5-1.5B"] * 2, 8, 80,
                                                 (0, 0.0), engine="vllm")


def test_dry_run_refuses_tp_8_with_the_1_5B_pair_in_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--config", "recipes/Qwen2.5-32B/rast/config_1.5B.yaml", "--dry-run",
                       "--engine", "vllm", "--tensor_parallel_size", "8", "--gpus", "8",
                       "--gpu_memory_gb", "80"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: tensor_parallel_size 8: Qwen/Qwen2.5-1.5B has 12 attention "
                            "heads and 2 KV heads") and "\n" not in error


def test_starting_vllm_refuses_it_too_before_loading_anything():
    """engine_plan (every vLLM start) checks the target and each pair's base (the RL model has
    its shape) from their configs, before tokenizers or weights are read."""
    from train.pairing import Pair
    from transfer.decode.decoder import LoadOptions
    from transfer.decode.vllm_engine import engine_plan
    from transfer.deltas import Delta

    pair = Pair("Qwen/Qwen2.5-0.5B", "hkust-nlp/Qwen-2.5-0.5B-SimpleRL-Zoo", False, True)
    options = LoadOptions(engine="vllm", tensor_parallel_size=4)
    with pytest.raises(UserError, match="^tensor_parallel_size 4: Qwen/Qwen2.5-0.5B has 14 "):
        engine_plan("Qwen/Qwen2.5-32B", (Delta(pair, 1.0),), options)


def test_the_readme_table_is_the_plans_output():
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    assert placement.vllm_table() in readme  # regenerate with `python -m transfer.eval.placement`


def test_the_recipes_readme_table_is_the_plans_output():
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "recipes" / "README.md").read_text()
    assert placement.recipe_hours_table() in readme  # `python -m transfer.eval.placement`
