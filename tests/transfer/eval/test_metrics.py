"""Metrics against brute force: pass@k over every k-subset, Avg@k, bootstrap CI, recovery rate."""

import itertools

import numpy as np
import pytest

from transfer.eval.metrics import (
    avg_at_k,
    bootstrap_ci,
    correctness_matrix,
    k_values,
    mean_pass_at_k,
    pass_at_k,
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
    return [Sample("L", "L", 0.0, "b", f"p{p}", i, 0, "", None, bool(v), "", tokens, finished)
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
