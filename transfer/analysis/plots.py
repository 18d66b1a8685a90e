"""PNG plots of `python -m transfer.analysis.analyze` (matplotlib, Agg backend: no display needed).

distributions.png: |Delta R| at the taken token, KL(S_RL || S) per position, how few positions
hold the KL, and the RAST distribution's KL; heat_strip.png: one trajectory's tokens coloured
by KL with the most shifted ones outlined; cosine.png: per-position cross-scale cosine and,
with an evaluation file, per-problem cosine against per-problem RAST gain.
"""

import math
from pathlib import Path

import torch

HEAT_WINDOW = 240  # positions shown in the heat strip, around the most shifted one
HEAT_ROW = 40  # tokens per row of the strip
HIGHLIGHTED = 5  # most shifted positions outlined


def plot_all(summary: dict, config, tokenizer, trajectories, stats, output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    paths = [distributions(stats, output_dir / "distributions.png"),
             heat_strip(config, tokenizer, trajectories, stats, output_dir / "heat_strip.png")]
    if summary["cross_scale"]:
        paths.append(cosine(summary, stats, output_dir / "cosine.png"))
    return paths


def _pooled(stats, key: str):
    return torch.cat([s[key] for s in stats]).double().numpy()


def distributions(stats, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({key.split("/")[1] for key in stats[0] if key.startswith("kl_rl_base/")})
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for i in pairs:
        delta, kl = np.abs(_pooled(stats, f"delta_token/{i}")), _pooled(stats, f"kl_rl_base/{i}")
        axes[0, 0].hist(delta, bins=50, alpha=0.6, label=f"S{i}", log=True)
        axes[0, 1].hist(kl, bins=50, alpha=0.6, label=f"S{i}", log=True)
        ordered = np.sort(kl)[::-1]
        share_kl = np.cumsum(ordered) / max(ordered.sum(), 1e-30)
        share_positions = np.arange(1, len(kl) + 1) / len(kl)
        axes[1, 0].plot(share_positions, share_kl, label=f"S{i}")
    axes[0, 0].set(title="|Delta R| at the trajectory token", xlabel="|log p_RL - log p_base|",
                   ylabel="positions")
    axes[0, 1].set(title="KL(S_RL || S) per position", xlabel="nats", ylabel="positions")
    axes[1, 0].plot(share_positions, share_positions, color="gray", linestyle=":", label="uniform")
    for level in (0.5, 0.9):
        axes[1, 0].axhline(level, color="gray", linewidth=0.6)
    axes[1, 0].set(title="How few positions hold the shift", xlabel="share of positions (most "
                   "shifted first)", ylabel="share of total KL", xscale="log")
    for key, label in (("kl_rast_large", "KL(RAST || L)"), ("kl_rast_rl", "KL(RAST || S0_RL)"),
                       ("kl_rast_large_rl", "KL(RAST || L_RL)")):
        if key in stats[0]:
            axes[1, 1].hist(_pooled(stats, key), bins=50, alpha=0.6, label=label, log=True)
    axes[1, 1].set(title="RAST distribution per position", xlabel="nats", ylabel="positions")
    for ax in axes.flat:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shown(token: str) -> str:
    token = token.replace("\n", "\u23ce").replace(" ", "\u2423")
    return token if len(token) <= 6 else token[:5] + "\u2026"


def heat_strip(config, tokenizer, trajectories, stats, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    key = "kl_rl_base/0"
    index = config.example if 0 <= config.example < len(stats) else _most_shifted(
        trajectories, [float(s[key].sum()) for s in stats])
    values = stats[index][key].double().numpy()
    start = max(0, min(int(values.argmax()) - HEAT_WINDOW // 2, len(values) - HEAT_WINDOW))
    values = values[start:start + HEAT_WINDOW]
    token_ids = trajectories[index].token_ids[start:start + HEAT_WINDOW]
    # the top positions, but not near-zero ones when fewer than HIGHLIGHTED positions moved
    highlighted = {k for k in np.argsort(values)[::-1][:HIGHLIGHTED].tolist()
                   if values[k] >= 0.1 * values.max()}
    rows = math.ceil(len(values) / HEAT_ROW)
    columns = min(HEAT_ROW, len(values))
    grid = np.full(rows * columns, np.nan)
    grid[:len(values)] = values
    fig, ax = plt.subplots(figsize=(0.34 * columns + 2, 0.5 * rows + 1.6))
    image = ax.imshow(grid.reshape(rows, columns), cmap="Reds", aspect="auto", vmin=0)
    dark = 0.6 * max(float(values.max()), 1e-12)
    for k, token_id in enumerate(token_ids):
        row, column = divmod(k, columns)
        ax.text(column, row, _shown(tokenizer.decode([token_id])), ha="center", va="center",
                fontsize=7, fontweight="bold" if k in highlighted else "normal",
                color="white" if values[k] > dark else "black")
        if k in highlighted:
            ax.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="blue",
                                   linewidth=1.5))
    trajectory = trajectories[index]
    ax.set_title(f"{trajectory.problem_id} sample {trajectory.sample_index}: KL(S0_RL || S0) per "
                 f"token (positions {start}..{start + len(values) - 1}; most shifted "
                 f"outlined)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, label="nats", fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _most_shifted(trajectories, totals: list[float]) -> int:
    """The trajectory with the largest total KL, among the correct ones when grades exist (a
    typical solution reads better than the most degenerate ramble)."""
    correct = [i for i, t in enumerate(trajectories) if t.correct]
    candidates = correct or range(len(trajectories))
    return max(candidates, key=lambda i: totals[i])


def cosine(summary: dict, stats, path: Path) -> Path:
    import matplotlib.pyplot as plt

    gain = summary.get("gain", {})
    scatter = "correlation" in gain
    fig, axes = plt.subplots(1, 2 if scatter else 1, figsize=(11 if scatter else 6, 4),
                             squeeze=False)
    for label, series in summary["cross_scale"].items():
        weighted = series["kl_weighted"]
        axes[0, 0].hist(_pooled(stats, series["key"]), bins=50, range=(-1, 1), alpha=0.6,
                        label=f"{label} (mean {series['mean']:.3f}, KL-weighted "
                              f"{'n/a' if weighted is None else f'{weighted:.3f}'})", log=True)
        if scatter:  # KL-weighted per-problem cosine: see analyze_report._cross_scale
            values = series["per_problem_kl_weighted"]
            shared = [pid for pid in values if pid in gain["per_problem"]]
            r = gain["correlation"][label]["pearson_kl_weighted"]
            axes[0, 1].scatter([values[p] for p in shared],
                               [gain["per_problem"][p] for p in shared], s=12, alpha=0.7,
                               label=f"{label} (r = {'n/a' if r is None else f'{r:.3f}'})")
    axes[0, 0].set(title="Cross-scale cosine of Delta R per position", xlabel="cosine",
                   ylabel="positions")
    axes[0, 0].legend(fontsize="small")
    if scatter:
        axes[0, 1].set(title="Per-problem cosine vs RAST gain", xlabel="KL-weighted cosine",
                       ylabel=f"acc {gain['rast']} - acc {gain['baseline']}")
        axes[0, 1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
