"""Metrics against brute force: pass@k over every k-subset, Avg@k, bootstrap CI, recovery rate."""

import itertools

import numpy as np
import pytest

from transfer.eval.metrics import (
    average_row,
    avg_at_k,
    bootstrap_ci,
    correctness_matrix,
    k_values,
    mean_pass_at_k,
    pass_at_k,
    recovery_interval,
    recovery_rate,
    system_metrics,
)
from transfer.eval.samples import Sample


def brute_force_pass_at_k(row: np.ndarray, k: int) -> float:
    subsets = list(itertools.combinations(range(len(row)), k))
    return sum(bool(row[list(s)].any()) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(5))
def test_pass_at_k_matches_enumerating_every_subset(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    correct = rng.random((7, n)) < rng.random((7, 1))  # per-problem difficulty, some all-0/all-1
    for k in range(1, n + 1):
        expected = np.mean([brute_force_pass_at_k(row, k) for row in correct])
        assert mean_pass_at_k(correct, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 1, 8) == pytest.approx(0.8)  # math.comb formula: 1 - C(9,8)/C(10,8)
    # Binomials of 5000 overflow float64; the product form stays in [0, 1].
    value = pass_at_k(5000, 3, 64)
    assert 0.0 < value < 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_k_values_are_powers_of_two_up_to_n():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(10) == [1, 2, 4, 8]


def test_avg_at_k_is_the_mean_over_problems_and_samples():
    correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    assert avg_at_k(correct) == pytest.approx(5 / 8)
    assert avg_at_k(correct) == pytest.approx(mean_pass_at_k(correct, 1))


def test_bootstrap_ci_is_deterministic_and_contains_the_mean():
    rng = np.random.default_rng(0)
    per_problem = rng.random(300)
    low, high = bootstrap_ci(per_problem, seed=3)
    assert (low, high) == bootstrap_ci(per_problem, seed=3)
    assert low < per_problem.mean() < high
    assert bootstrap_ci(per_problem, seed=4) != (low, high)
    # Width of a 95% interval of a mean of 300 U(0,1): about 2 * 1.96 * 0.289 / sqrt(300) = 0.065.
    assert 0.04 < high - low < 0.09
    assert bootstrap_ci(np.ones(20)) == (1.0, 1.0)


def test_recovery_rate_refuses_zero_or_negative_gap_and_missing_reference():
    assert recovery_rate(0.9, 0.5, 1.0).value == pytest.approx(0.8)
    assert recovery_rate(0.4, 0.5, 1.0).value == pytest.approx(-0.2)
    for rl in (0.5, 0.4):
        refused = recovery_rate(0.9, 0.5, rl)
        assert refused.value is None and "does not beat" in refused.reason and str(refused) == "n/a"
    missing = recovery_rate(0.9, 0.5, None)
    assert missing.value is None and "no RL reference" in missing.reason


def _records(matrix, tokens=10, finished=True):
    return [Sample("L", "L", "b", f"p{p}", i, 0, "", None, bool(v), "", tokens, finished)
            for p, row in enumerate(matrix) for i, v in enumerate(row)]


def test_system_metrics_from_records_ignore_extra_samples_and_refuse_missing_ones():
    matrix = [[1, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    records = _records(matrix, tokens=7, finished=False)
    metrics = system_metrics(records, samples=4)  # the 5th sample belongs to a bigger earlier run
    assert metrics["avg"] == pytest.approx(3 / 8)
    assert metrics["pass"] == {"1": pytest.approx(3 / 8), "2": pytest.approx(0.5), "4": 0.5}
    assert metrics["problems"] == 2 and metrics["mean_tokens"] == 7
    assert metrics["truncated_share"] == 1
    assert "careful_share" not in metrics
    ids, correct = correctness_matrix(records[::-1], samples=4)  # order of records is irrelevant
    assert ids == ["p0", "p1"] and correct.tolist() == [[True, False, True, True], [False] * 4]
    with pytest.raises(ValueError, match="lack samples"):
        correctness_matrix(records[1:], samples=4)


def test_recovery_interval_resamples_the_three_systems_together():
    # RAST sits halfway between L and L_RL on EVERY problem: any paired resample gives RR 0.5
    # exactly, while resampling the systems independently would spread it.
    base, rl = np.array([0.0, 0.25, 0.5, 0.1]), np.array([0.5, 1.0, 0.75, 0.2])
    rast = (base + rl) / 2
    interval = recovery_interval([(rast, base, rl)], resamples=500)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)
    assert interval.gap == pytest.approx(0.4)  # (0.5 + 0.75 + 0.25 + 0.1) / 4
    assert interval.gap_low > 0 and interval.warning is None


def test_recovery_interval_warns_when_the_gap_is_within_its_own_ci():
    # L_RL beats L on one problem of four: a quarter of resamples miss it and have no gap at all
    base, rl, rast = np.zeros(4), np.array([1.0, 0, 0, 0]), np.array([0.5, 0, 0, 0])
    interval = recovery_interval([(rast, base, rl)], resamples=1000)
    assert interval.gap == pytest.approx(0.25) and interval.gap_low == 0.0
    assert "within its own CI" in interval.warning
    assert interval.low is None and interval.high is None  # undefined in ~32% of resamples


def test_average_rr_is_the_mean_of_per_benchmark_rrs_as_in_the_paper():
    """The paper's 32B + Delta R 14B: RR per benchmark from its table, averaged = its 84.8%."""
    table = {  # benchmark: (Qwen2.5-32B, + Delta R 14B, SimpleRL-32B), in %
        "math500": (68.6, 80.7, 81.3), "aime24": (3.3, 18.3, 27.6), "amc23": (52.5, 65.2, 69.6),
        "minerva": (21.0, 34.2, 33.6), "olympiad": (33.1, 43.5, 44.9), "gsm8k": (93.1, 95.3, 95.7)}
    rows = {}
    for benchmark, (base, rast, rl) in table.items():
        rows[benchmark] = {name: {"avg": value / 100, "pass": {"1": value / 100}}
                           for name, value in (("L", base), ("RAST", rast), ("L_RL", rl))}
        rows[benchmark]["RAST"]["rr"] = recovery_rate(rast, base, rl).value
    average = average_row(rows, ["RAST"])
    assert round(average["RAST"]["rr"], 3) == 0.848
    assert average["L"]["avg"] == pytest.approx(sum(v[0] for v in table.values()) / 600)
    assert average["L"]["benchmarks"] == 6 and "rr" not in average["L"]
    rows["gsm8k"]["RAST"]["rr"] = None  # one benchmark without RR: no average RR
    assert average_row(rows, ["RAST"])["RAST"]["rr"] is None


def test_averaged_interval_draws_each_benchmark_and_averages_their_rrs():
    first = (np.array([0.5, 0.5]), np.zeros(2), np.ones(2))  # RR 0.5 in every resample
    second = (np.array([1.0, 0.25]), np.zeros(2), np.array([1.0, 0.25]))  # RR 1.0 always
    interval = recovery_interval([first, second], resamples=200)
    assert interval.low == pytest.approx(0.75) and interval.high == pytest.approx(0.75)
