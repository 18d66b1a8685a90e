"""Aggregates, tables, plots and W&B logging of `python -m transfer.analysis.analyze`.

`summarize` turns per-position statistics (transfer/analysis/token_stats.py) into summary.json's numbers;
`report` writes summary.json, report.md, positions.jsonl and the PNG plots and logs to W&B. Run
through the analysis entry point:

    python -m transfer.analysis.analyze --config recipes/tiny/analyze/config_cpu.yaml --report_to none
"""

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch

from train.data import benchmark_label
from train.tiny.task import is_careful
from train.tracking import declare_input, wandb_session
from transfer.analysis.plots import plot_all
from transfer.analysis.token_stats import (
    lexicon_counts,
    path_coverage,
    pearson,
    smallest_share_holding,
)
from transfer.eval.samples import Sample, system_name
from transfer.runlog import write_json_atomic

CONTEXT_CHARS = 40  # characters of text shown before a token in the example contexts
EXAMPLES_PER_TOKEN = 3


PAPER_COVERAGE = ("The paper (per trajectory, Qwen2.5 base along SimpleRL-Zoo's greedy "
                  "trajectories): 96.0 / 95.6 / 95.2 % for 7B / 14B / 32B.")
PAPER_COSINE = "The paper: 14B vs 7B 0.528, 32B vs 14B 0.715, 32B vs 7B 0.517."


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else float("nan")


def summarize(config, models, trajectories, stats: list[dict],
              evaluation: list[dict] | None, temperature: float | None) -> dict:
    """Every number of the report, from per-position stats and the trajectories; `temperature`
    is the trajectories' (None: not recorded)."""
    pooled = {key: torch.cat([s[key] for s in stats]) for key in stats[0]}
    pairs = range(len(models.pairs))
    correct = [t.correct for t in trajectories if t.correct is not None]
    summary = {
        "config": asdict(config), "models": models.names,
        "trajectories": {"system": config.system, "source": config.trajectories or "generated",
                         "temperature": temperature,
                         "count": len(trajectories), "positions": pooled["covered/L"].numel(),
                         "problems": len({t.problem_id for t in trajectories}),
                         "accuracy": sum(correct) / len(correct) if correct else None},
        "path_coverage": _path_coverage(config, trajectories, stats, temperature, pairs),
        "top1_changed_share": _mean(pooled["top1_changed"]),
        "shift": {f"S{i}": _shift(config, models.tokenizer, trajectories, stats, pooled, i)
                  for i in pairs},
        "rast": {key: _mean(pooled[key]) for key in ("kl_rast_large", "kl_rast_rl",
                                                     "kl_rast_large_rl") if key in pooled},
        "entropy": {key.split("/")[1]: _mean(value) for key, value in pooled.items()
                    if key.startswith("entropy/")},
    }
    summary["cross_scale"] = _cross_scale(trajectories, stats)  # centred log-prob deltas
    summary["cross_scale_paper"] = _cross_scale(trajectories, stats, prefix="rawcos_")
    if evaluation is not None:
        summary["gain"] = _gain(config, models.rast, evaluation, summary["cross_scale"])
    summary["behaviour"] = _behaviour(config, trajectories, evaluation)
    if config.benchmark == "tiny":
        summary["planted_style"] = _planted_style(models.tokenizer, trajectories, stats, pairs)
    return summary


def _path_coverage(config, trajectories, stats, temperature: float | None, pairs) -> dict:
    """Each base's coverage per trajectory (the paper's) and pooled, the stop token's position
    left out, with whether these trajectories are the paper's: L_RL's, greedy."""
    stopped = [t.stopped for t in trajectories]
    coverage = {name: path_coverage([s[f"covered/{name}"] for s in stats], stopped)
                for name in ["L", *(f"S{i}" for i in pairs)]}
    not_paper = []
    if config.system != "L_RL":
        not_paper.append(f"along {config.system}'s trajectories, the paper uses L_RL's: "
                         f"system L_RL")
    if temperature is None:
        not_paper.append("the trajectories' temperature is not recorded, the paper's are greedy")
    elif temperature != 0:
        not_paper.append(f"trajectories sampled at temperature {temperature:g}, the paper's are "
                         f"greedy: temperature 0, or an evaluation at temperature 0")
    definition = ("L's greedy token = the trajectory's token, per position; per trajectory = "
                  "mean over trajectories of each one's share (the paper's), pooled = share of "
                  "all positions together; the stop token's position left out")
    return {"per_trajectory": {name: c["per_trajectory"] for name, c in coverage.items()},
            "pooled": {name: c["pooled"] for name, c in coverage.items()},
            "trajectories": coverage["L"]["trajectories"], "positions": coverage["L"]["positions"],
            "stop_positions_left_out": sum(stopped), "paper_definition": not not_paper,
            "definition": (f"paper's: {definition}, along L_RL's greedy trajectories"
                           if not not_paper else
                           f"{definition}; not the paper's: {'; '.join(not_paper)}")}


