"""transfer.eval.report on hand-made sample records: RR with its CI, the warning, the average row."""

import pytest

from train.pairing import Pair
from transfer.deltas import Delta
from transfer.eval.evaluate import System, TransferConfig
from transfer.eval.report import markdown_table, summarize
from transfer.eval.samples import Sample


def records_of(system: System, benchmark: str, correct: list[list[bool]]) -> list[Sample]:
    return [Sample(system.name, system.role, benchmark, f"p{p}", i, 0, "", None, ok, "", 3, True,
                   deltas=system.deltas)
            for p, row in enumerate(correct) for i, ok in enumerate(row)]


SYSTEMS = [System("L", "l"), System("RAST", "l", (Delta(Pair("s", "s_rl", False, False), 1.0),)),
           System("L_RL", "l_rl")]


def test_rr_is_reported_with_a_warning_when_the_gap_is_within_its_ci(caplog):
    config = TransferConfig(samples=2, benchmarks=["a", "b"], report_to="none")
    correct = {  # benchmark a: L_RL beats L on one problem of four (noise); b: on all four
        "a": {"L": [[False] * 2] * 4, "L+RAST(lam=1)": [[True, False]] + [[False] * 2] * 3,
              "L_RL": [[True] * 2] + [[False] * 2] * 3},
        "b": {"L": [[False] * 2] * 4, "L+RAST(lam=1)": [[True, False]] * 4,
              "L_RL": [[True] * 2] * 4}}
    records = [r for b, by_system in correct.items() for s in SYSTEMS
               for r in records_of(s, b, by_system[s.name])]
    summary = summarize(config, SYSTEMS, {"a": {f"p{i}" for i in range(4)},
                                          "b": {f"p{i}" for i in range(4)}}, records)
    a, b = (summary["benchmarks"][x]["L+RAST(lam=1)"] for x in "ab")
    assert a["rr"] == pytest.approx(0.5) and "within its own CI" in a["rr_warning"]
    assert b["rr"] == pytest.approx(0.5) and b["rr_warning"] is None
    assert (b["rr_ci_low"], b["rr_ci_high"]) == pytest.approx((0.5, 0.5))  # paired: exact
    average = summary["average"]["L+RAST(lam=1)"]
    assert average["rr"] == pytest.approx(0.5)
    assert "within its own CI" in caplog.text
    table = markdown_table(summary)
    assert "**Warning** (L+RAST(lam=1)): L_RL - L gap +0.250 is within its own CI" in table
    assert "### average over 2 benchmarks" in table and "| L+RAST(lam=1) | 0.312 |" in table  # (1/8 + 1/2) / 2
    assert "0.50 [unbounded]" in table  # a: RR undefined in a quarter of resamples


def test_the_paper_rules_accuracy_is_a_second_column_beside_the_default_rules():
    """Each sample carries both grades; summary.json and results.md give the paper runner's rule
    (relative 1e-4, x100 and /100) as its own column, per benchmark and in the average row; an
    older log without it gets no such column rather than a wrong one."""
    config = TransferConfig(samples=2, benchmarks=["a", "b"], report_to="none")
    records = [r for s in SYSTEMS for b in "ab"
               for r in records_of(s, b, [[True, False], [False, False]])]
    for r in records:  # the paper's rule also accepts the second problem's first answer
        r.correct_paper = r.correct or (r.problem_id == "p1" and r.sample_index == 0)
    problems = {"a": {"p0", "p1"}, "b": {"p0", "p1"}}
    summary = summarize(config, SYSTEMS, problems, records)
    row = summary["benchmarks"]["a"]["L"]
    assert (row["avg"], row["avg_paper"]) == (0.25, 0.5)
    assert summary["average"]["L"]["avg_paper"] == 0.5
    table = markdown_table(summary)
    assert "| system | avg@2 [95% CI] | avg (paper rule) | pass@1 |" in table
    assert "| L | 0.250 [" in table and "] | 0.500 | 0.250 |" in table
    assert "| system | avg@2 | avg (paper rule) | pass@1 |" in table  # the average row
    for r in records:
        r.correct_paper = None
    older = summarize(config, SYSTEMS, problems, records)
    assert "avg_paper" not in older["benchmarks"]["a"]["L"]
    assert "paper rule" not in markdown_table(older)
