"""transfer.deltas: one value for a delta, one rule for lambda at every entry point, and the one
meaning of a list of lambdas per entry point (issue 22)."""

import json
import shutil

import pytest
import yaml

from tests.bad_inputs import outcome
from train import pairing
from train.errors import UserError
from train.pairing import Pair, resolve_pair
from transfer import generate
from transfer.deltas import (
    Delta,
    check_lam,
    deltas_per_pair,
    parse_combination,
    resolve_combination,
    resolve_delta,
)
from transfer.eval import evaluate
from transfer.eval.evaluate import TransferConfig, build_systems

NEGATIVE = "lambda must be a finite number >= 0, got -0.5"


def test_a_delta_is_its_resolved_pair_and_lambda_compared_by_value(tiny_models):
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    delta = resolve_delta(rl, base, 0.5)
    assert delta == Delta(resolve_pair(rl, base), 0.5) and delta.pair.rl == rl
    assert delta.lam == 0.5 and isinstance(resolve_delta(rl, base, 2).lam, float)
    assert delta.label == "0.5*small_rl"
    assert delta.with_lam(2.0) == resolve_delta(rl, base, 2.0) != delta
    assert Delta.from_dict(json.loads(json.dumps(delta.to_dict()))) == delta
    assert delta.to_dict() == {"base": base, "rl": rl, "lora": False, "rl_tokenizer": True,
                               "lam": 0.5}


def test_a_single_lambda_applies_to_every_pair_else_one_per_pair(tiny_models):
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    assert [d.lam for d in deltas_per_pair([rl, rl], [base, base], [0.5])] == [0.5, 0.5]
    assert [d.lam for d in deltas_per_pair([rl, rl], [base, base], [1, 0.25])] == [1.0, 0.25]
    assert deltas_per_pair([], None, [1.0]) == ()  # no pair: the target alone
    with pytest.raises(UserError) as refused:
        deltas_per_pair([rl, rl], [base, base], [1.0, 0.5, 0.2])
    assert str(refused.value) == ("3 lambdas for 2 small RL model(s): give one per --small_rl, or "
                                  "one for all")
    with pytest.raises(UserError, match="^1 small_base for 2 small_rl: give one base per RL "):
        deltas_per_pair([rl, rl], [base], [1.0])


@pytest.mark.parametrize("lam", [-0.5, float("nan"), float("inf"), True, "1"])
def test_one_rule_for_lambda(lam):
    with pytest.raises(UserError, match="lambda must be a"):
        check_lam(lam)
    with pytest.raises(UserError, match="lambda must be a"):
        Delta(Pair("b", "r", False, False), lam)
    assert check_lam(0) == 0.0 and check_lam(2) == 2.0


def test_a_negative_lambda_is_refused_before_any_pair_is_resolved(monkeypatch):
    def no_resolving(*args):
        raise AssertionError("resolved a pair for a lambda it refuses")

    monkeypatch.setattr("transfer.deltas.resolve_pair", no_resolving)
    with pytest.raises(UserError, match=NEGATIVE):
        resolve_delta("outputs/x", None, -0.5)
    with pytest.raises(UserError, match=NEGATIVE):
        deltas_per_pair(["outputs/x", "outputs/y"], None, [-0.5])


def test_a_negative_lambda_is_refused_by_a_recipe_its_combinations_and_generate(
        tiny_models, tmp_path, capsys):
    with pytest.raises(UserError, match=r"lambda must be a finite number >= 0, got -0.5"):
        TransferConfig(lam=[1.0, -0.5])
    with pytest.raises(UserError, match=r"combination '1\*a \+ -0.5\*b': lambda must be >= 0, "
                                        r"got -0.5"):
        TransferConfig(combinations=["1*a + -0.5*b"])
    with pytest.raises(UserError, match=r"lambda must be >= 0"):
        resolve_combination("-1*(a - b)")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Q: 1*2="}\n')
    argv = (f"--target {tiny_models['large']} --small_rl {tiny_models['small_rl']} --small_base "
            f"{tiny_models['small_base']} --lam -0.5 --input {tmp_path}/prompts.jsonl --output "
            f"{tmp_path}/out.jsonl")
    assert outcome(generate.main, argv, capsys, tmp_path) == (2, f"error: {NEGATIVE}", [])
    assert not (tmp_path / "out.jsonl").exists()


def test_combinations_parse_into_deltas_in_one_place(tiny_models):
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    assert parse_combination(f"1*{rl} + 0.5*({rl} - {base})") == [(None, rl, 1.0),
                                                                  (base, rl, 0.5)]
    assert resolve_combination(f"2*({rl} - {base}) + 0.5*({rl} - {base})") == (
        resolve_delta(rl, base, 2.0), resolve_delta(rl, base, 0.5))


def test_two_combinations_whose_rl_directories_share_a_name_are_refused_in_one_line(
        tiny_models, tmp_path, capsys):
    """Systems are keyed by name, and a combination is named by its RL directories' names:
    two runs named alike would mix their samples under one name."""
    base = tiny_models["small_base"]
    first, second = (tmp_path / run / "small_rl" for run in ("run-a", "run-b"))
    for directory in (first, second):
        shutil.copytree(tiny_models["small_rl"], directory)
    combinations = [f"1*({first} - {base})", f"1*({second} - {base})"]
    config = TransferConfig(target=tiny_models["large"], small_rl=tiny_models["small_rl"],
                            small_base=base, combinations=combinations, report_to="none")
    with pytest.raises(UserError) as refused:
        build_systems(config)
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("two systems would both be named L+RAST(1*small_rl) ")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"target": tiny_models["large"], "small_base": base,
                                      "small_rl": tiny_models["small_rl"],
                                      "combinations": combinations, "report_to": "none",
                                      "output_dir": str(tmp_path / "out")}))
    code, line, changed = outcome(evaluate.main, f"--config {recipe}", capsys, tmp_path)
    assert (code, changed) == (2, []) and line == f"error: {refused.value}"
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # the same lambda twice in the sweep would key two systems alike too
    with pytest.raises(UserError, match=r"named L\+RAST\(lam=1\)"):
        build_systems(TransferConfig(target=tiny_models["large"], small_base=base,
                                     small_rl=tiny_models["small_rl"], lam=[1.0, 1]))


def test_systems_resolve_each_pair_once(tiny_models, monkeypatch):
    """resolve_pair runs once per system of the recipe, at its edge (build_systems), not again
    below: 2 swept lambdas, one combination of two terms."""
    calls = []
    real = pairing.resolve_pair

    def counting(small_rl, small_base=None):
        calls.append(small_rl)
        return real(small_rl, small_base)

    monkeypatch.setattr("transfer.deltas.resolve_pair", counting)
    rl, base = tiny_models["small_rl"], tiny_models["small_base"]
    systems = build_systems(TransferConfig(
        target=tiny_models["large"], small_rl=rl, small_base=base, lam=[0.5, 2.0],
        combinations=[f"1*({rl} - {base}) + 0.5*({rl} - {base})"]))
    assert len(calls) == 3  # the swept pair once, each combination term once
    assert [s.name for s in systems] == ["S_RL", "L", "L+RAST(lam=0.5)", "L+RAST(lam=2)",
                                         "L+RAST(1*small_rl+0.5*small_rl)"]
    assert systems[2].deltas[0].pair is systems[3].deltas[0].pair  # one resolved pair, swept
