"""Per-position statistics of a RAST triple along a trajectory, as pure tensor functions.

Given the next-token logits every model gives at each position of a teacher-forced trajectory
(rows = positions, columns = vocabulary), `position_stats` returns one value per position:
whether each base model's greedy token is the trajectory's token (path coverage, aggregated per
trajectory and pooled by `path_coverage`), the RL delta
Delta R = log p_RL - log p_base at that token, KL(RL || base), the cross-scale cosine of Delta R,
the RAST distribution's KL to the large base and to the RL models, entropies, and the token each
RL model most up- and down-weights. No model, file or plot here; transfer/analysis/analyze.py gathers the
logits with one forward per model per trajectory and aggregates. Try it:

    python -c "import torch; from transfer.analysis.token_stats import smallest_share_holding; \
print(smallest_share_holding(torch.tensor([8.0, 1.0, 1.0]), 0.5))"
"""

import re
from dataclasses import dataclass

import torch

from transfer.decode.rast import align_logits, combine_logits


@dataclass
class PositionLogits:
    """Next-token logits [positions, rows] of every model at the same trajectory positions.

    pairs[i] = (small_base, small_rl) of pair i; pairs[0] is the pair that steers RAST. Widths may
    differ (embedding padding): everything is cut to the shared vocabulary.
    """

    large: torch.Tensor
    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    large_rl: torch.Tensor | None = None


