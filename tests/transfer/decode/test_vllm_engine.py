"""transfer.decode.vllm_engine: what starts vLLM, and how its outputs become Completions.

The engine itself runs in tests/transfer/decode/vllm_check.py, in a subprocess (vLLM changes a
process's torch threads): greedy tokens identical to the HF engine for lambda 0/1/2, n = 2, two
pairs, a LoRA pair, chunked prefill, prefix caching, forced preemption; sampled log-probabilities
against a recompute; stop ids and strings; and so do vllm_spec_check.py (speculation) and
vllm_tp_check.py (tensor parallelism 2). They take minutes on 2 cores: `slow` here, and `make
rehearse` runs them too.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train.errors import UserError
from transfer.decode import vllm_engine
from transfer.decode.decoder import LoadOptions, SamplingParams
from transfer.decode.vllm_engine import VllmDecoder, engine_plan
from transfer.deltas import Delta, resolve_delta
from transfer.eval.evaluate import TransferConfig


@pytest.mark.slow  # each starts 1-4 engines: 2-10 minutes on 2 cores
@pytest.mark.parametrize("check", ["vllm_check", "vllm_spec_check", "vllm_tp_check"])
def test_vllm_rast_is_the_hf_engines_rast(check, tmp_path):
    """vllm_check: greedy tokens, stops, log-probs, preemption; vllm_spec_check: speculation;
    vllm_tp_check: tensor parallelism 2 (each against the HF engine)."""
    module = importlib.import_module(f"tests.transfer.decode.{check}")
    run = subprocess.run([sys.executable, "-m", module.__name__, str(tmp_path)], check=False,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    failed = {name: detail for name, (ok, detail) in
              module.verdicts(json.loads((tmp_path / module.RESULT).read_text())).items()
              if not ok}
    assert not failed


def test_the_plan_names_the_composite_with_each_small_model_once(tiny_models, monkeypatch):
    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "check_cpu_head_dims", lambda configs: None)
    one = resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], lam=1.0)
    # the same pair twice (its models loaded once), and a pair at lambda 0 (not loaded at all)
    plan = engine_plan(tiny_models["large"], (one, one.with_lam(0.5), one.with_lam(0.0)),
                       LoadOptions(engine="vllm", max_model_len=64, vllm_args={"seed": 3}))
    spec = plan.kwargs["hf_overrides"]["rast"]
    assert plan.kwargs["hf_overrides"]["architectures"] == ["RastForCausalLM"]
    assert spec["members"] == [tiny_models["small_base"], tiny_models["small_rl"]]
    assert spec["pairs"] == [[0, 1], [0, 1]] and spec["lams"] == [1.0, 0.5]
    assert spec["shared_vocab"] == len(plan.tokenizer) < 128  # the tokenizer's ids, not the rows
    assert plan.deltas == (one, one.with_lam(0.5))
    assert plan.context == plan.kwargs["max_model_len"] == 64  # min(context 256, max_model_len)
    # on CPU: eager, and no chunked prefill (vLLM 0.32's CPU runner fails a seeded sample of a
    # partly prefilled prompt); the caller's vllm_args are applied last
    assert plan.kwargs["enforce_eager"] and plan.kwargs["enable_chunked_prefill"] is False
    assert plan.kwargs["seed"] == 3 and plan.kwargs["enable_prefix_caching"]
    # a KV cache of its own size, not a share of RAM less the process's RSS (which a fuller
    # machine turns negative); a share given, or VLLM_CPU_KVCACHE_SPACE, replaces it
    assert plan.kwargs["kv_cache_memory_bytes"] == vllm_engine.CPU_KV_CACHE_BYTES
    shared = engine_plan(tiny_models["large"], (one,), LoadOptions(
        engine="vllm", max_model_len=64, gpu_memory_utilization=0.2))
    assert "kv_cache_memory_bytes" not in shared.kwargs
    assert shared.kwargs["gpu_memory_utilization"] == 0.2
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    spaced = engine_plan(tiny_models["large"], (one,), LoadOptions(engine="vllm", max_model_len=64))
    assert "kv_cache_memory_bytes" not in spaced.kwargs


def test_heads_vllms_cpu_attention_cannot_take_are_refused_in_one_line(tiny_models,
                                                                       monkeypatch):
    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: True)
    with pytest.raises(UserError, match="large has attention heads of 16 dims; vLLM's CPU attention takes 32, 64") as err:
        engine_plan(tiny_models["large"], (), LoadOptions(engine="vllm"))
    assert "\n" not in str(err.value)


def test_ray_on_cpu_is_refused_in_one_line(tiny_models, monkeypatch):
    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "check_cpu_head_dims", lambda configs: None)
    with pytest.raises(UserError, match="CPU build has no Ray executor") as err:
        engine_plan(tiny_models["large"], (), LoadOptions(engine="vllm",
                                                          distributed_executor_backend="ray"))
    assert "\n" not in str(err.value)


def test_alone_the_target_is_the_composite_without_members(tiny_models, monkeypatch):
    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: False)
    plan = engine_plan(tiny_models["large"], (), LoadOptions(engine="vllm"))
    spec = plan.kwargs["hf_overrides"]["rast"]
    assert spec["members"] == [] and spec["pairs"] == [] and spec["lams"] == []
    assert not plan.kwargs["enforce_eager"] and "enable_chunked_prefill" not in plan.kwargs
    assert plan.kwargs["gpu_memory_utilization"] == 0.9
    assert "kv_cache_memory_bytes" not in plan.kwargs
    assert plan.kwargs["dtype"] == "bfloat16" and plan.context == 256


def test_a_lora_pair_is_merged_once_into_a_full_model(tiny_models, tmp_path, monkeypatch):
    from peft import LoraConfig

    from tests.transfer.decode.test_engine import save_adapter_and_merged

    monkeypatch.setattr("train.models.RAST_HOME", tmp_path / "home")
    adapter, merged = save_adapter_and_merged(
        tiny_models["small_base"], LoraConfig(r=4, target_modules=["q_proj"],
                                              init_lora_weights=False), tmp_path, seed=0)
    pair = resolve_delta(adapter, tiny_models["small_base"], lam=1.0).pair
    path = vllm_engine.merged_lora_dir(pair, "float32")
    assert path.startswith(str(tmp_path / "home" / "merged"))
    assert vllm_engine.merged_lora_dir(pair, "float32") == path  # cached: merged once
    from safetensors.torch import load_file

    ours, peft_merged = load_file(f"{path}/model.safetensors"), load_file(
        f"{merged}/model.safetensors")
    assert ours.keys() == peft_merged.keys()
    assert all((ours[k] - peft_merged[k]).abs().max() < 1e-6 for k in ours)


def output(token_ids, finish_reason, stop_reason=None):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=token_ids,
                                                    finish_reason=finish_reason,
                                                    stop_reason=stop_reason)])


@pytest.mark.parametrize("finish, reason, stop, finished", [
    ("stop", 5, 5, True),  # a stop id: the last token, not in the text
    ("stop", "c", "c", True),  # a stop string: the text is cut before it
    ("length", None, None, False),  # max_new_tokens
])
def test_vllm_outputs_become_the_seams_completions(finish, reason, stop, finished):
    decoder = VllmDecoder(SimpleNamespace(tokenizer=SimpleNamespace(
        decode=lambda ids, skip_special_tokens: "".join("abcdef"[i] for i in ids))), ())
    params = SamplingParams(stop_strings=("c",) if isinstance(reason, str) else ())
    completion = decoder._completion(output([0, 1, 2, 3, 5], finish, reason), "k", 1, 7, params)
    assert (completion.key, completion.sample_index, completion.seed) == ("k", 1, 7)
    assert completion.token_ids == [0, 1, 2, 3, 5]
    assert (completion.stop, completion.finished) == (stop, finished)
    assert completion.text == {5: "abcd", "c": "ab", None: "abcdf"}[stop]


def test_an_end_token_vllm_was_not_given_is_an_error_not_a_silent_stop():
    decoder = VllmDecoder(SimpleNamespace(tokenizer=None), ())
    with pytest.raises(RuntimeError, match="not given"):
        decoder._completion(output([1], "stop", None), "k", 0, 0, SamplingParams())


@pytest.mark.parametrize("overrides, message", [
    ({"engine": "sglang"}, "engine must be one of hf, vllm"),
    ({"engine": "vllm", "tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
    ({"draft_tokens": 4}, "draft_tokens needs speculative: true"),
    ({"speculative": True, "draft_tokens": 65}, r"a value in \[0, 64\], got 65"),
])
def test_engine_settings_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        TransferConfig(**overrides)


def test_with_lams_sets_the_workers_strengths_before_it_decodes_and_only_then():
    calls = []
    engine = SimpleNamespace(lams=(1.0,), llm=SimpleNamespace(
        collective_rpc=lambda name, args: calls.append((name, args))))
    pair = SimpleNamespace(base="b", rl="r")
    decoder = VllmDecoder(engine, (Delta(pair, 1.0),))
    swept = decoder.with_lams([2.0])
    assert calls == [] and swept.engine is decoder.engine  # nothing loads, nothing set yet
    swept._set_lams()
    swept._set_lams()  # already set: no second call
    decoder._set_lams()
    assert calls == [("set_rast_lams", ([2.0],)), ("set_rast_lams", ([1.0],))]
    with pytest.raises(ValueError, match="non-zero lambda"):
        decoder.with_lams([0.0])


class FakeEngine:
    """vLLM's LLMEngine as generate_batches uses it: requests queue, step() finishes the first
    two, the later first (vLLM hands finished requests back in any order)."""

    def __init__(self):
        self.queued, self.aborted = [], []

    def add_request(self, request_id, prompt, params):
        self.queued.append((request_id, prompt["prompt_token_ids"], params.seed))

    def step(self):
        done, self.queued = self.queued[:2], self.queued[2:]
        return [SimpleNamespace(request_id=request_id, finished=True, outputs=[SimpleNamespace(
            token_ids=[len(ids)], finish_reason="length", stop_reason=None)])
            for request_id, ids, _ in reversed(done)]

    def abort_request(self, request_ids):
        self.aborted += request_ids


class FakeTokenizer:
    def __call__(self, texts):
        return {"input_ids": [[1] * len(text) for text in texts]}

    def decode(self, ids, skip_special_tokens):
        return str(ids)


def fake_decoder() -> VllmDecoder:
    import itertools

    llm = SimpleNamespace(llm_engine=FakeEngine(), _preprocess_cmpl=lambda prompts: prompts)
    engine = SimpleNamespace(llm=llm, lams=(), context=1024,
                             default_stop_ids=[0], requests=itertools.count(),
                             tokenizer=FakeTokenizer())
    return VllmDecoder(engine, ())


def test_batches_come_back_in_prompt_order_whatever_order_vllm_finishes_them():
    decoder = fake_decoder()
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    batches = list(decoder.generate_batches(prompts, SamplingParams(temperature=1.0), n=2,
                                            seed=0, batch_size=4, progress=False))
    assert [[(c.key, c.sample_index) for c in batch] for batch in batches] == [
        [("a", 0), ("a", 1), ("bb", 0), ("bb", 1)], [("ccc", 0), ("ccc", 1), ("dddd", 0),
                                                     ("dddd", 1)], [("eeeee", 0), ("eeeee", 1)]]
    assert all(c.token_ids == [len(c.key)] for batch in batches for c in batch)
    assert len({c.seed for batch in batches for c in batch}) == 10  # one seed per sample


def test_an_abandoned_call_leaves_nothing_queued_in_the_engine():
    decoder = fake_decoder()
    engine = decoder.engine.llm.llm_engine
    batches = decoder.generate_batches(["a", "bb", "ccc", "dddd"], SamplingParams(), n=1,
                                       batch_size=1, progress=False)
    next(batches)  # the first batch; one step finished "a" and "bb"
    batches.close()  # the caller stops (an exception, a kill): the rest is aborted
    assert engine.aborted == ["rast-2", "rast-3"]


def test_speculation_drafts_with_the_first_pairs_rl_model_padded_to_the_targets_rows(
        tiny_models, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "check_cpu_head_dims", lambda configs: None)
    monkeypatch.setattr("train.models.RAST_HOME", tmp_path / "home")
    one = resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], lam=1.0)
    plan = engine_plan(tiny_models["large"], (one,), LoadOptions(
        engine="vllm", speculative=True, draft_tokens=3, tensor_parallel_size=2))
    spec = plan.kwargs["speculative_config"]
    assert plan.kwargs["disable_log_stats"] is False  # counters() reads its counts
    assert spec["method"] == "draft_model" and spec["num_speculative_tokens"] == 3
    assert spec["draft_tensor_parallel_size"] == 2  # vLLM 0.32: the target's, no other
    assert spec["model"].startswith(str(tmp_path / "home" / "drafts"))
    padded, own = load_file(f"{spec['model']}/model.safetensors"), load_file(
        f"{tiny_models['small_rl']}/model.safetensors")
    rows = padded["model.embed_tokens.weight"]
    assert rows.shape[0] == 160 and own["model.embed_tokens.weight"].shape[0] == 128  # L's rows
    assert torch.equal(rows[:128], own["model.embed_tokens.weight"])
    assert not rows[128:].any()  # pad ids: zero rows, and -inf in the target
    assert all(torch.equal(padded[k], own[k]) for k in own if "embed_tokens" not in k)
    config = json.loads(Path(spec["model"], "config.json").read_text())
    assert config["architectures"] == ["RastForCausalLM"]  # S_RL alone, cut to the tokenizer
    assert config["rast"]["shared_vocab"] == len(plan.tokenizer) and not config["rast"]["pairs"]
    assert vllm_engine.padded_draft_dir(tiny_models["small_rl"], 160, len(plan.tokenizer),
                                        "float32") == spec["model"]
    plain = engine_plan(tiny_models["large"], (one,), LoadOptions(engine="vllm"))
    assert "speculative_config" not in plain.kwargs


def test_speculation_without_a_pair_is_refused(tiny_models, monkeypatch):
    monkeypatch.setattr(vllm_engine, "cpu_platform", lambda: True)
    monkeypatch.setattr(vllm_engine, "check_cpu_head_dims", lambda configs: None)
    with pytest.raises(UserError, match="needs a small pair"):
        engine_plan(tiny_models["large"], (), LoadOptions(engine="vllm", speculative=True))


def test_on_cpu_the_samplers_expand_is_mended_and_vllms_own_loses_its_result(monkeypatch):
    """vllm-cpu 0.32.0's expand_batch_to_tokens never writes its result back (the rejection
    sampler then reads temperatures from uninitialised memory); the plugin's replacement is
    what the Triton kernel computes."""
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler

    from transfer.decode import vllm_plugin

    monkeypatch.setattr(rejection_sampler, "expand_batch_to_tokens",
                        rejection_sampler.expand_batch_to_tokens)  # restored after the test
    current_platform.import_kernels()
    current_platform.register_triton_kernel_overrides()
    temperatures = torch.tensor([0.7, 1.5, 0.0])
    cu_num_tokens = torch.tensor([2, 5, 6], dtype=torch.int32)
    expected = torch.tensor([0.7, 0.7, 1.5, 1.5, 1.5, 1.0])
    vllms = rejection_sampler.expand_batch_to_tokens(temperatures, cu_num_tokens, 6,
                                                     replace_from=0, replace_to=1)
    assert not torch.equal(vllms, expected)
    assert vllm_plugin.patch_cpu_expand()
    assert torch.equal(rejection_sampler.expand_batch_to_tokens(
        temperatures, cu_num_tokens, 6, replace_from=0, replace_to=1), expected)
    ints = rejection_sampler.expand_batch_to_tokens(torch.tensor([3, -1], dtype=torch.int32),
                                                    torch.tensor([1, 4]), 4)
    assert ints.tolist() == [3, -1, -1, -1] and ints.dtype == torch.int32


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_a_recipes_draft_tokens_reach_either_engine(engine, monkeypatch):
    from transfer.eval import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "open_decoder", lambda target, deltas, options: seen.append(
        options))
    pair = SimpleNamespace(base="b", rl="r")
    system = evaluate.System("RAST", "t", (Delta(pair, 1.0),))
    evaluate.load_decoder(system, TransferConfig(engine=engine, speculative=True, draft_tokens=3))
    assert (seen[0].engine, seen[0].speculative, seen[0].draft_tokens) == (engine, True, 3)


def test_counters_read_vllms_metrics_only_where_it_keeps_them():
    """LLM's default keeps no stats, and get_metrics() then asserts: the evaluation of a plain
    system calls counters() before its first batch."""
    def engine(log_stats, metrics=()):
        def get_metrics():
            assert log_stats, "Stat logging disabled"
            return [SimpleNamespace(name=name, value=value) for name, value in metrics]

        return SimpleNamespace(llm=SimpleNamespace(llm_engine=SimpleNamespace(
            log_stats=log_stats), get_metrics=get_metrics))

    assert VllmDecoder(engine(False), ()).counters() == {}
    assert VllmDecoder(engine(True, [("vllm:num_preemptions", 0)]), ()).counters() == {}
    counted = engine(True, [("vllm:spec_decode_num_draft_tokens", 8),
                            ("vllm:spec_decode_num_accepted_tokens", 6)])
    assert VllmDecoder(counted, ()).counters() == {"drafted": 8, "accepted": 6}
