"""transfer.analysis.analyze: the one-forward statistics equal a per-prefix recompute, and the CLI reports.

Models are the random fixture models of tests/conftest.py; the reference recomputes every
position with its own forward over the unpadded prefix and plain formulas on raw logits.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import wandb_inspect

from train.errors import UserError
from train.models import load_model, load_tokenizer
from train.tracking import ARTIFACT_FILE
from transfer.analysis.analyze import (
    AnalyzeConfig,
    Models,
    Trajectory,
    main,
    parse_config,
    read_samples,
    read_trajectories,
    trajectory_stats,
)
from transfer.analysis.token_stats import (
    PositionLogits,
    lexicon_counts,
    path_coverage,
    position_stats,
    smallest_share_holding,
)
from transfer.decode.decoder import SamplingParams
from transfer.decode.engine import RastEngine
from transfer.deltas import resolve_delta
from transfer.eval.samples import system_name

RECIPES = Path(__file__).parents[3] / "recipes"
VOCAB = 98  # the character tokenizer; the fixture models have 128 and 160 embedding rows


@pytest.fixture(scope="module")
def models(tiny_models):
    """Two pairs (the second 'RL' model is the large one: only the shared vocabulary matters)
    and an L_RL, so every statistic, cosine included, is exercised."""
    tokenizer = load_tokenizer(tiny_models["large"])
    base, rl, large = (load_model(tiny_models[name]).eval()
                       for name in ("small_base", "small_rl", "large"))
    return Models(tokenizer, large, [(base, rl), (base, large)], rl,
                  {"L": "large", "S0": "base", "S0_RL": "rl", "S1": "base", "S1_RL": "large",
                   "L_RL": "rl"}, (resolve_delta(tiny_models["small_rl"],
                                                 tiny_models["small_base"], 1.0),))


def make_trajectories(tokenizer, completions: list[str]) -> list[Trajectory]:
    prompts = ["Q: 47*8=\nA: ", "Q: 9*9=\nA: ", "Q: 123*45=\nA: ", "Q: 5*6=\nA: "]
    return [Trajectory(f"p{i}", 0, tokenizer(prompts[i % 4])["input_ids"],
                       tokenizer(text, add_special_tokens=False)["input_ids"], text, None)
            for i, text in enumerate(completions)]


@torch.inference_mode()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1, :VOCAB].double()


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    return float((log_p.exp() * (log_p - log_q)).sum())


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a - a.mean(), b - b.mean(), dim=0))


def test_one_forward_equals_per_prefix_recompute(models):
    # Different prompt and completion lengths in one batch of 3 + a batch of 1: padding matters.
    trajectories = make_trajectories(models.tokenizer, [
        "Let's 7*8+0=56 \\boxed{56}", "\\boxed{81}", "x", "Let's 6*5"])
    stats = trajectory_stats(models, trajectories, lam=0.7, batch_size=3)
    (base, rl), (_, rl_1) = models.pairs  # the second pair shares the first one's base
    for trajectory, got in zip(trajectories, stats):
        for t, target in enumerate(trajectory.token_ids):
            prefix = trajectory.prompt_ids + trajectory.token_ids[:t]
            z_large, z_base, z_rl, z_rl_1, z_large_rl = (
                last_logits(m, prefix) for m in (models.large, base, rl, rl_1, models.large_rl))
            log_base, log_rl = z_base.log_softmax(-1), z_rl.log_softmax(-1)
            rast = (z_large + 0.7 * (z_rl - z_base)).log_softmax(-1)
            expected = {
                "covered/L": float(z_large.argmax() == target),
                "covered/S0": float(z_base.argmax() == target),
                "top1_changed": float(z_large.argmax() != rast.argmax()),
                "delta_token/0": float(log_rl[target] - log_base[target]),
                "kl_rl_base/0": kl(log_rl, log_base),
                "kl_rast_large": kl(rast, z_large.log_softmax(-1)),
                "kl_rast_rl": kl(rast, log_rl),
                # raw-logit deltas here, log-prob deltas in the implementation: same cosine
                "cos_pairs/1": cos(z_rl - z_base, z_rl_1 - z_base),
                "cos_large/0": cos(z_rl - z_base, z_large_rl - z_large),
                "up_token/0": int((log_rl.exp() - log_base.exp()).argmax()),
            }
            for key, value in expected.items():
                assert float(got[key][t]) == pytest.approx(value, abs=1e-5), (key, t)


def test_coverage_is_one_on_the_base_models_own_greedy_output(models):

    engine = RastEngine(models.large, tokenizer=models.tokenizer)
    prompts = ["Q: 47*8=\nA: ", "Q: 123*45=\nA: "]
    completions = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    trajectories = [Trajectory(str(i), 0, models.tokenizer(p)["input_ids"], c.token_ids, c.text,
                               None) for i, (p, c) in enumerate(zip(prompts, completions))]
    stats = trajectory_stats(models, trajectories, lam=1.0, batch_size=2)
    covered = torch.cat([s["covered/L"] for s in stats])
    assert covered.numel() >= 12 and covered.min() == 1.0
    # Swap the last token for another one: earlier positions cannot see it (causal), so exactly
    # that one position leaves the greedy path.
    last = trajectories[0].token_ids[-1]
    trajectories[0].token_ids[-1] = (last + 1) % len(models.tokenizer)
    stats = trajectory_stats(models, trajectories[:1], lam=1.0, batch_size=1)
    assert stats[0]["covered/L"].tolist() == [1.0] * (len(trajectories[0].token_ids) - 1) + [0.0]


def test_path_coverage_per_trajectory_and_pooled_leave_out_the_stop_position():
    """The paper's number is the mean of each trajectory's share; pooling weighs long answers
    more. The token that stopped a trajectory is not part of its text: never counted."""
    short = torch.tensor([1.0, 0.0, 0.0])  # 1 of 2 covered, then its stop id (a miss)
    long = torch.tensor([1.0] * 8 + [0.0, 0.0])  # 8 of 9, then its stop id
    cut = torch.tensor([1.0, 1.0, 0.0, 1.0])  # cut at max_new_tokens: every position counts
    coverage = path_coverage([short, long, cut], [True, True, False])
    assert coverage["per_trajectory"] == pytest.approx((1 / 2 + 8 / 9 + 3 / 4) / 3)
    assert coverage["pooled"] == pytest.approx((1 + 8 + 3) / (2 + 9 + 4))
    assert coverage["positions"] == 15 and coverage["trajectories"] == 3
    # a trajectory that is only its stop id has no position: it counts in neither
    alone = path_coverage([short, torch.tensor([0.0])], [True, True])
    assert (alone["per_trajectory"], alone["trajectories"]) == (0.5, 1)


def test_kl_shares_on_a_hand_made_example():
    half = math.log(3.0)  # RL puts 3:1 on token 0 where the base is uniform over two tokens
    base = torch.zeros(4, 2)
    rl = torch.tensor([[0.0, 0.0], [half, 0.0], [2 * half, 0.0], [0.0, 0.0]])
    stats = position_stats(PositionLogits(base, [(base, rl)]), torch.tensor([0, 0, 1, 1]),
                           lam=1.0, shared_vocab=2)
    kl = stats["kl_rl_base/0"]
    expected_kl_1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected_kl_2 = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert kl.tolist() == pytest.approx([0.0, expected_kl_1, expected_kl_2, 0.0], abs=1e-6)
    assert expected_kl_2 > 0.5 * (expected_kl_1 + expected_kl_2)
    assert smallest_share_holding(kl, 0.5) == 0.25  # position 2 alone holds over half
    assert smallest_share_holding(kl, 0.9) == 0.5
    # 9 of 10 is exactly 90%: three positions, not four
    assert smallest_share_holding(torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.9) == 0.75
    assert smallest_share_holding(torch.zeros(3), 0.5) == 0.0
    assert stats["covered/S0"].tolist() == [1.0, 1.0, 0.0, 0.0]  # ties: argmax takes token 0
    assert stats["up_token/0"].tolist()[1:3] == [0, 0]
    assert stats["delta_token/0"][2].item() == pytest.approx(math.log(0.1 / 0.5), abs=1e-6)


def test_lexicon_counts_whole_words_and_phrases_case_insensitively():
    lexicons = {"backtracking": ["but", "wait"], "verification": ["check", "let me verify"],
                "none": []}
    text = "But wait: butter is fine, but let me verify. Check! checks? WAIT"
    assert lexicon_counts(text, lexicons) == {"backtracking": 4, "verification": 2, "none": 0}


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*/analyze/*.yaml")),
                         ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipes_parse(recipe):
    config = parse_config(["--config", str(recipe)])
    assert isinstance(config, AnalyzeConfig) and len(config.small_rl) >= 2
    assert config.output_dir.startswith("outputs/")


def test_recipe_overrides_and_unknown_keys(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("limit: 5\nsmall_rl: [a, b]\n")
    config = parse_config(["--config", str(recipe), "--limit", "7"])
    assert (config.limit, config.small_rl) == (7, ["a", "b"])
    recipe.write_text("limit: 5\nsmall_rll: [a]\n")
    with pytest.raises(UserError, match="small_rll"):
        parse_config(["--config", str(recipe)])
    with pytest.raises(UserError, match="one base per RL model"):
        AnalyzeConfig(small_rl=["a", "b"], small_base=["c"])


def test_cli_runs_end_to_end_and_writes_the_report(tiny_models, tmp_path):
    out = tmp_path / "generated"
    common = ["--target", tiny_models["large"], "--target_rl", tiny_models["small_rl"],
              "--small_rl", tiny_models["small_rl"], tiny_models["large"],
              "--small_base", tiny_models["small_base"], tiny_models["small_base"],
              "--limit", "4", "--max_new_tokens", "10", "--report_to", "none"]
    summary = main(common + ["--samples", "2", "--output_dir", str(out)])
    for name in ("summary.json", "report.md", "positions.jsonl", "samples.jsonl",
                 "distributions.png", "heat_strip.png", "cosine.png"):
        assert (out / name).stat().st_size > 0, name
    assert summary["trajectories"]["count"] == 8
    written = json.loads((out / "summary.json").read_text())
    assert written["path_coverage"] == summary["path_coverage"]
    assert set(summary["cross_scale"]) == {"S0 vs S1", "S0 vs L", "S1 vs L"}
    assert 0 < summary["shift"]["S0"]["share_holding_90"] <= 1
    rows = [json.loads(line) for line in (out / "positions.jsonl").read_text().splitlines()]
    cosines = [c for r in rows for c in r["cos_pairs/1"]]
    weights = [w for r in rows for w in r["kl_rl_base/0"]]
    weighted = sum(c * w for c, w in zip(cosines, weights)) / sum(weights)
    assert summary["cross_scale"]["S0 vs S1"]["kl_weighted"] == pytest.approx(weighted, abs=1e-4)
    assert "planted_style" in summary and "Path coverage" in (out / "report.md").read_text()
    # S_RL's samples at temperature 1: not the paper's path coverage, and said so
    coverage = summary["path_coverage"]
    assert not coverage["paper_definition"]
    assert "uses L_RL's" in coverage["definition"]
    assert "sampled at temperature 1" in coverage["definition"]
    assert "96.0 / 95.6 / 95.2" not in (out / "report.md").read_text()

    # Reuse those trajectories, with an evaluation file giving per-problem gains.
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    evaluation = tmp_path / "evaluation.jsonl"
    # the RAST system analysis reads gains of: its first pair at its lam, selected by that delta
    rast = [resolve_delta(tiny_models["small_rl"], tiny_models["small_base"], 1.0).to_dict()]
    rows = [{**r, "system": system_name(role, lam), "role": role, "lam": lam,
             "deltas": rast if role == "RAST" else [],
             "correct": (role == "RAST") == (k % 2 == 0)}
            for k, r in enumerate(records) for role, lam in (("L", 0.0), ("RAST", 1.0))]
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = main(common + ["--samples", "2", "--output_dir", str(tmp_path / "reused"),
                           "--trajectories", str(out / "samples.jsonl"),
                           "--evaluation", str(evaluation)])
    for how in ("per_trajectory", "pooled"):
        assert again["path_coverage"][how] == pytest.approx(coverage[how], abs=1e-6)
    assert set(again["gain"]["correlation"]) == set(summary["cross_scale"])
    assert all(c["per_problem_problems"] == 4 for c in again["gain"]["correlation"].values())
    assert {"L", "L+RAST(lam=1)", "analysed S_RL"} <= set(again["behaviour"])


def test_trajectories_are_the_sampled_ids_and_a_file_without_ids_is_refused(tiny_models,
                                                                             tmp_path):
    out = tmp_path / "generated"
    small_rl = tmp_path / "s-grpo"  # as a train.grpo output that logged its W&B artifact
    shutil.copytree(tiny_models["small_rl"], small_rl)
    (small_rl / ARTIFACT_FILE).write_text(json.dumps({"artifact": "rast-grpo/s-grpo:run-x"}))
    common = ["--target", tiny_models["large"], "--small_rl", str(small_rl),
              tiny_models["large"], "--small_base", tiny_models["small_base"],
              tiny_models["small_base"], "--limit", "3", "--max_new_tokens", "10",
              "--report_to", "none", "--target_rl", tiny_models["small_rl"], "--system", "L_RL"]
    summary = main(common + ["--output_dir", str(out), "--report_to", "wandb",
                             "--temperature", "0"])
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    state = json.loads(wandb_inspect(run_dir, "--summary", "--json"))
    assert state["config"]["inputs"] == {"small_rl/0": "rast-grpo/s-grpo:run-x"}  # lineage
    assert state["summary"]["tokens/S0_up"]["_type"] == "table-file"
    assert state["summary"]["plots/cosine"]["_type"] == "image-file"
    records = [json.loads(line) for line in wandb_inspect(run_dir, "--json").splitlines()]
    assert not [r for r in records if r["type"] == "history"]  # no table metadata charted
    assert state["summary"]["coverage/per_trajectory/L"] == summary["path_coverage"][
        "per_trajectory"]["L"]
    assert state["summary"]["coverage/pooled/S0"] == summary["path_coverage"]["pooled"]["S0"]
    # the paper's path coverage: along L_RL's greedy trajectories, each one's stop position out
    assert summary["path_coverage"]["paper_definition"]
    assert summary["path_coverage"]["definition"].startswith("paper's:")
    report_md = (out / "report.md").read_text()
    assert "95.2 %" in report_md and "32B vs 7B 0.517" in report_md
    assert "per trajectory (the paper's)" in report_md and "pooled" in report_md
    generated = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert summary["path_coverage"]["positions"] == sum(
        len(r["token_ids"]) - r["finished"] for r in generated)
    assert set(summary["cross_scale_paper"]) == set(summary["cross_scale"])
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # ids that no tokenizer would give back from the text: analysis must take them as they are
    odd = [{**r, "token_ids": [(i + 7) % VOCAB for i in r["token_ids"]]} for r in records]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in odd))
    config = parse_config(common + ["--trajectories", str(path), "--output_dir", str(tmp_path)])
    # what reading needs of the models: the tokenizer (prompt ids) and the deltas of L_RL: none
    tokenizer_only = Models(load_tokenizer(tiny_models["large"]), None, [], None, {}, ())
    read = read_trajectories(config, tokenizer_only, read_samples(path))
    assert [t.token_ids for t in read] == [r["token_ids"] for r in odd]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "token_ids"}) + "\n"
                            for r in records))
    with pytest.raises(UserError, match="without token_ids.*re-run the evaluation"):
        read_trajectories(config, tokenizer_only, read_samples(path))


def test_missing_checkpoint_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(SystemExit):
        main(["--small_rl", "outputs/tiny-s-grpo", "outputs/tiny-m-grpo", "--report_to", "none"])
    assert "make train-small" in capsys.readouterr().err


def test_path_coverage_and_cosines_on_a_hand_computed_example():
    """Path coverage: L's argmax against the trajectory's token. The paper's cosine: raw logit
    deltas, uncentred; the centred variant differs (here it is 0, the paper's is 1/sqrt(5))."""
    large = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([1, 1, 2])  # L's argmax: 1, 0, 2 -> covered 1, 0, 1
    base0, rl0 = torch.zeros(3, 3), torch.tensor([[1.0, 2.0, 0.0]] * 3)  # Delta R_0 = (1, 2, 0)
    base1, rl1 = torch.ones(3, 3), torch.tensor([[2.0, 1.0, 1.0]] * 3)  # Delta R_1 = (1, 0, 0)
    large_rl = large + torch.tensor([1.0, 2.0, 0.0])  # L's own raw delta = Delta R_0
    stats = position_stats(PositionLogits(large, [(base0, rl0), (base1, rl1)], large_rl),
                           targets, lam=1.0, shared_vocab=3)
    assert stats["covered/L"].tolist() == [1.0, 0.0, 1.0]  # path coverage 2/3
    assert stats["rawcos_pairs/1"].tolist() == pytest.approx([1 / math.sqrt(5)] * 3, abs=1e-6)
    # centred: (0, 1, -1) . (2/3, -1/3, -1/3) = 0
    assert stats["cos_pairs/1"].tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert stats["rawcos_large/0"].tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    assert stats["rawcos_large/1"].tolist() == pytest.approx([1 / math.sqrt(5)] * 3, abs=1e-6)