def _shift(config, tokenizer, trajectories, stats, pooled, i: int) -> dict:
    kl, delta = pooled[f"kl_rl_base/{i}"], pooled[f"delta_token/{i}"].abs().double()
    quantiles = torch.quantile(delta, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {"kl_mean": _mean(kl), "kl_total": float(kl.double().sum()),
            "share_holding_50": smallest_share_holding(kl, 0.5),
            "share_holding_90": smallest_share_holding(kl, 0.9),
            "abs_delta_token": {"p50": float(quantiles[0]), "p90": float(quantiles[1]),
                                "p99": float(quantiles[2]), "max": float(delta.max())},
            "up": _top_tokens(config, tokenizer, trajectories, stats, i, "up"),
            "down": _top_tokens(config, tokenizer, trajectories, stats, i, "down")}


def _top_tokens(config, tokenizer, trajectories, stats, i: int, direction: str) -> list[dict]:
    """Tokens RL raises (up) / lowers (down) most often by >= min_shift in probability, ranked by
    the total probability moved, each with the contexts of its first occurrences."""
    entries = defaultdict(lambda: {"count": 0, "total_shift": 0.0, "where": []})
    for index, s in enumerate(stats):
        shifts, tokens = s[f"{direction}_shift/{i}"].abs(), s[f"{direction}_token/{i}"]
        for position in (shifts >= config.min_shift).nonzero().flatten().tolist():
            entry = entries[int(tokens[position])]
            entry["count"] += 1
            entry["total_shift"] += float(shifts[position])
            if len(entry["where"]) < EXAMPLES_PER_TOKEN:
                entry["where"].append((index, position))
    ranked = sorted(entries.items(), key=lambda item: -item[1]["total_shift"])[:config.top_tokens]
    return [{"token": tokenizer.decode([token_id]), "id": token_id, "count": entry["count"],
             "mean_shift": entry["total_shift"] / entry["count"],
             "total_shift": entry["total_shift"],
             "examples": [_context(tokenizer, trajectories[t], p) for t, p in entry["where"]]}
            for token_id, entry in ranked]


def _context(tokenizer, trajectory, position: int) -> str:
    """The text before `position` (prompt tail included), then the token taken there in [ ]."""
    before = tokenizer.decode(trajectory.prompt_ids + trajectory.token_ids[:position])
    taken = tokenizer.decode([trajectory.token_ids[position]])
    return f"{before[-CONTEXT_CHARS:]}[{taken}]"


def _cross_scale(trajectories, stats, prefix: str = "cos_") -> dict:
    """Per cosine series: mean over positions of each trajectory, then over trajectories of a
    problem, then over problems ("mean", as the paper averages), and the same weighted by
    KL(S_RL || S) of the series' first pair ("kl_weighted").

    Why both: at most positions RL changes nothing and Delta R is noise on tokens of negligible
    probability, which pulls the plain mean towards 0; weighting by KL keeps the positions where
    RL moved probability, which is what RAST transfers.
    """
    result = {}
    for key in [k for k in stats[0] if k.startswith(prefix)]:
        kind, i = key.split("/")
        pairs = kind.endswith("_pairs")
        label = f"S0 vs S{i}" if pairs else f"S{i} vs L"
        weight_key = f"kl_rl_base/{0 if pairs else i}"
        plain, weighted = defaultdict(list), defaultdict(lambda: [0.0, 0.0])
        for trajectory, s in zip(trajectories, stats):
            plain[trajectory.problem_id].append(_mean(s[key]))
            sums = weighted[trajectory.problem_id]
            sums[0] += float((s[key].double() * s[weight_key].double()).sum())
            sums[1] += float(s[weight_key].double().sum())
        per_problem = {pid: sum(v) / len(v) for pid, v in sorted(plain.items())}
        per_problem_weighted = {pid: total / weight for pid, (total, weight)
                                in sorted(weighted.items()) if weight > 0}
        totals = torch.tensor(list(weighted.values()), dtype=torch.float64).sum(dim=0)
        result[label] = {"key": key, "mean": sum(per_problem.values()) / len(per_problem),
                         "position_mean": _mean(torch.cat([s[key] for s in stats])),
                         "kl_weighted": float(totals[0] / totals[1]) if totals[1] > 0 else None,
                         "per_problem": per_problem,
                         "per_problem_kl_weighted": per_problem_weighted}
    return result


def _gain(config, rast_deltas: tuple, evaluation: list[Sample], cross_scale: dict) -> dict:
    """Per-problem accuracy gain of RAST (the system over rast_deltas: the first pair at
    config.lam) over L, and its correlation with each per-problem cosine."""

    label = benchmark_label(config.benchmark)
    accuracy = {"L": defaultdict(list), "RAST": defaultdict(list)}
    for r in evaluation:
        for role, by_problem in accuracy.items():
            if r.benchmark == label and r.of(role, rast_deltas if role == "RAST" else ()):
                by_problem[r.problem_id].append(float(r.correct))
    missing = [f"{role} (lam {config.lam:g})" if role == "RAST" else role
               for role, by_problem in accuracy.items() if not by_problem]
    if missing:
        systems = sorted({r.system for r in evaluation})
        return {"note": f"no samples of {', '.join(missing)} on {label} in the evaluation file "
                        f"(systems there: {', '.join(systems)})"}
    base, rast = accuracy["L"], accuracy["RAST"]
    per_problem = {pid: sum(rast[pid]) / len(rast[pid]) - sum(base[pid]) / len(base[pid])
                   for pid in sorted(set(base) & set(rast))}
    correlations = {}
    for label_, series in cross_scale.items():
        correlations[label_] = {}
        for kind in ("per_problem", "per_problem_kl_weighted"):
            shared = [pid for pid in series[kind] if pid in per_problem]
            correlations[label_] |= {
                f"{kind}_problems": len(shared),
                f"pearson{kind.removeprefix('per_problem')}": pearson(
                    [series[kind][pid] for pid in shared], [per_problem[pid] for pid in shared])}
    return {"baseline": "L", "rast": system_name("RAST", config.lam),
            "mean": sum(per_problem.values()) / max(len(per_problem), 1),
            "per_problem": per_problem, "correlation": correlations}


def _behaviour(config, trajectories, evaluation: list[Sample] | None) -> dict:
    """Per system: responses, mean length in tokens, behaviour words per response, careful share."""

    label = benchmark_label(config.benchmark)
    rows = defaultdict(list)
    for r in evaluation or []:
        if r.benchmark == label:
            rows[r.system].append((r.text, r.num_tokens))
    rows[f"analysed {config.system}"] = [(t.text, len(t.token_ids)) for t in trajectories]
    result = {}
    for system, items in rows.items():
        words = [lexicon_counts(text, config.lexicons) for text, _ in items]
        result[system] = {"responses": len(items),
                          "mean_tokens": sum(n for _, n in items) / len(items),
                          "words_per_response": {name: sum(w[name] for w in words) / len(items)
                                                 for name in config.lexicons}}
        if config.benchmark == "tiny":
            result[system]["careful_share"] = sum(is_careful(t) for t, _ in items) / len(items)
    return result


def style_position(tokenizer, trajectory) -> int | None:
    """The first completion position whose token is not whitespace: where the tiny task's answer
    picks its style ("L" of "Let's" = careful, "\\" of "\\boxed" = quick)."""
    for position, token_id in enumerate(trajectory.token_ids):
        if tokenizer.decode([token_id]).strip():
            return position
    return None


def _planted_style(tokenizer, trajectories, stats, pairs) -> dict:
    """Does KL(RL || base) concentrate at the style-choosing position? Per pair."""

    styles = [style_position(tokenizer, t) for t in trajectories]
    located = [(p, s) for p, s in zip(styles, stats) if p is not None]
    positions = sum(len(s["covered/L"]) for s in stats)
    result = {"careful_share": sum(is_careful(t.text) for t in trajectories) / len(trajectories),
              "style_positions_share": len(located) / positions}
    for i in pairs:
        key = f"kl_rl_base/{i}"
        at_style = torch.tensor([float(s[key][p]) for p, s in located], dtype=torch.float64)
        total = float(sum(s[key].double().sum() for s in stats))
        others = torch.cat([torch.cat([s[key][:p], s[key][p + 1:]]) for p, s in located]
                           + [s[key] for p, s in zip(styles, stats) if p is None])
        result[f"S{i}"] = {
            "kl_share_at_style_position": float(at_style.sum()) / total if total else None,
            "mean_kl_at_style_position": _mean(at_style), "mean_kl_elsewhere": _mean(others),
            "style_position_is_max_share": sum(int(s[key].argmax()) == p for p, s in located)
            / max(len(located), 1)}
    return result


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def markdown(summary: dict, plots: list[Path]) -> str:
    """report.md: one section per question of the analysis."""
    t, coverage = summary["trajectories"], summary["path_coverage"]
    lines = ["# Token-level analysis", "",
             (f"{t['count']} trajectories of **{t['system']}** ({t['source']}), {t['problems']} "
              f"problems, {t['positions']} positions; accuracy {_fmt(t['accuracy'])}."), "",
             "Models: " + ", ".join(f"{k} = `{v}`" for k, v in summary["models"].items()), "",
             "## Path coverage (base greedy token = trajectory token)", "",
             f"Definition: {coverage['definition']}.", "",
             *_table(["base", "per trajectory (the paper's)", "pooled (all positions)"],
                     [[k, f"{v:.4f}", f"{coverage['pooled'][k]:.4f}"]
                      for k, v in coverage["per_trajectory"].items()]), "",
             (f"{coverage['trajectories']} trajectories, {coverage['positions']} positions "
              f"({coverage['stop_positions_left_out']} stop positions left out); temperature "
              f"{_temperature(t['temperature'])}."), "",
             *([PAPER_COVERAGE, ""] if coverage["paper_definition"] else []),
             f"Top-1 changed between L and RAST: {summary['top1_changed_share']:.4f}", "",
             "## Where the delta lives: KL(S_RL || S) per position", ""]
    lines += _table(
        ["pair", "mean KL", "share of positions holding 50%", "90%",
         "abs Delta R(y): p50 / p90 / max"],
        [[pair, f"{s['kl_mean']:.4f}", f"{s['share_holding_50']:.4f}",
          f"{s['share_holding_90']:.4f}",
          " / ".join(f"{s['abs_delta_token'][q]:.3g}" for q in ("p50", "p90", "max"))]
         for pair, s in summary["shift"].items()])
    lines += ["", ("Tokens moved most: at each position, the token whose probability RL raises "
                   f"(lowers) most, counted where it moves by at least "
                   f"{summary['config']['min_shift']}; shift = |p_RL - p_base|.")]
    for pair, s in summary["shift"].items():
        for direction in ("up", "down"):
            lines += ["", f"Tokens {pair}_RL moves most ({direction}):", ""]
            lines += _table(["token", "positions", "mean shift", "examples: context [token taken]"],
                            [[f"`{json.dumps(e['token'])}`", e["count"], f"{e['mean_shift']:.3f}",
                              "<br>".join(f"`{json.dumps(x)}`" for x in e["examples"])]
                             for e in s[direction]])
    lines += ["", "## Cross-scale cosine of Delta R, the paper's definition", "",
              ("Raw logit deltas z_RL - z_base over the shared vocabulary, uncentred cosine per "
               "position, mean over each trajectory's positions, then over problems (the paper's "
               "analysis/similarity.py, without its context-corruption bug). " + PAPER_COSINE), ""]
    lines += _cosine_table(summary["cross_scale_paper"])
    lines += ["", "## Cross-scale cosine of Delta R, centred log-prob variant (not the paper's)",
              "", ("Log-prob deltas centred per position (invariant to the constant softmax "
                   "ignores); not comparable with the paper's cosines."), ""]
    lines += _cosine_table(summary["cross_scale"])
    if summary["cross_scale"]:
        lines += ["", ("KL-weighted: positions weighted by KL(S_RL || S) of the first pair named; "
                       "the plain means also count positions where RL changed nothing and Delta R "
                       "is noise on improbable tokens.")]
    gain = summary.get("gain")
    if gain and "correlation" in gain:
        correlations = ", ".join(
            f"{k} {_fmt(v['pearson'])} (KL-weighted {_fmt(v['pearson_kl_weighted'])}; "
            f"{v['per_problem_problems']} problems)" for k, v in gain["correlation"].items())
        lines += ["", (f"Per-problem gain {gain['rast']} - {gain['baseline']}: mean "
                       f"{gain['mean']:+.4f}; Pearson r with the cosine: {correlations}")]
    elif gain:
        lines += ["", f"Gain: {gain['note']}"]
    lines += ["", "## RAST distribution", "",
              *_table(["KL", "nats"], [[k, f"{v:.4f}"] for k, v in summary["rast"].items()]), "",
              "Mean entropy: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["entropy"].items())]
    lines += ["", "## Behaviour and length per system", "", *_behaviour_table(summary["behaviour"])]
    if "planted_style" in summary:
        lines += ["", *_planted_section(summary["planted_style"])]
    lines += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def _cosine_table(cross_scale: dict) -> list[str]:
    if not cross_scale:
        return ["n/a: one small pair and no target_rl."]
    return _table(["pair", "mean over problems", "mean over positions", "KL-weighted"],
                  [[k, f"{v['mean']:.4f}", f"{v['position_mean']:.4f}", _fmt(v["kl_weighted"])]
                   for k, v in cross_scale.items()])


def _behaviour_table(behaviour: dict) -> list[str]:
    lexicons = list(next(iter(behaviour.values()))["words_per_response"])
    careful = all("careful_share" in b for b in behaviour.values())
    rows = [[system, b["responses"], f"{b['mean_tokens']:.1f}",
             *(f"{b['words_per_response'][k]:.3f}" for k in lexicons),
             *([f"{b['careful_share']:.3f}"] if careful else [])]
            for system, b in behaviour.items()]
    return _table(["system", "responses", "mean tokens", *lexicons, *(["careful"] if careful
                                                                       else [])], rows)


def _planted_section(planted: dict) -> list[str]:
    return ["## Planted behaviour (tiny task): the style-choosing position", "",
            (f"Careful share of the analysed trajectories: {planted['careful_share']:.3f}; style "
             f"positions are {planted['style_positions_share']:.3f} of all positions."), "",
            *_table(["pair", "KL share at style position", "mean KL there", "mean KL elsewhere",
                     "style position is the max"],
                    [[k, _fmt(v["kl_share_at_style_position"]),
                      f"{v['mean_kl_at_style_position']:.4f}", f"{v['mean_kl_elsewhere']:.4f}",
                      f"{v['style_position_is_max_share']:.3f}"]
                     for k, v in planted.items() if isinstance(v, dict)])]


def _temperature(value) -> str:
    return "not recorded" if value is None else f"{value:g}" + (" (greedy)" if value == 0 else "")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def report(summary: dict, config, tokenizer, trajectories, stats, output_dir: Path) -> None:
    """summary.json, positions.jsonl, plots, report.md; W&B unless report_to is none."""

    write_json_atomic(output_dir / "summary.json", summary)
    with open(output_dir / "positions.jsonl", "w") as file:
        for trajectory, s in zip(trajectories, stats):
            row = {"problem_id": trajectory.problem_id, "sample_index": trajectory.sample_index,
                   "tokens": [tokenizer.decode([i]) for i in trajectory.token_ids],
                   **{key: [round(v, 6) for v in value.tolist()] for key, value in s.items()}}
            file.write(json.dumps(row) + "\n")
    plots = plot_all(summary, config, tokenizer, trajectories, stats, output_dir)
    text = markdown(summary, plots)
    (output_dir / "report.md").write_text(text)
    print(text)
    with wandb_session(config.report_to, output_dir, config.wandb_project) as wandb:
        if wandb is not None:
            log_analysis_run(wandb, summary, config, plots, output_dir)


def log_analysis_run(wandb, summary: dict, config, plots: list[Path], output_dir: Path) -> None:
    """One run: flat summary numbers, the plots, and the top-token tables; `wandb` from
    train.tracking.wandb_session (offline into output_dir/wandb without credentials)."""
    run = wandb.init(project=config.wandb_project, name=output_dir.name, job_type="analysis",
                     dir=str(output_dir.resolve()), config=summary["config"],
                     reinit="finish_previous")
    declare_input(run, {**{f"small_rl/{i}": rl for i, rl in enumerate(config.small_rl)},
                        "target_rl": config.target_rl})
    flat = {f"coverage/{how}/{k}": v for how in ("per_trajectory", "pooled")
            for k, v in summary["path_coverage"][how].items()}
    flat["top1_changed_share"] = summary["top1_changed_share"]
    for pair, s in summary["shift"].items():
        flat |= {f"shift/{pair}/{k}": s[k]
                 for k in ("kl_mean", "share_holding_50", "share_holding_90")}
    flat |= {f"cross_scale_paper/{k}": v["mean"] for k, v in summary["cross_scale_paper"].items()}
    flat |= {f"cross_scale/{k}": v["mean"] for k, v in summary["cross_scale"].items()}
    flat |= {f"cross_scale/{k}/kl_weighted": v["kl_weighted"]
             for k, v in summary["cross_scale"].items()}
    flat |= {f"rast/{k}": v for k, v in summary["rast"].items()}
    run.summary.update(flat)
    # tables and images in the summary, not the history: as history rows their metadata
    # (ncols, nrows, width, ...) would be charted as metrics
    run.summary.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
    for pair, s in summary["shift"].items():
        for direction in ("up", "down"):
            run.summary[f"tokens/{pair}_{direction}"] = wandb.Table(
                columns=["token", "positions", "mean_shift", "examples"],
                data=[[e["token"], e["count"], e["mean_shift"], " | ".join(e["examples"])]
                      for e in s[direction]])
    run.finish()
