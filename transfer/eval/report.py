"""Reports of a transfer comparison: summary.json, results.md, PNG bar charts, and W&B runs
(transfer/eval/dashboard.py).

Everything is computed from the sample records (`samples.jsonl`), never from in-memory state of a
run, so a resumed run reports exactly what an uninterrupted one would. Re-running a finished
comparison decodes nothing and rebuilds the report:

    python -m transfer.eval.evaluate --config recipes/tiny/rast/config_cpu.yaml --report_to none
"""

import logging
from dataclasses import asdict
from pathlib import Path

from train.tracking import wandb_session
from transfer.eval.dashboard import log_evaluation_runs
from transfer.eval.metrics import (
    average_row,
    problem_scores,
    recovery_interval,
    recovery_rate,
    system_metrics,
)
from transfer.eval.samples import Sample
from transfer.runlog import write_json_atomic

logger = logging.getLogger(__name__)


def summarize(config, systems, problem_ids: dict[str, set[str]], records: list[Sample]) -> dict:
    """{"config", "systems", "benchmarks": {benchmark: {system: metrics + rr}}, "average"} from
    the records; RR carries its paired bootstrap CI where there is an L_RL."""
    benchmarks, scores = {}, {}
    for benchmark, ids in problem_ids.items():
        rows = {}
        for system in systems:
            own = [r for r in records if r.system == system.name and r.benchmark == benchmark
                   and r.problem_id in ids]
            rows[system.name] = system_metrics(own, config.samples, seed=config.seed)
            scores[benchmark, system.name] = problem_scores(own, config.samples)
        rl_avg = rows["L_RL"]["avg"] if "L_RL" in rows else None
        for system in systems:
            if system.role == "RAST":
                rr = recovery_rate(rows[system.name]["avg"], rows["L"]["avg"], rl_avg)
                rows[system.name].update(rr=rr.value, rr_note=rr.reason)
                if rl_avg is not None:
                    rows[system.name].update(_rr_interval(scores, [benchmark], system.name,
                                                          config.seed))
        benchmarks[benchmark] = rows
    summary = {"config": asdict(config), "systems": [s.describe() for s in systems],
               "benchmarks": benchmarks}
    if len(benchmarks) > 1:
        rast = [s.name for s in systems if s.role == "RAST"]
        average = average_row(benchmarks, rast)
        if any(s.role == "L_RL" for s in systems):
            for name in rast:
                average[name].update(_rr_interval(scores, list(benchmarks), name, config.seed))
        summary["average"] = average
    return summary


def _rr_interval(scores: dict, benchmarks: list[str], rast: str, seed: int) -> dict:
    """RR's paired bootstrap CI over these benchmarks' problems (averaged RR for several); the
    warning, when the L_RL - L gap's CI reaches 0, is logged as well as stored."""
    triples = []
    for benchmark in benchmarks:
        aligned = [scores[benchmark, name] for name in (rast, "L", "L_RL")]
        if any(other_ids != aligned[0][0] for other_ids, _ in aligned):
            raise ValueError(f"{benchmark}: {rast}, L and L_RL were graded on different problems")
        triples.append(tuple(values for _, values in aligned))
    interval = recovery_interval(triples, seed=seed)
    if interval.warning:
        logger.warning("%s on %s: %s", rast, " + ".join(benchmarks), interval.warning)
    return {"rr_ci_low": interval.low, "rr_ci_high": interval.high, "gap": interval.gap,
            "gap_ci_low": interval.gap_low, "gap_ci_high": interval.gap_high,
            "rr_warning": interval.warning}


# Avg@k under the paper runner's grading rule (train.grader "paper": relative tolerance 1e-4,
# x100 and /100 accepted), beside the default rule's, to put a table next to the paper's.
PAPER_COLUMN = "avg (paper rule)"