def log_probs(logits: torch.Tensor, shared_vocab: int) -> torch.Tensor:
    return align_logits(logits, shared_vocab).float().log_softmax(dim=-1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in nats, from log-probabilities [rows, vocab]."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(dim=-1)


def centered_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per row after removing each row's mean over the vocabulary.

    A logit vector is only defined up to a constant per row (softmax ignores it, and raw-logit and
    log-prob deltas differ by exactly that constant), so the cosine of Delta R is taken on the
    centered vectors: the same number whichever of the two a caller passes.
    """
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def raw_delta(base_logits: torch.Tensor, rl_logits: torch.Tensor, shared_vocab: int) -> torch.Tensor:
    """z_RL - z_base on raw logits over the shared vocabulary, in fp32 (the paper's Delta R)."""
    return (align_logits(rl_logits, shared_vocab).float()
            - align_logits(base_logits, shared_vocab).float())


def raw_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per row of raw logit deltas, uncentred: the paper's cross-scale similarity
    (analysis/similarity.py of its code: sklearn's cosine_similarity of the RL-minus-base raw
    logits, per position). Unlike centered_cosine it moves when a row is shifted by a constant,
    which softmax ignores; kept because it is the number the paper reports."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def position_stats(logits: PositionLogits, targets: torch.Tensor, *, lam: float,
                   shared_vocab: int) -> dict[str, torch.Tensor]:
    """One value per position (row) for each statistic; `targets` [positions] are the tokens taken.

    Keys: covered/L and covered/S{i} (1.0 where that base's argmax is the target), top1_changed
    (argmax of L differs from argmax of RAST), delta_token/{i} (Delta R_i at the target),
    kl_rl_base/{i} = KL(S{i}_RL || S{i}), up_token/{i}, up_shift/{i}, down_token/{i},
    down_shift/{i} (the token whose probability RL raises / lowers most, and by how much),
    cos_pairs/{i} = cos(Delta R_0, Delta R_i) for i >= 1, cos_large/{i} = cos(Delta R_i, L_RL - L),
    both centred log-prob cosines, and rawcos_pairs/{i}, rawcos_large/{i}, the same on raw logit
    deltas uncentred (the paper's definition),
    kl_rast_large, kl_rast_rl (vs S0_RL), kl_rast_large_rl, entropy/{L,RAST,S{i},S{i}_RL,L_RL}.
    RAST = softmax(z_L + lam * (z_S0_RL - z_S0)) over the shared vocabulary.
    """
    targets = targets.to(logits.large.device)
    large = log_probs(logits.large, shared_vocab)
    rast_logits = combine_logits(logits.large, *logits.pairs[0], lam=lam, shared_vocab=shared_vocab)
    rast = log_probs(rast_logits, shared_vocab)
    stats = {"covered/L": _hits(large, targets), "top1_changed": _changed(large, rast),
             "kl_rast_large": kl_divergence(rast, large), "entropy/L": entropy(large),
             "entropy/RAST": entropy(rast)}
    deltas, raw_deltas = [], []
    for i, (base_logits, rl_logits) in enumerate(logits.pairs):
        raw_deltas.append(raw_delta(base_logits, rl_logits, shared_vocab).to(large.device))
        base = log_probs(base_logits, shared_vocab).to(large.device)
        rl = log_probs(rl_logits, shared_vocab).to(large.device)
        delta = rl - base  # log-prob Delta R: z_RL - z_base up to a per-row constant
        deltas.append(delta)
        shift = rl.exp() - base.exp()
        stats |= {f"covered/S{i}": _hits(base, targets),
                  f"delta_token/{i}": delta.gather(-1, targets[:, None])[:, 0],
                  f"kl_rl_base/{i}": kl_divergence(rl, base),
                  f"up_shift/{i}": shift.max(dim=-1).values, f"up_token/{i}": shift.argmax(dim=-1),
                  f"down_shift/{i}": shift.min(dim=-1).values,
                  f"down_token/{i}": shift.argmin(dim=-1),
                  f"entropy/S{i}": entropy(base), f"entropy/S{i}_RL": entropy(rl)}
        if i == 0:
            stats["kl_rast_rl"] = kl_divergence(rast, rl)
        else:
            stats[f"cos_pairs/{i}"] = centered_cosine(deltas[0], delta)
            stats[f"rawcos_pairs/{i}"] = raw_cosine(raw_deltas[0], raw_deltas[i])
    if logits.large_rl is not None:
        large_rl = log_probs(logits.large_rl, shared_vocab).to(large.device)
        stats["kl_rast_large_rl"] = kl_divergence(rast, large_rl)
        stats["entropy/L_RL"] = entropy(large_rl)
        large_raw = raw_delta(logits.large, logits.large_rl.to(logits.large.device), shared_vocab)
        for i, delta in enumerate(deltas):
            stats[f"cos_large/{i}"] = centered_cosine(delta, large_rl - large)
            stats[f"rawcos_large/{i}"] = raw_cosine(raw_deltas[i], large_raw)
    return stats


def _hits(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (log_p.argmax(dim=-1) == targets).float()


def _changed(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.argmax(dim=-1) != log_q.argmax(dim=-1)).float()


def path_coverage(hits: list[torch.Tensor], stopped: list[bool]) -> dict:
    """Path coverage of one base model over trajectories, per trajectory and pooled.

    hits[t] is 1.0 at each completion position of trajectory t where the base's greedy token is
    the trajectory's token (position_stats' covered/...); stopped[t] says its last position holds
    the token that stopped it (a stop id, or the token completing a stop string), left out: the
    paper's trajectories are text, which ends before the stop. `per_trajectory` is the paper's
    number, the mean over trajectories of each one's share; `pooled` is the share of all
    positions together, where a long trajectory weighs more. A trajectory left with no position
    counts in neither.

    >>> path_coverage([torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0] * 6 + [0.0])],
    ...               [True, True])
    {'per_trajectory': 0.75, 'pooled': 0.875, 'trajectories': 2, 'positions': 8}
    """
    counted = [h[:len(h) - 1] if stop else h for h, stop in zip(hits, stopped, strict=True)]
    counted = [h.double() for h in counted if h.numel()]
    if not counted:
        return {"per_trajectory": float("nan"), "pooled": float("nan"), "trajectories": 0,
                "positions": 0}
    return {"per_trajectory": float(torch.stack([h.mean() for h in counted]).mean()),
            "pooled": float(torch.cat(counted).mean()), "trajectories": len(counted),
            "positions": sum(h.numel() for h in counted)}


def smallest_share_holding(values: torch.Tensor, fraction: float) -> float:
    """The smallest share of positions whose values sum to at least `fraction` of the total.

    Values are per-position KL (>= 0). All zero: 0.0 (no shift to hold).

    >>> smallest_share_holding(torch.tensor([1.0, 6.0, 1.0, 2.0]), 0.5)
    0.25
    >>> smallest_share_holding(torch.tensor([1.0, 6.0, 1.0, 2.0]), 0.9)
    0.75
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = values.double().flatten().clamp(min=0)  # KL is >= 0; rounding can give -1e-9
    total = values.sum()
    if values.numel() == 0 or total == 0:
        return 0.0
    cumulative = values.sort(descending=True).values.cumsum(0)
    # 1e-12 slack: 0.9 * total can land a rounding error above an exactly equal cumulative sum
    needed = int((cumulative < fraction * total * (1 - 1e-12)).sum()) + 1
    return needed / values.numel()


def lexicon_counts(text: str, lexicons: dict[str, list[str]]) -> dict[str, int]:
    """Whole-word, case-insensitive occurrences of each lexicon's words (or phrases) in `text`.

    >>> lexicon_counts("But check it. Checking again: but", {"backtracking": ["but", "again"]})
    {'backtracking': 3}
    """
    counts = {}
    for name, words in lexicons.items():
        if not words:
            counts[name] = 0
            continue
        pattern = r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b"
        counts[name] = len(re.findall(pattern, text, flags=re.IGNORECASE))
    return counts


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation, or None with fewer than 3 points or a constant series."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} vs {len(y)} values")
    if len(x) < 3:
        return None
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    xs, ys = xs - xs.mean(), ys - ys.mean()
    denominator = (xs.norm() * ys.norm()).item()
    return None if denominator == 0 else float((xs @ ys).item() / denominator)
