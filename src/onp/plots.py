"""Plots a person would rather look at than read: search curves, pruning curves, ASR against ACC."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _plt():  # noqa: ANN202 - matplotlib takes a while to import, and only the plots need it
    """matplotlib's pyplot, or None when it is not installed (``pip install onp[plot]``): the plots are skipped and
    the tables, CSV and JSON are written without them."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'onp[plot]'): plots skipped")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search_curve(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """ONP's search, step by step: the objective J, and the fit-set accuracy and the triggers' weighted success
    (the adversary) of each set it scored, against the neurons pruned."""
    plt = _plt()
    if plt is None:
        return
    x = [h["pruned"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(x, [h["value"] for h in history], marker=".", label="J")
    a.set_xlabel("neurons pruned")
    a.set_ylabel("objective J")
    b.plot(x, [100 * h["clean_acc"] for h in history], label="clean acc, fit images (%)")
    b.plot(x, [100 * h["adversary"] for h in history], label="re-fitted triggers' success (%)")
    b.set_xlabel("neurons pruned")
    b.legend(fontsize=8)
    fig.suptitle(f"{title} search curve".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _by(rows: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r[key]), []).append(r)
    return out


def case_of(row: dict[str, Any]) -> str:
    """The line a benchmark row belongs to: its ``case`` when the report named one, else its attack."""
    return row.get("case") or row["attack"]["name"]


def _save_with_legend_beside(fig: Any, axes: Any, path: str | Path) -> None:
    """Save a figure of panels with one legend to their right: every label once, whichever panel it is in."""
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    fig.tight_layout()
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_asr_vs_acc(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Every cell as a point (clean accuracy, attack success), one marker per defense; the corner at high ACC
    and low ASR is where a defense should land."""
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^vP*XhH<>"
    for i, (name, rs) in enumerate(sorted(_by(rows, "defense").items())):
        ax.scatter([100 * r["clean_acc"] for r in rs], [100 * r["asr"] for r in rs], label=name,
                   marker=markers[i % len(markers)], alpha=0.8)
    before = {r["model_id"]: r["before"] for r in rows}
    ax.scatter([100 * b["clean_acc"] for b in before.values()], [100 * b["asr"] for b in before.values()],
               label="no defense", marker="x", color="black")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("attack success rate (%)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(table: dict[str, dict[str, tuple[float, float]]], attacks: list[str], defenses: list[str],
              metric: str, path: str | Path) -> None:
    """Grouped bars: ``metric`` (mean with std error bars over seeds) per attack, one bar per defense."""
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(attacks) + 2), 3.8))
    width = 0.8 / max(len(defenses), 1)
    for j, d in enumerate(defenses):
        xs = [i + j * width for i in range(len(attacks))]
        vals = [table.get(a, {}).get(d, (float("nan"), 0.0)) for a in attacks]
        means = [100 * v[0] for v in vals]
        # a rate is never below 0%: the lower bar stops there
        low = [min(100 * v[1], m) if m == m else 0.0 for v, m in zip(vals, means)]
        color = plt.get_cmap("tab20" if len(defenses) > 10 else "tab10")(j)  # no two defenses share a color
        ax.bar(xs, means, width, yerr=[low, [100 * v[1] for v in vals]], label=d, capsize=2, color=color)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(attacks))], attacks, rotation=20)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside the bars, not over them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_search_curves(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The objective J of each set the search scored against the neurons pruned: one panel per defense that
    searches (ONP and its comparators), one color per attack, one line style per seed."""
    plt = _plt()
    if plt is None:
        return
    by_defense = _by([r for r in rows if r.get("selection_curve")], "defense")
    if not by_defense:
        return
    attacks = list(dict.fromkeys(case_of(r) for rs in by_defense.values() for r in rs))
    seeds = sorted({r["seed"] for rs in by_defense.values() for r in rs})
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(by_defense), figsize=(5 * len(by_defense), 3.6), squeeze=False, sharey=True)
    for ax, (d, rs) in zip(axes.flat, by_defense.items()):
        for r in rs:
            curve = r["selection_curve"]
            ax.plot([h["pruned"] for h in curve], [h["value"] for h in curve], alpha=0.85,
                    color=f"C{attacks.index(case_of(r)) % 10}",
                    linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                    label=f"{case_of(r)} s{r['seed']}")
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("neurons pruned", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("objective J", fontsize=8)
    _save_with_legend_beside(fig, axes, path)
    plt.close(fig)


def plot_pruning_curves(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Test ACC (solid) and ASR (dashed) against neurons pruned, one panel per attack, one color per defense."""
    plt = _plt()
    if plt is None:
        return
    by_attack = _by([r for r in rows if r.get("pruning_curve")], "model_id")
    if not by_attack:
        return
    n = len(by_attack)
    cols = min(4, n)
    rws = (n + cols - 1) // cols
    fig, axes = plt.subplots(rws, cols, figsize=(3.4 * cols, 2.8 * rws), squeeze=False)
    colors = {}
    for ax, (mid, rs) in zip(axes.flat, sorted(by_attack.items())):
        for r in rs:
            if r["seed"] != min(x["seed"] for x in rs):
                continue
            c = colors.setdefault(r["defense"], f"C{len(colors) % 10}")
            pts = r["pruning_curve"]
            ax.plot([p["pruned"] for p in pts], [100 * p["clean_acc"] for p in pts], color=c, label=r["defense"])
            ax.plot([p["pruned"] for p in pts], [100 * p["asr"] for p in pts], color=c, linestyle="--")
            chosen = (r.get("chosen") or {}).get("pruned")
            at = [p for p in pts if p["pruned"] == chosen]
            if at:  # the set the defense chose, on both curves
                ax.scatter([chosen] * 2, [100 * at[0]["clean_acc"], 100 * at[0]["asr"]], color=c, s=18, zorder=3)
        ax.set_title(case_of(rs[0]), fontsize=9)
        ax.set_xlabel("neurons pruned", fontsize=8)
        ax.set_ylabel("test ACC / ASR (%)", fontsize=8)
        # the backdoor neurons sit in the first tens; a linear axis up to 30% of the network squeezes them
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("test ACC (solid) and ASR (dashed) against neurons pruned, first seed", fontsize=9)
    _save_with_legend_beside(fig, axes, path)
    plt.close(fig)


def plot_comparison(means: dict[str, dict[str, dict[str, float]]], here: str, there: str, path: str | Path) -> None:
    """Each defense as an arrow from its place in ``there``'s results (hollow) to its place in ``here``'s
    (filled), mean ACC drop against mean ASR: long arrows are the defenses the two sets disagree on."""
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    palette = plt.get_cmap("tab20")  # more defenses than ten, each its own color
    for i, d in enumerate(means[here]):
        a, b = means[here][d], means[there][d]
        c = palette(i % 20)
        ax.annotate("", xy=(100 * a["drop"], 100 * a["asr"]), xytext=(100 * b["drop"], 100 * b["asr"]),
                    arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.7})
        ax.scatter([100 * b["drop"]], [100 * b["asr"]], facecolors="none", edgecolors=c, s=30)
        ax.scatter([100 * a["drop"]], [100 * a["asr"]], color=c, s=30, label=d)
        ax.annotate(d, (100 * a["drop"], 100 * a["asr"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean ACC drop (points)")
    ax.set_ylabel("mean ASR (%)")
    ax.set_title(f"{there} (hollow) to {here} (filled)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
