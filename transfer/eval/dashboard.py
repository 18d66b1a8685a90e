"""The W&B runs of a transfer comparison: what a researcher compares comes first.

One group per evaluation (the output_dir's name or `wandb_group`): a `comparison` run that holds
the comparison charts (accuracy against lambda, pass@k curves, RR per benchmark with its CI), the
side-by-side tables and the plots, and one run per system with its summary numbers, its pass@k
curve and its per-problem table. Every run declares the train.grpo checkpoints it decoded as
inputs (train.tracking.declare_input), so base -> GRPO -> evaluation is one lineage graph.

Charts are history series against their own x metric (lambda, k, benchmark index) declared with
define_metric, so a viewer draws lines, not steps; each x is defined hidden before the first row,
so the web UI shows no panel of an axis against the step (`wandb leet` of wandb 0.31 ignores
`hidden` and still draws one: a limit of that viewer, not of the records). Tables and images go to the run summary, never
to the history: a Table logged with run.log becomes a history row of its metadata (ncols, nrows,
size), which viewers chart as if it were a metric.
"""

from pathlib import Path

from train.tracking import declare_input
from transfer.eval.samples import Sample

SUMMARY_KEYS = ("avg", "avg_paper", "ci_low", "ci_high", "rr", "rr_ci_low", "rr_ci_high", "gap", "gap_ci_low",
                "gap_ci_high", "rr_warning", "mean_tokens", "truncated_share", "careful_share")


def log_evaluation_runs(wandb, summary: dict, records: list[Sample], output_dir: Path,
                        project: str, group: str, images: list[Path],
                        problems: dict[str, list[dict]] | None = None) -> None:
    """The comparison run first, then one run per system, all in `group`; `wandb` from
    train.tracking.wandb_session."""
    config = summary["config"]
    models = {"small_rl": config["small_rl"], "target_rl": config.get("target_rl")}
    for system in summary["systems"]:  # the other RL checkpoints of combinations of pairs
        models.update({f"small_rl/{Path(delta['rl']).name}": delta["rl"]
                       for delta in system["deltas"] if delta["rl"] not in models.values()})
    run = wandb.init(project=project, group=group, name=f"{group}/comparison",
                     job_type="comparison", dir=str(output_dir), config=config,
                     reinit="finish_previous")
    declare_input(run, models)
    log_comparison_charts(run, summary)
    run.summary.update({f"side_by_side/{benchmark}": wandb.Table(
        columns=columns, data=rows) for benchmark, (columns, rows)
        in side_by_side(summary, records, problems or {}).items()})
    run.summary.update({f"plots/{image.stem}": wandb.Image(str(image)) for image in images})
    run.finish()

    for system in summary["systems"]:
        name = system["name"]
        run = wandb.init(project=project, group=group, name=f"{group}/{name}", job_type="eval",
                         dir=str(output_dir), config={**config, "system": system},
                         reinit="finish_previous")
        declare_input(run, models)
        run.define_metric("k", hidden=True)
        run.define_metric("pass_at_k/*", step_metric="k")
        for k in _ks(summary):
            run.log({"k": int(k), **{f"pass_at_k/{benchmark}": rows[name]["pass"][k]
                                     for benchmark, rows in summary["benchmarks"].items()
                                     if k in rows[name]["pass"]}})
        for benchmark, rows in summary["benchmarks"].items():
            flat = {key: rows[name].get(key) for key in SUMMARY_KEYS}
            flat.update({f"pass@{k}": value for k, value in rows[name]["pass"].items()})
            run.summary.update({f"{benchmark}/{key}": value for key, value in flat.items()
                                if value is not None})
        columns = ["benchmark", "problem_id", "correct", "samples", "mean_tokens", "first_sample"]
        run.summary["per_problem"] = wandb.Table(
            columns=columns, data=_per_problem_rows(records, name, config["samples"]))
        run.finish()


