"""transfer.eval.dashboard: the W&B runs of a comparison show results, never their x axes.

Written offline from a hand-made summary and read back with wandb's own reader (conftest).
"""

import json

from conftest import axes_shown_as_panels, wandb_inspect

from train.tracking import wandb_session
from transfer.eval.dashboard import log_evaluation_runs


def system(name: str, lam: float | None) -> dict:
    deltas = [] if lam is None else [{"rl": "outputs/s-grpo", "base": "s", "lam": lam}]
    return {"name": name, "role": "L" if lam is None else "RAST", "target": "l",
            "deltas": deltas, "combination": False}


def test_every_axis_is_hidden_before_its_first_row_and_every_other_key_is_a_result(tmp_path):
    systems = [system("L", None), system("L+RAST(lam=0.5)", 0.5), system("L+RAST(lam=1)", 1.0)]
    rows = {s["name"]: {"avg": 0.5, "pass": {"1": 0.5, "2": 0.7}, "rr": 0.9, "rr_ci_low": 0.8,
                        "rr_ci_high": 1.0} for s in systems}
    summary = {"config": {"small_rl": "outputs/s-grpo", "target_rl": None, "samples": 2},
               "systems": systems, "benchmarks": {"tiny": rows, "mul": rows}}
    with wandb_session("wandb", tmp_path, "rast-transfer") as wandb:
        log_evaluation_runs(wandb, summary, [], tmp_path, "rast-transfer", "g", [])
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 + len(systems)
    for run in runs:
        assert axes_shown_as_panels(run) == [], run
        keys = {key for line in wandb_inspect(run, "--json").splitlines() if '"history"' in line
                for key in json.loads(line)["history"]["item"]}
        results = {key for key in keys if not key.startswith("_")} - {
            "k", "lambda", "benchmark_index"}
        assert results and all(key.startswith(("pass_at_k/", "accuracy_vs_lambda/",
                                               "recovery_rate/")) for key in results), run
