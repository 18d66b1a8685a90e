"""The decode loop on tiny random models: exact against a no-cache recompute, identities,
batch invariance, shared LoRA weights, and forward counts."""

import json
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import build_random_qwen2, load_engine
from train.errors import UserError
from train.models import load_tokenizer
from train.tiny.tokenizer import build_tokenizer
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.decode.loading import device_and_dtype
from transfer.generate import main as generate_main

PROMPTS = ["Q: 47*8=\nA: ", "Q: 3*4=\nA: ", "Q: 123*45=\nA: ", "7", "Q: 9*9=\nA: Let's",
           "Q: 6*7=", "Q: 88*12=\nA: 8", "Q: 5*5=\nA: "]  # different lengths: left padding
SHARED = 98
# Random models rarely emit eos (id 0); these frequent characters end rows at scattered steps.
STOP_IDS = [0, *range(40, 50)]


# tiny matmuls: threads only add overhead on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engines(tiny_models):
    """RAST, plain large, and RAST with S_RL == S_base, loaded once for the module."""
    large, base, rl = tiny_models["large"], tiny_models["small_base"], tiny_models["small_rl"]
    return {"rast": load_engine(large, base, rl, lam=1.5),
            "plain": load_engine(large),
            "same_pair": load_engine(large, base, base, lam=1.0)}


def by_key(completions):
    return {(c.key, c.sample_index): (c.token_ids, c.finished) for c in completions}


def test_cached_loop_equals_a_no_cache_fp32_recompute_at_every_step(engines, tiny_models):
    engine, lam = engines["rast"], 1.5
    tokenizer = engine.tokenizer
    prompt_ids = tokenizer(PROMPTS)["input_ids"]
    steps = []
    rows = engine.decode(prompt_ids, [[seed] for seed in range(len(PROMPTS))],
                         SamplingParams(temperature=1.0, max_new_tokens=12), STOP_IDS,
                         on_step=lambda active, combined: steps.append((active.clone(), combined)))
    lengths = [len(ids) for ids, _ in rows]
    assert len(set(lengths)) > 2 and min(lengths) < 12  # rows left the batch at different steps

    models = {name: Qwen2ForCausalLM.from_pretrained(tiny_models[name]).float().eval()
              for name in ("large", "small_base", "small_rl")}
    for step, (active, combined) in enumerate(steps):
        assert torch.isneginf(combined[:, SHARED:]).all()
        for position, row in enumerate(active.tolist()):
            sequence = torch.tensor([prompt_ids[row] + rows[row][0][:step]])
            with torch.no_grad():  # whole sequence, no cache, no padding
                z = {name: model(sequence).logits[0, -1, :SHARED] for name, model in models.items()}
            expected = z["large"] + lam * (z["small_rl"] - z["small_base"])
            torch.testing.assert_close(combined[position, :SHARED], expected, rtol=0, atol=1e-4)


def test_lam_zero_and_identical_pair_reproduce_the_large_models_greedy_generate(engines, tiny_models):
    large = Qwen2ForCausalLM.from_pretrained(tiny_models["large"]).eval()
    tokenizer = engines["plain"].tokenizer
    params = SamplingParams(temperature=0, max_new_tokens=15)
    for name in ("plain", "same_pair"):
        completions = engines[name].generate(PROMPTS, params, batch_size=8)
        for prompt, completion in zip(PROMPTS, completions):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            # ids >= 98 are embedding padding: the engine masks them, so generate must too
            reference = large.generate(ids, do_sample=False, max_new_tokens=15,
                                       suppress_tokens=list(range(SHARED, 160)))[0, ids.shape[1]:]
            assert completion.token_ids == reference.tolist()


def test_identical_pair_samples_exactly_what_the_large_model_alone_samples(engines):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=15)
    plain = engines["plain"].generate(PROMPTS, params, n=2, seed=3)
    same_pair = engines["same_pair"].generate(PROMPTS, params, n=2, seed=3)
    assert by_key(plain) == by_key(same_pair)
    assert by_key(plain) != by_key(engines["rast"].generate(PROMPTS, params, n=2, seed=3))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_output_does_not_depend_on_batch_size_or_order(engines, temperature):
    engine, params = engines["rast"], SamplingParams(temperature=temperature, max_new_tokens=12)
    reference = by_key(engine.generate(PROMPTS, params, n=2, batch_size=16, stop_ids=STOP_IDS))
    alone = by_key(engine.generate(PROMPTS, params, n=2, batch_size=1, stop_ids=STOP_IDS))
    reordered = by_key(engine.generate(PROMPTS[::-1], params, n=2, batch_size=6, stop_ids=STOP_IDS))
    assert reference == alone == reordered
    if temperature > 0:  # samples of one prompt differ: each has its own seed
        assert reference[(PROMPTS[0], 0)] != reference[(PROMPTS[0], 1)]