def log_comparison_charts(run, summary: dict) -> None:
    """Accuracy against lambda (a line per benchmark, when lambda is swept), pass@k against k (a
    series per benchmark and system), RR and its CI per benchmark (x: benchmark index, in the
    order of summary.json), and each system's Avg@k in the run summary."""
    benchmarks = summary["benchmarks"]
    rast = [s for s in summary["systems"] if s["role"] == "RAST"]
    for x in ("lambda", "k", "benchmark_index"):
        run.define_metric(x, hidden=True)
    run.define_metric("accuracy_vs_lambda/*", step_metric="lambda")
    run.define_metric("pass_at_k/*", step_metric="k")
    run.define_metric("recovery_rate/*", step_metric="benchmark_index")
    swept = [s for s in rast if not s["combination"]]  # combinations are not on the axis
    if len(swept) > 1:
        for system in sorted(swept, key=lambda s: s["deltas"][0]["lam"]):
            run.log({"lambda": system["deltas"][0]["lam"],
                     **{f"accuracy_vs_lambda/{benchmark}": rows[system["name"]]["avg"]
                        for benchmark, rows in benchmarks.items()}})
    for k in _ks(summary):
        run.log({"k": int(k), **{f"pass_at_k/{benchmark}/{name}": m["pass"][k]
                                 for benchmark, rows in benchmarks.items()
                                 for name, m in rows.items() if k in m["pass"]}})
    for index, (benchmark, rows) in enumerate(benchmarks.items()):
        logged = {}
        for system in rast:
            m = rows[system["name"]]
            for key in ("rr", "rr_ci_low", "rr_ci_high"):
                if m.get(key) is not None:
                    logged[f"recovery_rate/{system['name']}/{key}"] = m[key]
        if logged:
            run.log({"benchmark_index": index, **logged})
    run.summary["benchmark_order"] = list(benchmarks)
    for benchmark, rows in benchmarks.items():
        run.summary.update({f"{benchmark}/{name}/avg": m["avg"] for name, m in rows.items()})
        run.summary.update({f"{benchmark}/{name}/{key}": m[key] for name, m in rows.items()
                            for key in ("rr", "rr_ci_low", "rr_ci_high", "rr_warning")
                            if m.get(key) is not None})
    for name, m in summary.get("average", {}).items():
        run.summary.update({f"average/{name}/{key}": m[key] for key in ("avg", "rr", "rr_ci_low",
                                                                        "rr_ci_high", "rr_warning")
                            if m.get(key) is not None})


def side_by_side(summary: dict, records: list[Sample],
                 problems: dict[str, list[dict]]) -> dict[str, tuple[list[str], list[list]]]:
    """Per benchmark: problem, gold, and per system its sample 0's answer, correctness and length
    in tokens, so a reader sees where RAST fixes or breaks L."""
    names = [s["name"] for s in summary["systems"]]
    first = {(r.benchmark, r.problem_id, r.system): r for r in records if r.sample_index == 0}
    tables = {}
    for benchmark in summary["benchmarks"]:
        known = {p["id"]: p for p in problems.get(benchmark, [])}
        ids = list(known) or sorted({pid for (b, pid, _) in first if b == benchmark})
        columns = ["problem_id", "problem", "gold"]
        columns += [f"{name} {field}" for name in names for field in ("answer", "correct", "tokens")]
        rows = []
        for pid in ids:
            row = [pid, known.get(pid, {}).get("problem", ""), known.get(pid, {}).get("answer", "")]
            for name in names:
                r = first.get((benchmark, pid, name))
                row += [r.extracted, r.correct, r.num_tokens] if r else [None, None, None]
            rows.append(row)
        tables[benchmark] = (columns, rows)
    return tables


def _ks(summary: dict) -> list[str]:
    return list(next(iter(next(iter(summary["benchmarks"].values())).values()))["pass"])


def _per_problem_rows(records: list[Sample], system: str, samples: int) -> list[list]:
    by_problem: dict[tuple[str, str], list[Sample]] = {}
    for r in records:
        if r.system == system and r.sample_index < samples:
            by_problem.setdefault((r.benchmark, r.problem_id), []).append(r)
    rows = []
    for (benchmark, problem_id), own in sorted(by_problem.items()):
        own.sort(key=lambda r: r.sample_index)
        rows.append([benchmark, problem_id, sum(r.correct for r in own), len(own),
                     sum(r.num_tokens for r in own) / len(own), own[0].text[:2000]])
    return rows
