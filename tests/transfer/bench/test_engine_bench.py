"""The engine comparison's workloads (transfer.bench.engines, transfer.bench.gpu_engines): every
system must decode exactly the drawn number of tokens per sample, and the KV budget must size
each engine as the benchmark says."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2ForCausalLM

from train.models import Architecture, qwen2_config
from transfer.bench import engines, gpu_engines
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine


def tiny(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config(Architecture(32, 2, 4, 2, 64, 64, True))).eval()


def test_forced_lengths_end_each_row_at_its_drawn_length_with_the_stop_id():
    """The HF engine has one max_new_tokens per call; the hook makes row r stop at exactly
    lengths[r] tokens (never earlier, although the stop id is in every row's distribution),
    also after rows before it have left the batch."""
    engine = RastEngine(tiny(0), [(tiny(1), tiny(2))], [1.0], vocab_size=60)
    lengths, stop_id = [3, 1, 9, 5, 9, 2], 7
    prompts = [[5, 6, 8], [9, 10]]
    rows = engine.decode(prompts, [[0, 1, 2], [3, 4, 5]],
                         SamplingParams(temperature=1.0, max_new_tokens=max(lengths)),
                         stop_ids=[stop_id], on_step=engines.forced_lengths(lengths, stop_id))
    assert [len(ids) for ids, _ in rows] == lengths
    assert all(stop == stop_id and ids[-1] == stop_id and stop_id not in ids[:-1]
               for ids, stop in rows)


def test_run_hf_batches_the_budgeted_workload_by_whole_prompts():
    engine = RastEngine(tiny(0), vocab_size=60)
    workload = engines.Workload("w", 2, [4, 1, 6, 2, 3, 3], (2, 5), budgeted=True).fresh(0, 60)
    assert len(workload.prompts) == 3 and all(2 <= len(p) <= 5 for p in workload.prompts)
    result = engines.run_hf(engine, workload, batch_rows=4, stop_id=7)  # 2 prompts, then 1
    assert result["tokens"] == workload.tokens == 19


def test_long_tailed_lengths_are_reproducible_and_capped():
    lengths = engines.long_tailed_lengths(2000, median=32, sigma=1.2, cap=448, seed=1)
    assert lengths == engines.long_tailed_lengths(2000, median=32, sigma=1.2, cap=448, seed=1)
    assert min(lengths) >= 1 and max(lengths) == 448
    assert 28 <= sorted(lengths)[1000] <= 36  # the median
    assert 0.005 < lengths.count(448) / 2000 < 0.03  # P(lognormal > 14 x median) = 1.4%


def test_the_budget_sizes_the_hf_batch_for_the_worst_case_and_vllm_by_blocks():
    """8 worst-case RAST rows of 512 tokens in bytes: the HF engine gets 8 RAST rows, or 10 of
    L alone (its KV per token is 4/5 of RAST's); vLLM the same bytes in blocks of 32 tokens
    (+ its null block)."""
    budget = engines.Budget.of_rows(8, 512, engines.LARGE, engines.SMALL, dtype_bytes=4)
    large = 4 * 2 * 128 * 2 * 4  # layers x KV heads x head_dim x (K, V) x fp32
    pair = 2 * (2 * 1 * 64 * 2 * 4)
    assert budget.kv_bytes == {"L alone": large, "RAST": large + pair}
    assert budget.bytes == 8 * 512 * (large + pair)
    assert (budget.hf_rows("RAST"), budget.hf_rows("L alone")) == (8, 10)
    assert budget.vllm_blocks("RAST") == 8 * 512 // 32 + 1
    fixed = SimpleNamespace(batches=[1, 64], fixed_prompt_tokens=16, new_tokens=48)
    budget.check_fits(fixed)  # 64 rows x 2 blocks = 128 of 128; 1 row of 16 + 192 tokens
    with pytest.raises(SystemExit, match="the fixed batch of 64 needs 192 KV blocks"):
        budget.check_fits(SimpleNamespace(**{**vars(fixed), "new_tokens": 80}))


def test_a_batch_under_4_rows_decodes_4_x_new_tokens_in_all():
    assert [engines.fixed_row_tokens(batch, 48) for batch in (1, 2, 4, 16, 64)] == [
        192, 96, 48, 48, 48]


def test_the_cpu_stand_ins_mirror_the_32B_pair_share_of_work():
    bound = engines.macs_per_token(engines.LARGE) / (
        engines.macs_per_token(engines.LARGE) + 2 * engines.macs_per_token(engines.SMALL))
    assert 0.9 < bound < 0.95  # Qwen2.5-32B + 1.5B by weight bytes: 0.914
    assert engines.LARGE.head_dim == 128 and engines.SMALL.head_dim == 64  # Qwen2.5's


@pytest.mark.slow
def test_gpu_engines_smoke_runs_all_four_systems_on_cpu(tmp_path):
    """The GPU script's whole path on CPU: four worker processes (two start vLLM with dummy
    weights from config-only model directories), the table and the goal lines."""
    report = gpu_engines.main(["--smoke", "--output", str(tmp_path / "engines.json")])
    assert json.loads((tmp_path / "engines.json").read_text()) == json.loads(json.dumps(report))
    (pair,) = report["pairs"].values()
    for system in engines.SYSTEMS:
        results = pair["systems"][system]["results"]
        assert all(row["tokens_per_s"] > 0 for row in results.values()), system
    assert len(pair["goals"]) == 2 and all("not measured" not in goal for goal in pair["goals"])
