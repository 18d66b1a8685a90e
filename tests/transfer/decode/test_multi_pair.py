"""Several small pairs steering one large model: z_L + sum_i lam_i (z_RL_i - z_base_i), as the
paper's vLLM fork combines up to three deltas. Loading from resolved deltas is the engine of the
same models bit for bit; two pairs equal a no-cache recompute at every step, whether they share a size (one stacked
4-block unit) or not (a unit each), a shared base counts once, and speculation stays exact."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from tests.conftest import build_random_qwen2, load_engine
from train.errors import UserError
from train.models import load_tokenizer
from transfer.decode.decoder import LoadOptions, SamplingParams
from transfer.decode.engine import RastEngine
from transfer.deltas import deltas_per_pair, resolve_delta
from transfer.generate import main as generate_main

PROMPTS = ["Q: 47*8=\nA: ", "Q: 3*4=\nA: ", "Q: 123*45=\nA: ", "7", "Q: 6*7="]
SHARED = 98  # tokens of the character tokenizer; every model has more embedding rows
STOP_IDS = [0, *range(40, 50)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def second_pairs(tiny_models, tmp_path_factory):
    """Second small pairs: one of the first pair's size, one of another size (hidden 48)."""
    root = tmp_path_factory.mktemp("second_pairs")
    same_base = build_random_qwen2(root / "same_base", seed=11)
    other_base = build_random_qwen2(root / "other_base", hidden=48, ffn=96, seed=12)
    return {"same": (same_base, build_random_qwen2(root / "same_rl", seed=13,
                                                   perturb_from=same_base)),
            "other": (other_base, build_random_qwen2(root / "other_rl", hidden=48, ffn=96,
                                                     seed=14, perturb_from=other_base))}


def load(path: str) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM.from_pretrained(path).float().eval()


def record_steps(engine, params, seeds=None):
    """Decode PROMPTS; -> (rows, [(active rows, combined logits)] per step)."""
    prompt_ids = engine.tokenizer(PROMPTS)["input_ids"]
    steps = []
    rows = engine.decode(prompt_ids, seeds or [[seed] for seed in range(len(PROMPTS))], params,
                         STOP_IDS, on_step=lambda active, combined: steps.append(
                             (active.clone(), combined.clone())))
    return rows, steps


@pytest.mark.parametrize("speculative", [False, True])
def test_from_deltas_is_the_engine_of_the_same_models_bit_for_bit(tiny_models, speculative):
    """One pair given as lists (transfer.generate's spelling) resolves to the one-pair delta, and
    the engine from_deltas loads from it decodes exactly as a RastEngine built by hand from the
    same three models in their roles (L, base, RL) at that lambda."""
    large, base, rl = (tiny_models[name] for name in ("large", "small_base", "small_rl"))
    delta = resolve_delta(rl, base, 1.5)
    assert deltas_per_pair([rl], [base], [1.5]) == (delta,)
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    # a fixed k: the adaptive one follows measured times, and logits of other verify widths
    # differ in float rounding
    options = {"speculative": speculative, "draft_tokens": 3 if speculative else None}
    loaded = RastEngine.from_deltas(large, (delta,), LoadOptions(**options))
    assert loaded.deltas == (delta,) and loaded.lams == [1.5]
    by_hand = RastEngine(load(large), [(load(base), load(rl))], [1.5],
                         tokenizer=load_tokenizer(large), **options)
    assert [unit.name for unit in loaded.small] == ["small_base+rl"]
    (rows, steps), (listed_rows, listed_steps) = (record_steps(e, params)
                                                  for e in (by_hand, loaded))
    assert rows == listed_rows
    assert len(steps) == len(listed_steps)
    for (active, combined), (listed_active, listed_combined) in zip(steps, listed_steps):
        assert torch.equal(active, listed_active) and torch.equal(combined, listed_combined)


@pytest.mark.parametrize("second", ["same", "other"])
def test_two_pairs_equal_a_no_cache_fp32_recompute_at_every_step(tiny_models, second_pairs,
                                                                 second):
    base_2, rl_2 = second_pairs[second]
    lams = [1.0, 0.5]
    engine = load_engine(tiny_models["large"],
                         [tiny_models["small_base"], base_2],
                         [tiny_models["small_rl"], rl_2], lam=lams)
    # one size: all four small models in one stacked forward; two sizes: a unit per pair
    assert [unit.copies for unit in engine.small] == ([4] if second == "same" else [2, 2])
    rows, steps = record_steps(engine, SamplingParams(temperature=1.0, max_new_tokens=10))
    assert len({len(ids) for ids, _ in rows}) > 1  # rows left the batch at different steps

    models = [load(path) for path in (tiny_models["large"], tiny_models["small_base"],
                                      tiny_models["small_rl"], base_2, rl_2)]
    prompt_ids = engine.tokenizer(PROMPTS)["input_ids"]
    for step, (active, combined) in enumerate(steps):
        for position, row in enumerate(active.tolist()):
            sequence = torch.tensor([prompt_ids[row] + rows[row][0][:step]])
            with torch.no_grad():
                z = [model(sequence).logits[0, -1, :SHARED] for model in models]
            expected = z[0] + lams[0] * (z[2] - z[1]) + lams[1] * (z[4] - z[3])
            torch.testing.assert_close(combined[position, :SHARED], expected, rtol=0, atol=1e-4)