def markdown_table(summary: dict) -> str:
    """A table per benchmark: system, Avg@k ± CI, pass@k, RR, length, truncated, careful share."""
    samples = summary["config"]["samples"]
    parts = []
    for benchmark, rows in summary["benchmarks"].items():
        first = next(iter(rows.values()))
        ks = list(first["pass"])
        careful = all("careful_share" in m for m in rows.values())
        paper = all("avg_paper" in m for m in rows.values())
        header = ["system", f"avg@{samples} [95% CI]", *([PAPER_COLUMN] if paper else []),
                  *(f"pass@{k}" for k in ks), "RR", "tokens", "truncated"]
        header += ["careful"] if careful else []
        lines = [f"### {benchmark} ({first['problems']} problems x {samples} samples)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, m in rows.items():
            cells = [name, f"{m['avg']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
                     *([f"{m['avg_paper']:.3f}"] if paper else []),
                     *(f"{m['pass'][k]:.3f}" for k in ks), _rr_cell(m), f"{m['mean_tokens']:.1f}",
                     f"{m['truncated_share']:.3f}"]
            cells += [f"{m['careful_share']:.3f}"] if careful else []
            lines.append("| " + " | ".join(cells) + " |")
        notes = {m["rr_note"] for m in rows.values() if m.get("rr") is None and "rr_note" in m}
        lines += [""] + [f"RR n/a: {note}." for note in sorted(notes)]
        lines += [f"**Warning** ({name}): {m['rr_warning']}." for name, m in rows.items()
                  if m.get("rr_warning")]
        parts.append("\n".join(lines).rstrip() + "\n")
    if "average" in summary:
        parts.append(average_table(summary["average"], samples))
    return "\n".join(parts)


def average_table(average: dict, samples: int) -> str:
    """The paper's average row: mean Avg@k and pass@k over benchmarks, mean RR with its CI."""
    first = next(iter(average.values()))
    ks = list(first["pass"])
    paper = all("avg_paper" in m for m in average.values())
    header = ["system", f"avg@{samples}", *([PAPER_COLUMN] if paper else []),
              *(f"pass@{k}" for k in ks), "RR [95% CI]"]
    lines = [(f"### average over {first['benchmarks']} benchmarks (unweighted; RR: mean of the "
             f"per-benchmark RRs, paired bootstrap CI)"), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in average.items():
        cells = [name, f"{m['avg']:.3f}", *([f"{m['avg_paper']:.3f}"] if paper else []),
                 *(f"{m['pass'][k]:.3f}" for k in ks), _rr_cell(m)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"**Warning** ({name}): {m['rr_warning']}." for name, m in average.items()
                     if m.get("rr_warning")]
    return "\n".join(lines).rstrip() + "\n"


def _rr_cell(m: dict) -> str:
    if "rr" not in m:
        return ""
    if m["rr"] is None:
        return "n/a"
    if m.get("rr_ci_low") is None:
        return f"{m['rr']:.2f}" + (" [unbounded]" if "rr_ci_low" in m else "")
    return f"{m['rr']:.2f} [{m['rr_ci_low']:.2f}, {m['rr_ci_high']:.2f}]"


def plot(summary: dict, output_dir: Path) -> list[Path]:
    """accuracy.png (Avg@k per benchmark and system, CI error bars) and recovery_rate.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    benchmarks = list(summary["benchmarks"])
    systems = [s["name"] for s in summary["systems"]]
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(benchmarks) * len(systems) + 2), 4))
    for i, name in enumerate(systems):
        rows = [summary["benchmarks"][b][name] for b in benchmarks]
        avg = np.array([m["avg"] for m in rows])
        err = np.array([[m["avg"] - m["ci_low"] for m in rows],
                        [m["ci_high"] - m["avg"] for m in rows]])
        ax.bar(np.arange(len(benchmarks)) + i * width, avg, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(np.arange(len(benchmarks)) + width * (len(systems) - 1) / 2, benchmarks)
    ax.set_ylabel(f"avg@{summary['config']['samples']} (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")  # outside: bars reach 1
    paths = [output_dir / "accuracy.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    rr = {(b, n): m for b, rows in summary["benchmarks"].items() for n, m in rows.items()
          if m.get("rr") is not None}
    if rr:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rr)), 4))
        # error bars: RR's paired bootstrap CI where it is bounded
        err = np.array([[m["rr"] - m["rr_ci_low"], m["rr_ci_high"] - m["rr"]]
                        if m.get("rr_ci_low") is not None else [0.0, 0.0] for m in rr.values()]).T
        ax.bar([f"{b}\n{n}" for b, n in rr], [m["rr"] for m in rr.values()], yerr=err, capsize=3)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_ylabel("recovery rate (RAST - L) / (L_RL - L), 95% CI")
        paths.append(output_dir / "recovery_rate.png")
        fig.tight_layout()
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
    return paths


def report(summary: dict, records: list[Sample], output_dir: Path, config,
           problems: dict[str, list[dict]] | None = None) -> None:
    """Write summary.json, results.md and the plots, print the table, log to W&B unless disabled
    (transfer.eval.dashboard; `problems` per benchmark give the side-by-side tables their text)."""
    write_json_atomic(output_dir / "summary.json", summary)
    table = markdown_table(summary)
    (output_dir / "results.md").write_text(table)
    images = plot(summary, output_dir)
    with wandb_session(config.report_to, output_dir, config.wandb_project) as wandb:
        if wandb is not None:
            log_evaluation_runs(wandb, summary, records, output_dir, config.wandb_project,
                                config.wandb_group or output_dir.name, images, problems)
    print(f"\n{table}\nsamples, summary.json, results.md, plots: {output_dir}")