@pytest.mark.parametrize("stack_small", [True, False])
def test_one_forward_per_model_per_token_one_prefill_and_finished_rows_cost_nothing(tiny_models,
                                                                                   stack_small):
    def load():
        return load_engine(tiny_models["large"], tiny_models["small_base"],
                           tiny_models["small_rl"], stack_small=stack_small)

    engine = load()
    names = ["large", "small_base+rl"] if stack_small else ["large", "small_base", "small_rl"]
    assert list(engine.forward_counts()) == names
    copies = {"large": 1, "small_base+rl": 2, "small_base": 1, "small_rl": 1}  # rows per row
    prompt_ids = engine.tokenizer(PROMPTS[:4])["input_ids"]
    n, new_tokens = 3, 10
    seeds = [[10 * p + i for i in range(n)] for p in range(4)]
    engine.decode(prompt_ids, seeds, SamplingParams(max_new_tokens=new_tokens), stop_ids=[])
    for name, counts in engine.forward_counts().items():
        assert counts == {"prefill_calls": 1, "prefill_rows": 4 * copies[name],  # n samples share
                          "decode_calls": new_tokens - 1,                       # one prefill
                          "decode_rows": 4 * n * (new_tokens - 1) * copies[name]}

    engine = load()
    rows = engine.decode(prompt_ids, seeds, SamplingParams(max_new_tokens=new_tokens), STOP_IDS)
    # a row that produced k tokens was fed k - 1 of them: nothing after it finished
    fed = sum(len(ids) - 1 for ids, _ in rows)
    assert fed < 4 * n * (new_tokens - 1)
    for name, counts in engine.forward_counts().items():
        assert counts["decode_rows"] == fed * copies[name]


