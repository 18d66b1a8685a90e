"""Benchmark metrics from graded samples: Avg@k, unbiased pass@k, bootstrap CI, recovery rate
with a paired bootstrap CI, and the average over benchmarks.

Pure functions of correctness matrices and sample records (numpy + stdlib, no models), so they can
be tested exhaustively and recomputed from `samples.jsonl` at any time:

    python -c "from transfer.eval.metrics import pass_at_k; print(pass_at_k(10, 3, 4))"  # 0.8333...
"""

from dataclasses import dataclass

import numpy as np

from transfer.eval.samples import Sample


def k_values(n: int) -> list[int]:
    """Powers of two up to n (1, 2, 4, ...), the k reported for pass@k."""
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n: 1 - C(n-c, k) / C(n, k).

    Product form 1 - prod_{i=n-c+1..n} (1 - k/i): the binomials overflow float64 past n ~ 1000.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: np.ndarray, k: int) -> float:
    """pass@k averaged over problems; `correct` is a (problems, n) 0/1 matrix."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)]))


def avg_at_k(correct: np.ndarray) -> float:
    """Avg@k: mean accuracy over all problems and their k samples (k = number of columns)."""
    return float(np.asarray(correct, dtype=float).mean())


def bootstrap_ci(per_problem: np.ndarray, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over problems (problems resampled with replacement).

    Resampling problems, not samples: the k samples of one problem are correlated, and the CI is
    meant to say how much the score would move on another draw of problems.
    """
    per_problem = np.asarray(per_problem, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_problem), size=(resamples, len(per_problem)))
    means = per_problem[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class RecoveryRate:
    value: float | None  # None when it cannot be computed; `reason` says why
    reason: str

    def __str__(self) -> str:
        return f"{self.value:.2f}" if self.value is not None else "n/a"


def recovery_rate(rast: float, base: float, rl: float | None) -> RecoveryRate:
    """RR = (rast - base) / (rl - base): share of the direct-RL gain that RAST recovers.

    Refused (value None) without an RL reference, or when RL does not beat the base: a zero gap
    has no ratio, and a negative one would flip the sign of every comparison.
    """
    if rl is None:
        return RecoveryRate(None, "no RL reference of the target's size")
    gap = rl - base
    if gap <= 0:
        return RecoveryRate(None, f"RL reference does not beat the base (gap {gap:+.4f})")
    return RecoveryRate((rast - base) / gap, "ok")


@dataclass(frozen=True)
class RecoveryInterval:
    """Paired bootstrap of RR over problems: RR's CI and the CI of the gap L_RL - L it divides by.

    low/high are None when RR is undefined (gap <= 0) in more resamples than the CI's tails hold:
    the interval is then unbounded. `warning` is set when the gap's own CI reaches 0: L_RL does not
    beat L beyond noise, so RR divides by noise and must not be read as a recovery.
    """

    low: float | None
    high: float | None
    gap: float
    gap_low: float
    gap_high: float

    @property
    def warning(self) -> str | None:
        if self.gap_low > 0:
            return None
        return (f"L_RL - L gap {self.gap:+.3f} is within its own CI [{self.gap_low:+.3f}, "
                f"{self.gap_high:+.3f}] (it reaches 0): RR divides by noise here")


def recovery_interval(benchmarks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> RecoveryInterval:
    """Paired percentile bootstrap of RR averaged over benchmarks (one benchmark: its RR).

    benchmarks: per benchmark, the per-problem accuracies (rast, base, rl), aligned by problem.
    Each resample draws each benchmark's problems with replacement, the SAME draw for RAST, L and
    L_RL (their scores on one problem are correlated: pairing removes problem difficulty from the
    noise), computes each benchmark's RR = (RAST - L) / (L_RL - L), and averages them over
    benchmarks, as the paper's "average RR" does.
    """
    rng = np.random.default_rng(seed)
    rr_sum, gap_sum = np.zeros(resamples), np.zeros(resamples)
    for rast, base, rl in benchmarks:
        rast, base, rl = (np.asarray(x, dtype=float) for x in (rast, base, rl))
        if not len(rast) == len(base) == len(rl) > 0:
            raise ValueError(f"per-problem scores of unequal lengths: {len(rast)}, {len(base)}, "
                             f"{len(rl)}")
        picks = rng.integers(0, len(base), size=(resamples, len(base)))
        base_mean = base[picks].mean(axis=1)
        gap = rl[picks].mean(axis=1) - base_mean
        with np.errstate(divide="ignore", invalid="ignore"):
            rr_sum += np.where(gap > 0, (rast[picks].mean(axis=1) - base_mean) / gap, np.nan)
        gap_sum += gap
    rr, gap = rr_sum / len(benchmarks), gap_sum / len(benchmarks)
    tail = (1.0 - confidence) / 2
    gap_low, gap_high = np.percentile(gap, [100 * tail, 100 * (1 - tail)])
    point_gap = float(np.mean([np.mean(rl) - np.mean(base) for _, base, rl in benchmarks]))
    low = high = None
    if np.isnan(rr).mean() <= tail:  # undefined resamples fit in one tail: the CI is bounded
        # an undefined RR (gap <= 0) is unbounded in either direction: drop it from both tails
        low, high = (float(x) for x in np.nanpercentile(rr, [100 * tail, 100 * (1 - tail)]))
    return RecoveryInterval(low, high, point_gap, float(gap_low), float(gap_high))


def average_row(rows: dict[str, dict], systems_rr: list[str]) -> dict[str, dict]:
    """The mean over benchmarks of each system's Avg@k and pass@k, and of each RAST system's RR
    (the paper's average RR: the mean of per-benchmark RRs; None if one is undefined).

    rows: {benchmark: {system: metrics}}; systems_rr: the systems that carry an RR.
    """
    benchmarks = list(rows.values())
    average = {}
    for name in benchmarks[0]:
        metrics = [by_system[name] for by_system in benchmarks]
        ks = set.intersection(*(set(m["pass"]) for m in metrics))
        average[name] = {"benchmarks": len(metrics),
                         "avg": float(np.mean([m["avg"] for m in metrics])),
                         "pass": {k: float(np.mean([m["pass"][k] for m in metrics]))
                                  for k in sorted(ks, key=int)}}
        if all("avg_paper" in m for m in metrics):
            average[name]["avg_paper"] = float(np.mean([m["avg_paper"] for m in metrics]))
        if name in systems_rr:
            values = [m.get("rr") for m in metrics]
            average[name]["rr"] = (None if any(v is None for v in values)
                                   else float(np.mean(values)))
    return average


def correctness_matrix(records: list[Sample], samples: int) -> tuple[list[str], np.ndarray]:
    """(problem ids, (problems, samples) bool matrix) from the records of ONE system and benchmark.

    Only sample indices < samples count, so a directory that once held more samples still gives
    the numbers of this run; a problem with a missing sample is an error (the run is incomplete).
    """
    by_problem: dict[str, dict[int, bool]] = {}
    for record in records:
        if record.sample_index < samples:
            samples_of = by_problem.setdefault(record.problem_id, {})
            samples_of[record.sample_index] = record.correct
    problem_ids = sorted(by_problem)
    incomplete = [pid for pid in problem_ids if len(by_problem[pid]) != samples]
    if incomplete:
        raise ValueError(f"{len(incomplete)} problems lack samples (first: {incomplete[0]})")
    matrix = np.array([[by_problem[pid][i] for i in range(samples)] for pid in problem_ids],
                      dtype=bool)
    return problem_ids, matrix.reshape(len(problem_ids), samples)


def problem_scores(records: list[Sample], samples: int) -> tuple[list[str], np.ndarray]:
    """(problem ids, per-problem accuracy over its samples), in problem-id order."""
    ids, correct = correctness_matrix(records, samples)
    return ids, correct.mean(axis=1)


def system_metrics(records: list[Sample], samples: int, seed: int = 0) -> dict:
    """Every metric of one system on one benchmark, from its sample records."""
    records = [r for r in records if r.sample_index < samples]
    _, correct = correctness_matrix(records, samples)
    per_problem = correct.mean(axis=1)
    low, high = bootstrap_ci(per_problem, seed=seed)
    metrics = {
        "problems": int(correct.shape[0]),
        "samples": samples,
        "avg": avg_at_k(correct),
        "ci_low": low,
        "ci_high": high,
        "pass": {str(k): mean_pass_at_k(correct, k) for k in k_values(samples)},
        "mean_tokens": float(np.mean([r.num_tokens for r in records])),
        "truncated_share": float(np.mean([not r.finished for r in records])),
    }
    if all(r.careful is not None for r in records):
        metrics["careful_share"] = float(np.mean([r.careful for r in records]))
    if all(r.correct_paper is not None for r in records):  # the paper runner's rule, beside
        metrics["avg_paper"] = float(np.mean([r.correct_paper for r in records]))
    return metrics
