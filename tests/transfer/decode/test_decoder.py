"""The decoder seam (transfer.decode.decoder) as the engine implements it: a lambda sweep over
loaded models is `with_lams`, and gives what an engine loaded fresh at that lambda gives."""

import pytest

from tests.conftest import load_engine
from train.errors import UserError
from transfer.decode.backends import open_decoder
from transfer.decode.decoder import (
    Decoder,
    LoadOptions,
    SamplingParams,
    acceptance_rate,
    since,
    sweepable,
    tokens_per_round,
)
from transfer.decode.engine import RastEngine
from transfer.deltas import resolve_delta

PROMPTS = ["Q: 47*8=\nA: ", "Q: 3*4=\nA: ", "Q: 123*45=\nA: "]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def triple(tiny_models):
    return tiny_models["large"], tiny_models["small_base"], tiny_models["small_rl"]


def test_a_swept_engine_decodes_as_one_loaded_fresh_at_that_lambda(triple):
    large, base, rl = triple
    engine = load_engine(large, base, rl, lam=0.5)
    swept = engine.with_lams([2.0])
    fresh = load_engine(large, base, rl, lam=2.0)
    assert swept.deltas == fresh.deltas == (resolve_delta(rl, base, 2.0),)
    assert swept.large is engine.large and swept.small == engine.small  # no model loaded again
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_new_tokens=10)
        expected = fresh.generate(PROMPTS, params, n=2, seed=5, progress=False)
        assert swept.generate(PROMPTS, params, n=2, seed=5, progress=False) == expected
        if temperature:  # the lambda reached the logits (greedy tiny models agree at both)
            assert engine.generate(PROMPTS, params, n=2, seed=5, progress=False) != expected
    # the engine it was swept from keeps its own lambda
    assert engine.lams == [0.5] and engine.deltas == (resolve_delta(rl, base, 0.5),)
    back = swept.with_lams([0.5])
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    assert back.generate(PROMPTS, params, progress=False) == engine.generate(PROMPTS, params,
                                                                             progress=False)


def test_with_lams_refuses_a_zero_a_count_mismatch_and_an_engine_without_pairs(triple):
    large, base, rl = triple
    engine = load_engine(large, base, rl, lam=1.0)
    with pytest.raises(ValueError, match="a non-zero lambda for each of the 1 loaded pairs"):
        engine.with_lams([0.0])  # a pair at 0 is not loaded: another decoder
    with pytest.raises(ValueError, match="a non-zero lambda for each of the 1 loaded pairs"):
        engine.with_lams([1.0, 2.0])
    with pytest.raises(UserError, match="lambda must be a finite number >= 0, got -1"):
        engine.with_lams([-1.0])
    with pytest.raises(ValueError, match="for each of the 0 loaded pairs"):
        load_engine(large).with_lams([1.0])


def test_open_decoder_loads_the_reference_engine_for_resolved_deltas(triple):
    large, base, rl = triple
    delta = resolve_delta(rl, base, 1.5)
    decoder = open_decoder(large, (delta,), LoadOptions(cache="dynamic"))
    assert isinstance(decoder, RastEngine)
    seam = [name for name in vars(Decoder) if not name.startswith("_")]
    assert {"generate_batches", "generate", "with_lams", "counters"} <= set(seam)
    assert all(callable(getattr(decoder, name)) for name in seam if name != "deltas")
    assert decoder.deltas == (delta,) and decoder.lams == [1.5]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert decoder.generate(PROMPTS, params, progress=False) == load_engine(
        large, base, rl, lam=1.5).generate(PROMPTS, params, progress=False)
    assert open_decoder(large).deltas == () and open_decoder(large).small == []
    # a pair at lambda 0 is not loaded at all: the target alone
    assert open_decoder(large, (delta.with_lam(0.0),)).small == []


def test_which_decoder_a_sweep_can_reuse(tiny_models):
    base, rl = tiny_models["small_base"], tiny_models["small_rl"]
    a, other = resolve_delta(rl, base, 0.5), resolve_delta(base, base, 0.5)
    assert sweepable((a,), (a.with_lam(2.0),))
    assert not sweepable((a,), (other,))  # another pair
    assert not sweepable((a,), (a.with_lam(0.0),)) and not sweepable((a.with_lam(0.0),), (a,))
    assert not sweepable((), ()) and not sweepable((a,), (a, a))
    assert sweepable((a, other), (a.with_lam(1.0), other.with_lam(3.0)))
    assert not sweepable((a, other), (other, a))  # the same pairs in another order


def test_speculation_counters_and_their_rates():
    before = {"drafted": 10, "accepted": 5, "emitted": 8, "row_rounds": 4}
    now = {"drafted": 30, "accepted": 20, "emitted": 38, "row_rounds": 14}
    assert since(now, before) == {"drafted": 20, "accepted": 15, "emitted": 30, "row_rounds": 10}
    assert acceptance_rate(since(now, before)) == pytest.approx(0.75)
    assert tokens_per_round(since(now, before)) == pytest.approx(3.0)
    assert acceptance_rate({}) == 0.0 and tokens_per_round({}) == 0.0


def test_engine_counters_are_the_speculation_counts(triple):
    large, base, rl = triple
    spec = load_engine(large, base, rl, lam=1.0, speculative=True, draft_tokens=3)
    assert load_engine(large, base, rl, lam=1.0).counters() == {}
    spec.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8), progress=False)
    counted = spec.counters()
    assert counted["drafted"] > 0 and counted == spec.speculative.stats
    assert counted is not spec.speculative.stats  # a copy: since() against it stays valid
    swept = spec.with_lams([2.0])
    assert swept.speculative is spec.speculative  # one schedule for the loaded models
