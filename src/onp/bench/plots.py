"""Plots a person would rather look at than read: reward curves, pruning curves, ASR against ACC."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reward_curve(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """ONP's policy search: mean and best reward, clean accuracy and probe rate of the sampled episodes."""
    plt = _plt()
    x = [h["update"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(x, [h["reward/mean"] for h in history], label="mean episode return")
    a.plot(x, [h["reward/best"] for h in history], label="best return so far")
    a.set_xlabel("policy update")
    a.set_ylabel("return (R(S) - R(empty))")
    a.legend(fontsize=8)
    b.plot(x, [100 * h["episode/clean_acc"] for h in history], label="clean acc (%)")
    b.plot(x, [100 * h["episode/probe_rate"] for h in history], label="probe rate (%)")
    b.plot(x, [100 * h["episode/pruned_fraction"] for h in history], label="pruned (%)")
    b.set_xlabel("policy update")
    b.legend(fontsize=8)
    fig.suptitle(f"{title} reward curve".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
