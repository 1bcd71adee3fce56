"""Figures drawn from result.json (matplotlib, headless)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def heatmap_figure(result: dict):
    """The accuracy matrix (initial row on top) as an annotated heatmap, in %."""
    R = np.asarray(result["accuracy_matrix"], dtype=float) * 100
    b = np.asarray(result["initial_accuracy"], dtype=float) * 100
    M = np.vstack([b[None], R])
    n_rows, n_cols = M.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_cols, 1.0 + 0.55 * n_rows), dpi=110)
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(j, i, f"{M[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if M[i, j] < 60 else "black")
    ax.set_xticks(range(n_cols), [f"T{j}" for j in range(n_cols)])
    ax.set_yticks(range(n_rows), ["init"] + [f"after {i}" for i in range(n_rows - 1)])
    ax.set_xlabel("evaluation task")
    ax.set_ylabel("training experience")
    cfg = result.get("config", {})
    title = f"{cfg.get('benchmark', {}).get('name', '')} / {cfg.get('strategy', {}).get('name', '')}"
    ax.set_title(f"Accuracy matrix (%) {title} seed {result.get('seed', '')}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