@pytest.fixture(scope="module")
def lora_pair(tiny_models, tmp_path_factory):
    """A LoRA adapter of small_base with nonzero B, and the same adapter merged into a full model."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False)  # random B: the adapter changes the logits
    return save_adapter_and_merged(tiny_models["small_base"], config, tmp_path_factory.mktemp(
        "lora"), seed=0)


def save_adapter_and_merged(base: str, config: LoraConfig, root, seed: int) -> tuple[str, str]:
    """A random LoRA adapter of `base` under root/adapter and the same adapter merged into a full
    model (with the tokenizer) under root/merged."""
    torch.manual_seed(seed)
    get_peft_model(Qwen2ForCausalLM.from_pretrained(base), config).save_pretrained(
        root / "adapter", save_embedding_layers="embed_tokens" in config.target_modules)
    merged = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(base),
                                       root / "adapter").merge_and_unload()
    merged.save_pretrained(root / "merged")
    build_tokenizer().save_pretrained(root / "merged")
    return str(root / "adapter"), str(root / "merged")


def test_lora_shared_weights_give_the_tokens_of_two_separate_models(tiny_models, lora_pair):
    adapter, merged = lora_pair
    shared = load_engine(tiny_models["large"], tiny_models["small_base"], adapter)
    separate = load_engine(tiny_models["large"], tiny_models["small_base"], merged,
                           stack_small=False)
    assert [model.name for model in shared.small] == ["small_base+rl"]  # one set of small weights
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_new_tokens=12)
        shared_out = shared.generate(PROMPTS, params, n=2, stop_ids=STOP_IDS)
        assert by_key(shared_out) == by_key(separate.generate(PROMPTS, params, n=2, stop_ids=STOP_IDS))
    plain = load_engine(tiny_models["large"])
    assert by_key(shared_out) != by_key(plain.generate(PROMPTS, params, n=2, stop_ids=STOP_IDS))
    counts = shared.forward_counts()  # one small forward per step, computing base and RL rows
    assert counts["small_base+rl"]["decode_calls"] == counts["large"]["decode_calls"]
    assert counts["small_base+rl"]["decode_rows"] == 2 * counts["large"]["decode_rows"]
    # the stacked LoRA pair runs on fixed buffers too; peft's mixed batch cannot
    static = load_engine(tiny_models["large"], tiny_models["small_base"], adapter,
                         cache="static")
    assert by_key(static.generate(PROMPTS, params, n=2, stop_ids=STOP_IDS)) == by_key(shared_out)
    with pytest.raises(UserError, match=r"cache=static does not fit the small_base\+rl model"):
        load_engine(tiny_models["large"], tiny_models["small_base"], adapter,
                    cache="static", stack_small=False)


def test_lora_pairs_stacking_does_not_cover_keep_peft_mixed_batches(tiny_models, tmp_path):
    """LoRA on the embeddings: no stacked form, so peft's mixed-adapter batch, with the tokens of
    the merged model (untied embeddings: merging a tied one would change the head too)."""
    base = build_random_qwen2(tmp_path / "base", seed=4, tie_word_embeddings=False)
    config = LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False)
    adapter, merged = save_adapter_and_merged(base, config, tmp_path, seed=1)
    shared = load_engine(tiny_models["large"], base, adapter)
    assert shared.small[0].adapters == ("__base__", "rl")
    separate = load_engine(tiny_models["large"], base, merged)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    assert by_key(shared.generate(PROMPTS, params, stop_ids=STOP_IDS)) == by_key(
        separate.generate(PROMPTS, params, stop_ids=STOP_IDS))


def test_rast_pair_json_names_the_small_base(tiny_models, tmp_path):
    rl_dir = tmp_path / "grpo-output"
    shutil.copytree(tiny_models["small_rl"], rl_dir)
    with pytest.raises(UserError, match="pass small_base"):
        load_engine(tiny_models["large"], small_rl=str(rl_dir))
    (rl_dir / "rast_pair.json").write_text(json.dumps({"small_base": tiny_models["small_base"]}))
    engine = load_engine(tiny_models["large"], small_rl=str(rl_dir))
    assert [model.name for model in engine.small] == ["small_base+rl"]  # stacked full weights
    assert engine.small[0].adapters is None


def test_a_small_model_with_another_tokenizer_is_refused_naming_both(tiny_models, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_models["small_base"], other)
    tokenizer = load_tokenizer(tiny_models["small_base"])
    tokenizer.add_tokens(["<think>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(UserError, match="tokenizers of .* and .* differ") as error:
        load_engine(tiny_models["large"], str(other), tiny_models["small_rl"])
    assert str(other) in str(error.value) and "\n" not in str(error.value)


def test_a_small_rl_model_declaring_another_eos_is_paired_and_its_eos_stops(tiny_models, tmp_path):
    # Hub RL checkpoints (SimpleRL-Zoo's) may declare eos <|im_end|> where the base declares
    # <|endoftext|>: the same ids, another setting. Here the stand-in for <|im_end|> is a character
    # the pair is known to emit, so the decode below must end on it.
    large, base = tiny_models["large"], tiny_models["small_base"]
    params = SamplingParams(max_new_tokens=16)
    prompt_ids = load_tokenizer(large)(["Q: 47*8=\nA: "])["input_ids"]
    plain = load_engine(large, base, tiny_models["small_rl"])
    emitted, _ = plain.decode(prompt_ids, [[0]], params, stop_ids=[])[0]
    new_eos = next(token for token in emitted[1:] if token not in plain.default_stop_ids)
    rl = tmp_path / "rl"
    shutil.copytree(tiny_models["small_rl"], rl)
    tokenizer = load_tokenizer(tiny_models["small_rl"])
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(new_eos)
    tokenizer.save_pretrained(rl)
    engine = load_engine(large, base, str(rl))
    assert engine.default_stop_ids == sorted([*plain.default_stop_ids, new_eos])
    ids, finished = engine.decode(prompt_ids, [[0]], params)[0]
    assert finished and ids == emitted[:emitted.index(ids[-1]) + 1] and new_eos in emitted[:len(ids)]


def test_device_and_dtype_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    assert device_and_dtype(None, None, None) == ("cpu", "cpu", torch.float32)
    assert device_and_dtype("cuda:0", None, "cuda:1") == ("cuda:0", "cuda:1", torch.bfloat16)
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=0)


def test_engine_stops_on_the_tokenizer_eos_by_default(engines):
    assert engines["rast"].default_stop_ids == [0]



def test_generate_cli_writes_one_jsonl_row_per_sample(tiny_models, tmp_path):

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(PROMPTS[:3])))
    outputs = {}
    for cache in ("auto", "static"):
        output = tmp_path / f"{cache}.jsonl"
        generate_main(["--target", tiny_models["large"], "--small_base", tiny_models["small_base"],
              "--small_rl", tiny_models["small_rl"], "--input", str(prompts),
              "--output", str(output), "--n", "2", "--max_new_tokens", "5", "--cache", cache])
        outputs[cache] = [json.loads(line) for line in output.read_text().splitlines()]
    rows = outputs["auto"]
    assert [(row["id"], row["sample_index"]) for row in rows] == [
        (f"p{i}", s) for i in range(3) for s in range(2)]
    assert all(len(row["token_ids"]) <= 5 and row["prompt"] == PROMPTS[int(row["id"][1])] for row in rows)
    assert outputs["static"] == rows


def test_stacked_pair_and_static_cache_give_two_models_logits_through_growth_and_compaction(
        tiny_models):
    """The stacked small pair, eager and on fixed buffers (the CUDA-graph path without capture),
    against two separate small models in the eager loop: rows finish at scattered steps
    (compaction rebuilds), the cache doubles past 32 and 64 columns, and the second and third
    batches reuse the pooled buffers of the first."""
    large, base, rl = tiny_models["large"], tiny_models["small_base"], tiny_models["small_rl"]
    engines = {mode: load_engine(large, base, rl, lam=1.5, cache=mode)
               for mode in ("dynamic", "static")}
    engines["separate"] = load_engine(large, base, rl, lam=1.5, stack_small=False)
    assert [len(engine.small) for engine in engines.values()] == [1, 1, 2]
    params = SamplingParams(temperature=1.0, max_new_tokens=70)
    stop_ids = [0, *range(40, 43)]
    runs = {}
    for mode, engine in engines.items():
        steps = []
        prompt_ids = engine.tokenizer(PROMPTS)["input_ids"]
        for _ in range(3 if mode == "static" else 1):
            rows = engine.decode(prompt_ids, [[s, s + 100] for s in range(len(PROMPTS))], params,
                                 stop_ids, on_step=lambda a, z, steps=steps: steps.append((a, z)))
        runs[mode] = rows, steps
    rows, steps = runs["separate"]
    lengths = [len(ids) for ids, _ in rows]
    assert len(set(lengths)) > 8
    assert max(len(ids) for ids in prompt_ids) + max(lengths) > 64  # grew from 32 to 64 to 86
    for mode, repeats in (("dynamic", 1), ("static", 3)):
        mode_rows, mode_steps = runs[mode]
        assert mode_rows == rows and len(mode_steps) == repeats * len(steps)
        for (active, z), (mode_active, mode_z) in zip(steps * repeats, mode_steps):
            assert torch.equal(active, mode_active)
            torch.testing.assert_close(mode_z, z, rtol=0, atol=1e-5)
    counts = engines["static"].forward_counts()["large"]  # finished rows linger: < 2x the rows
    fed = 3 * sum(length - 1 for length in lengths)
    assert fed < counts["decode_rows"] < 2 * fed and engines["static"].large.pool.idle


def test_cache_modes_are_checked_against_the_model():
    engine_args = {"vocab_size": 98}
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1,
                                         intermediate_size=32))
    assert RastEngine(model, **engine_args).large.cache_mode == "dynamic"  # auto, on CPU
    with pytest.raises(UserError, match="cache=cuda-graphs needs the large model on one GPU"):
        RastEngine(model, cache="cuda-graphs", **engine_args)
    with pytest.raises(UserError, match="cache must be one of"):
        RastEngine(model, cache="paged", **engine_args)
    with pytest.raises(UserError, match="compile needs cache=static or cuda-graphs"):
        RastEngine(model, cache="dynamic", compile=True, **engine_args)
    assert RastEngine(model, compile=True, **engine_args).large.cache_mode == "static"


@pytest.mark.slow
def test_compiled_step_samples_the_tokens_of_the_eager_loop(engines, tiny_models):
    """torch.compile of the fixed-shape step (tens of seconds of compiling): same tokens, and
    combined logits within fp32 rounding of the eager loop, through growth and compaction."""
    compiled = load_engine(tiny_models["large"], tiny_models["small_base"],
                           tiny_models["small_rl"], lam=1.5, compile=True)
    params = SamplingParams(temperature=1.0, max_new_tokens=40)
    logits = {}
    for name, engine in (("eager", engines["rast"]), ("compiled", compiled)):
        steps = logits[name] = []
        completions = engine.generate(PROMPTS, params, n=2, stop_ids=STOP_IDS,
                                      progress=False)
        logits[name + " tokens"] = by_key(completions)
        engine.decode(engine.tokenizer(PROMPTS)["input_ids"], [[0]] * len(PROMPTS), params,
                      STOP_IDS, on_step=lambda active, z, steps=steps: steps.append(z))
    assert logits["eager tokens"] == logits["compiled tokens"]
    for eager, compiled_z in zip(logits["eager"], logits["compiled"], strict=True):
        torch.testing.assert_close(compiled_z, eager, rtol=0, atol=1e-4)


def test_pooled_buffers_are_cleaned_before_reuse(tiny_models):
    """Columns past a batch's length are masked, but 0 * NaN is NaN: whatever an earlier batch
    left in pooled buffers must not reach the next one."""
    engine = load_engine(tiny_models["large"], cache="static")
    prompt_ids = engine.tokenizer(PROMPTS)["input_ids"]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    first = engine.decode(prompt_ids, [[0]] * len(PROMPTS), params, stop_ids=[])
    engine.decode(prompt_ids[:1], [[0]], params, stop_ids=[])  # first batch's buffers -> pool
    with torch.inference_mode():  # the buffers are inference tensors
        for buffers in engine.large.pool.idle.values():
            for layer in buffers.cache.layers:
                layer.keys.fill_(float("nan"))
                layer.values.fill_(float("nan"))
    assert engine.decode(prompt_ids, [[0]] * len(PROMPTS), params, stop_ids=[]) == first