def test_pairs_sharing_a_base_stack_it_once_and_a_lam_zero_pair_is_not_loaded(tiny_models,
                                                                             second_pairs):
    base, rl = tiny_models["small_base"], tiny_models["small_rl"]
    rl_2 = second_pairs["same"][1]  # stands in for a second RL run of the same base
    engine = load_engine(tiny_models["large"], [base, base], [rl, rl_2], lam=[0.5, 0.5])
    # a single --lam of transfer.generate applies to every pair, as the paper's code
    assert engine.deltas == deltas_per_pair([rl, rl_2], [base, base], [0.5])
    assert engine.lams == [0.5, 0.5]
    assert [(unit.name, unit.copies) for unit in engine.small] == [
        ("small_base_1+small_rl_1+small_rl_2", 3)]
    assert engine.slots == [(0, 1), (0, 2)]
    alone = load_engine(tiny_models["large"], [base, base], [rl, rl_2], lam=[0.5, 0.0])
    assert [unit.name for unit in alone.small] == ["small_base+rl"]
    assert alone.deltas == (resolve_delta(rl, base, 0.5),)
    params = SamplingParams(temperature=0, max_new_tokens=10)
    single = load_engine(tiny_models["large"], base, rl, lam=0.5)
    assert alone.generate(PROMPTS, params) == single.generate(PROMPTS, params)
    assert engine.generate(PROMPTS, params) != single.generate(PROMPTS, params)


@pytest.mark.parametrize("stack_small", [True, False])
def test_speculative_decoding_over_two_pairs_is_the_plain_loops_greedy_output(
        tiny_models, second_pairs, stack_small):
    base_2, rl_2 = second_pairs["other"]
    bases, rls = [tiny_models["small_base"], base_2], [tiny_models["small_rl"], rl_2]
    params = SamplingParams(temperature=0, max_new_tokens=16)
    plain = load_engine(tiny_models["large"], bases, rls, lam=[1.0, 1.0])
    spec = load_engine(tiny_models["large"], bases, rls, lam=[1.0, 1.0],
                       speculative=True, draft_tokens=3, stack_small=stack_small)
    expected = plain.generate(PROMPTS, params, stop_ids=STOP_IDS, batch_size=5)
    assert spec.generate(PROMPTS, params, stop_ids=STOP_IDS, batch_size=5) == expected
    assert spec.speculative.stats["drafted"] > 0
    assert spec.counters()["drafted"] == spec.speculative.stats["drafted"] and not plain.counters()


def test_mismatched_lists_are_refused_in_one_line(tiny_models):
    large, base, rl = (tiny_models[name] for name in ("large", "small_base", "small_rl"))
    with pytest.raises(UserError, match=r"^2 lambdas for 1 small RL model\(s\): give one per "
                                        r"--small_rl, or one for all$"):
        deltas_per_pair([rl], [base], [1.0, 0.5])
    with pytest.raises(UserError, match="^2 small_base for 1 small_rl: give one base per RL"):
        deltas_per_pair([rl], [base, base], [1.0])
    with pytest.raises(ValueError, match="2 lambdas for 1 small pairs: one per pair"):
        RastEngine(load(large), [(load(base), load(rl))], [1.0, 0.5], vocab_size=SHARED)


def test_the_cli_takes_several_pairs_each_with_its_lambda(tiny_models, second_pairs, tmp_path,
                                                          capsys):
    base_2, rl_2 = second_pairs["other"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: 3*4=\\nA: "}\n')
    common = ["--target", tiny_models["large"], "--input", str(prompts), "--temperature", "0",
              "--max_new_tokens", "8", "--small_base", tiny_models["small_base"], base_2,
              "--small_rl", tiny_models["small_rl"], rl_2]
    generate_main([*common, "--lam", "1", "0.5", "--output", str(tmp_path / "out.jsonl")])
    engine = load_engine(tiny_models["large"], [tiny_models["small_base"], base_2],
                         [tiny_models["small_rl"], rl_2], lam=[1.0, 0.5])
    expected = engine.generate(["Q: 3*4=\nA: "], SamplingParams(temperature=0, max_new_tokens=8))
    assert f'"token_ids": {expected[0].token_ids}' in (tmp_path / "out.jsonl").read_text()
    with pytest.raises(SystemExit) as exit_info:
        generate_main([*common, "--lam", "1", "0.5", "0.2", "--output", str(tmp_path / "b.jsonl")])
    assert exit_info.value.code == 2
    assert "3 lambdas for 2 small RL model(s)" in capsys.readouterr().err


def test_a_single_lam_of_the_cli_applies_to_every_pair(tiny_models, second_pairs, tmp_path,
                                                        monkeypatch):
    """`--small_rl A B --lam 0.5` steers by 0.5 (A) + 0.5 (B), as the paper's code; the settings
    file records the one value as given."""
    import json

    from transfer import generate

    base_2, rl_2 = second_pairs["other"]
    opened = []
    real = generate.open_decoder

    def recording(target, deltas, options):
        opened.append(deltas)
        return real(target, deltas, options)

    monkeypatch.setattr(generate, "open_decoder", recording)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: 3*4=\\nA: "}\n')
    output = tmp_path / "out.jsonl"
    generate_main(["--target", tiny_models["large"], "--input", str(prompts), "--max_new_tokens",
                   "4", "--small_base", tiny_models["small_base"], base_2, "--small_rl",
                   tiny_models["small_rl"], rl_2, "--lam", "0.5", "--output", str(output)])
    assert opened == [(resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], 0.5),
                       resolve_delta(rl_2, base_2, 0.5))]
    settings = json.loads((tmp_path / "out.jsonl.settings.json").read_text())
    assert settings["lam"] == 0.5 and settings["small_rl"] == [tiny_models["small_rl"], rl_2]
