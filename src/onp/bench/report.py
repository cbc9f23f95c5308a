"""``onp report``: the benchmark's JSON lines as Markdown and HTML tables and PNG plots."""

from __future__ import annotations

import csv
import html
import io
import math
import os
import shutil
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from onp import plots
from onp.bench.runner import read_results
from onp.errors import OnpError
from onp.utils.io import make_parents, remove_if_empty

METRICS = (("clean_acc", "ACC", max), ("asr", "ASR", min), ("ra", "RA", max), ("der", "DER", max))


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def model_label(row: dict[str, Any], width: str = " w") -> str:
    """The row's architecture in words: ``resnet18 w16`` (``width`` is the word before the width)."""
    m = row.get("model") if isinstance(row.get("model"), dict) else {"name": row.get("model") or ""}
    return str(m.get("name", "")) + (f"{width}{m['width']}" if m.get("width") else "")


def with_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its ``case``, what the tables' lines are: the attack's name, and the architecture's too
    where the rows hold several (``badnets (vgg16_bn w16)``; the most common architecture goes unnamed)."""
    counts = Counter(model_label(r) for r in rows)
    main = counts.most_common(1)[0][0] if counts else ""
    return [r | {"case": r["attack"]["name"] if model_label(r) == main
                 else f"{r['attack']['name']} ({model_label(r)})"} for r in rows]


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (case, defense): mean and std over seeds of each metric, plus the undefended model. A case is an
    attack, or an attack on an architecture (:func:`with_cases`)."""
    attacks = list(dict.fromkeys(plots.case_of(r) for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    table: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for a in attacks:
        for d in defenses:
            rs = [r for r in rows if plots.case_of(r) == a and r["defense"] == d]
            if rs:
                table.setdefault(a, {})[d] = {m: _mean_std([r.get(m) for r in rs]) for m, _, _ in METRICS} | \
                    {"wall_time": _mean_std([r["wall_time"] for r in rs]), "n": (len(rs), 0.0)}
    before = {}
    for a in attacks:
        rs = [r for r in rows if plots.case_of(r) == a]
        before[a] = {m: _mean_std([r["before"].get(m) for r in rs]) for m in ("clean_acc", "asr", "ra")}
    return {"attacks": attacks, "defenses": defenses, "table": table, "before": before,
            "labels": {a: attack_label(next(r for r in rows if plots.case_of(r) == a)) for a in attacks}}


def attack_label(row: dict[str, Any]) -> str:
    """The attack's name in the tables; SIG's with the amplitude its test images carry (its training amplitude
    and its test amplitude differ, and the test one sets the ASR)."""
    a = row["attack"]
    delta = (a.get("params") or {}).get("test_delta") if isinstance(a.get("params"), dict) else None
    if a["name"] == "sig" and isinstance(delta, (int, float)):
        return f"sig (test amplitude {round(255 * delta)}/255)" + plots.case_of(row)[len("sig"):]
    return plots.case_of(row)


def _best(values: list[float], better: Any) -> float | None:
    """The best value as printed (percent, two decimals), so that every cell that prints it is bold."""
    shown = [round(100 * v, 2) for v in values if not math.isnan(v)]
    return better(shown) if len(shown) > 1 else None  # a lone value is nobody's best


def _is(v: float, best: float | None) -> bool:
    return best is not None and not math.isnan(v) and round(100 * v, 2) == best


def _fmt(v: tuple[float, float], pct: bool = True, best: bool = False) -> str:
    m, s = v
    if math.isnan(m):
        return "-"
    scale = 100 if pct else 1
    text = f"{scale * m:.2f}" + (f" ± {scale * s:.2f}" if s else "")
    return f"**{text}**" if best else text


def metric_table(agg: dict[str, Any], metric: str, label: str, better: Any) -> list[list[str]]:
    """Rows: attacks; columns: no defense (where it applies), then each defense; best per row in bold."""
    header = ["attack"] + (["no defense"] if metric != "der" else []) + agg["defenses"]
    rows = [header]
    for a in agg["attacks"]:
        cells = agg["table"].get(a, {})
        vals = {d: cells[d][metric] for d in agg["defenses"] if d in cells}
        best = _best([v[0] for v in vals.values()], better)
        row = [agg["labels"].get(a, a)] + ([_fmt(agg["before"][a][metric])] if metric != "der" else [])
        row += [_fmt(vals[d], best=_is(vals[d][0], best)) if d in vals else "-" for d in agg["defenses"]]
        rows.append(row)
    mean_row = ["mean"] + ([_fmt((_mean_std([agg["before"][a][metric][0] for a in agg["attacks"]])[0], 0.0))]
                           if metric != "der" else [])
    # a defense's mean over fewer attacks than the others' is not comparable: it is marked and never bold
    covered = {d: [a for a in agg["attacks"] if d in agg["table"].get(a, {})] for d in agg["defenses"]}
    means = {d: _mean_std([agg["table"][a][d][metric][0] for a in covered[d]]) for d in agg["defenses"]}
    complete = [means[d][0] for d in agg["defenses"] if len(covered[d]) == len(agg["attacks"])]
    best = _best(complete, better)
    for d in agg["defenses"]:
        partial = len(covered[d]) < len(agg["attacks"])
        text = _fmt((means[d][0], 0.0), best=not partial and _is(means[d][0], best))
        mean_row.append(f"{text} ({len(covered[d])} of {len(agg['attacks'])})" if partial and covered[d] else text)
    rows.append(mean_row)
    return rows


def defense_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One defense's rows summed up: per case the mean over seeds of its ACC drop, ASR and DER, then the mean
    (and the worst) over cases, so each case weighs the same however many seeds it has."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(plots.case_of(r), []).append(r)
    drop = [statistics.fmean(r["before"]["clean_acc"] - r["clean_acc"] for r in v) for v in by_case.values()]
    asr = [statistics.fmean(r["asr"] for r in v) for v in by_case.values()]
    der_ = [statistics.fmean(r["der"] for r in v) for v in by_case.values()]
    times = [r["wall_time"] for r in rows]
    return {"cells": len(rows), "cases": len(by_case), "drop": statistics.fmean(drop), "worst_drop": max(drop),
            "asr": statistics.fmean(asr), "worst_asr": max(asr), "der": statistics.fmean(der_),
            "time": statistics.fmean(times), "longest": max(times)}


def summary_table(rows: list[dict[str, Any]], defenses: list[str]) -> list[list[str]]:
    """Per defense, over all its cells: mean and worst ACC drop and ASR, mean DER, mean and longest wall time.
    The mean ASR and drop are over attacks (each attack's mean over seeds), as in the per-attack tables."""
    out = [["defense", "cells", "attacks", "mean ACC drop", "worst ACC drop", "mean ASR", "worst ASR", "mean DER",
            "mean time (s)", "longest (s)"]]
    for d in defenses:
        m = defense_means([r for r in rows if r["defense"] == d])
        out.append([d, str(m["cells"]), str(m["cases"])]
                   + [f"{100 * m[k]:.2f}" for k in ("drop", "worst_drop", "asr", "worst_asr", "der")]
                   + [f"{m['time']:.0f}", f"{m['longest']:.0f}"])
    return out


# where two sets of results disagree on a defense: a difference of its mean beyond these (fractions)
DISAGREE = {"asr": 0.05, "drop": 0.01, "der": 0.05}


def common_cases(rows: list[dict[str, Any]], other: list[dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The rows of both sets on the (attack, architecture) pairs both hold, so that a comparison of two sets
    (development and evaluation) is not one of architectures; all rows when they share none. Also the words
    that say which."""
    def key(r: dict[str, Any]) -> tuple[str, str]:
        return r["attack"]["name"], model_label(r)

    shared = {key(r) for r in rows} & {key(r) for r in other}
    if not shared:
        return rows, other, "means over all cases, none being in both"
    left = len({key(r) for r in rows} - shared) + len({key(r) for r in other} - shared)
    words = f"means over the {len(shared)} cases both hold" + (f", {left} left out" if left else "")
    return [r for r in rows if key(r) in shared], [r for r in other if key(r) in shared], words


def shared_defenses(rows: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[str]:
    """The defenses with rows in both sets, in the order of ``rows``: what a comparison puts side by side."""
    others = {r["defense"] for r in other}
    return [d for d in dict.fromkeys(r["defense"] for r in rows) if d in others]


def compared_means(rows: list[dict[str, Any]], other: list[dict[str, Any]]
                   ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Each shared defense's means (:func:`defense_means`) in ``rows`` and in ``other``: what the comparison
    table and its plot both show, computed once."""
    both = shared_defenses(rows, other)

    def means(rs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {d: defense_means([r for r in rs if r["defense"] == d]) for d in both}

    return means(rows), means(other)


def comparison_table(mine: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]], here: str, there: str
                     ) -> list[list[str]]:
    """Per defense of :func:`compared_means`: mean ASR, mean ACC drop and mean DER in each set, their difference,
    and which of the three differ by more than :data:`DISAGREE` (the project's ACC-drop target is one point)."""
    out = [["defense"] + [f"{label} {where}" for label in ("mean ASR", "mean ACC drop", "mean DER")
                          for where in (here, there, "difference")] + ["disagree on"]]
    for d, a in mine.items():
        b = theirs[d]
        cells, differ = [], []
        for k, label in (("asr", "ASR"), ("drop", "ACC drop"), ("der", "DER")):
            diff = a[k] - b[k]
            cells += [f"{100 * a[k]:.2f}", f"{100 * b[k]:.2f}", f"{100 * diff:+.2f}"]
            if abs(diff) > DISAGREE[k]:
                differ.append(f"{label} {100 * diff:+.2f}")
        out.append([d] + cells + ["; ".join(differ) or "-"])
    return out


def runtime_table(agg: dict[str, Any]) -> list[list[str]]:
    """Mean defense wall time per attack and over the attacks, and ONP's time as a ratio to ANP's and RNP's on the
    same models."""
    ds = agg["defenses"]
    bases = [b for b in ("anp", "rnp") if "onp" in ds and b in ds]
    rows: list[list[str]] = [["attack"] + ds + [f"onp/{b}" for b in bases]]
    per_case = []
    for a in agg["attacks"]:
        cells = agg["table"].get(a, {})
        t = {d: cells[d]["wall_time"][0] for d in ds if d in cells}
        per_case.append(t)
        rows.append([agg["labels"].get(a, a)] + [f"{t[d]:.0f}" if d in t else "-" for d in ds]
                    + [f"{t['onp'] / t[b]:.2f}" if "onp" in t and b in t and t[b] else "-" for b in bases])
    if len(per_case) > 1:  # each defense's mean over the attacks it ran; ONP's ratios over those both ran
        means = [[t[d] for t in per_case if d in t] for d in ds]
        ratios = []
        for b in bases:
            both = [t for t in per_case if "onp" in t and b in t]
            den = sum(t[b] for t in both)
            ratios.append(f"{sum(t['onp'] for t in both) / den:.2f}" if both and den else "-")
        rows.append(["mean over attacks"] + [f"{statistics.fmean(m):.0f}" if m else "-" for m in means] + ratios)
    return rows


CHECK_KEYS = {"claim", "defense", "attack", "metric", "below", "above", "evidence"}


def load_checks(path: str | Path) -> list[dict[str, Any]]:
    """Published behaviour to hold the rows against, from a YAML file with a ``checks:`` list. Each entry has a
    ``claim`` (the sentence to print) and either a measured bar (``defense``, ``attack``, ``metric`` among ACC's,
    ASR's, RA's and DER's keys, and ``below`` or ``above`` as a fraction) or ``evidence`` (where else it is
    shown, e.g. a test)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise OnpError(f"cannot read checks {path}: {e}") from e
    checks = data.get("checks") if isinstance(data, dict) else None
    if not isinstance(checks, list) or not checks:
        raise OnpError(f"{path}: expected a non-empty 'checks:' list")
    metrics = [m for m, _, _ in METRICS]
    for i, c in enumerate(checks):
        where = f"{path}: check {i + 1}"
        if not isinstance(c, dict) or not isinstance(c.get("claim"), str):
            raise OnpError(f"{where}: needs a 'claim' sentence")
        if unknown := set(c) - CHECK_KEYS:
            raise OnpError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(CHECK_KEYS))})")
        if "evidence" in c:
            continue
        if not all(isinstance(c.get(k), str) for k in ("defense", "attack", "metric")) or c["metric"] not in metrics:
            raise OnpError(f"{where}: needs 'defense', 'attack' and 'metric' (one of {', '.join(metrics)})")
        if ("below" in c) == ("above" in c) or not isinstance(c.get("below", c.get("above")), (int, float)):
            raise OnpError(f"{where}: needs one number, 'below' or 'above' (a fraction, e.g. 0.05)")
    return checks


def checks_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> list[list[str]]:
    """One line per check: the claim, the value measured at each seed, and whether every seed holds it."""
    out = [["claim", "measured (%)", "holds"]]
    for c in checks:
        if "evidence" in c:
            out.append([c["claim"], c["evidence"], "see there"])
            continue
        rs = sorted((r for r in rows if r["defense"] == c["defense"] and plots.case_of(r) == c["attack"]),
                    key=lambda r: r["seed"])
        if not rs:
            out.append([c["claim"], "not run", "-"])
            continue
        bar = c.get("below", c.get("above"))
        ok = [r[c["metric"]] < bar if "below" in c else r[c["metric"]] > bar for r in rs]
        measured = ", ".join(f"seed {r['seed']}: {100 * r[c['metric']]:.2f}" for r in rs)
        verdict = "yes" if all(ok) else "no" if not any(ok) else f"at {sum(ok)} of {len(ok)} seeds"
        out.append([c["claim"], measured, verdict])
    return out


LEADERBOARD = ("dataset", "model", "attack", "poisoning_ratio", "defense", "seed", "C-Acc", "ASR", "R-Acc", "DER")


def leaderboard_csv(rows: list[dict[str, Any]]) -> str:
    """One line per cell in the columns of BackdoorBench's leaderboard (clean accuracy, attack success rate,
    robust accuracy and DER, in %), so the rows can be set beside its published ones."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(LEADERBOARD)
    for r in rows:
        w.writerow([r.get("dataset", ""), model_label(r, " width "), r["attack"]["name"],
                    r["attack"].get("poison_rate", ""), r["defense"], r["seed"],
                    *(f"{100 * r[k]:.2f}" for k in ("clean_acc", "asr", "ra", "der"))])
    return buf.getvalue()


# keyed by the plot's kind; its file is ``<report name>_<kind>.png``, so reports can share one folder
CAPTIONS = {
    "asr_vs_acc.png": "Every cell: clean accuracy against attack success after each defense (x: no defense).",
    "asr_bars.png": "Attack success per attack and defense, mean over seeds (bars: std, clipped at 0).",
    "clean_acc_bars.png": "Clean accuracy per attack and defense, mean over seeds (bars: std).",
    "search_curves.png": "The objective J of each set ONP and its comparators scored, against neurons pruned.",
    "pruning_curves.png": "Test ACC (solid) and ASR (dashed) along each pruning defense's ranking; the dot is the "
                          "set it chose.",
    "comparison.png": "Each defense's mean ACC drop and mean ASR in the compared results (hollow) and here (filled), "
                      "over the cases both hold.",
}


def _md(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html(rows: list[list[str]]) -> str:
    def cell(c: str, tag: str) -> str:
        if c.startswith("**"):
            return f"<{tag}><b>{html.escape(c.strip('*'))}</b></{tag}>"
        return f"<{tag}>{html.escape(c)}</{tag}>"

    head = "".join(cell(c, "th") for c in rows[0])
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_NUMBERS = ("clean_acc", "asr", "ra", "der", "wall_time")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


SOURCES = {"train": "the training set the models trained on (the defense papers' convention)",
           "pool": "a pool of training images every model left out of its training (a practitioner's case)"}


def _row_problem(r: Any) -> str | None:
    """What makes ``r`` unreadable as a finished benchmark row, or None."""
    if not isinstance(r, dict):
        return f"a {type(r).__name__}, not an object"
    if not isinstance(r.get("attack"), dict) or not isinstance(r["attack"].get("name"), str):
        return "no attack name"
    for key, kind in (("defense", str), ("model_id", str), ("seed", int)):
        if not isinstance(r.get(key), kind):
            return f"no {key}"
    bad = [k for k in _NUMBERS if not _number(r.get(k))]
    if bad:
        return f"{bad[0]} is not a number"
    before = r.get("before")
    if not isinstance(before, dict) or not all(_number(before.get(k)) for k in ("clean_acc", "asr")):
        return "no numbers before the defense"
    if r.get("clean_source", "train") not in SOURCES:
        return f"clean_source is not one of {', '.join(SOURCES)}"
    for key in ("selection_curve", "pruning_curve"):
        curve = r.get(key)
        if curve is not None and not (isinstance(curve, list) and all(isinstance(p, dict) for p in curve)):
            return f"{key} is not a list of points"
    return None


def read_report_rows(results: str | Path) -> list[dict[str, Any]]:
    """The finished rows of a results file, which is untrusted input: anything malformed is one error line."""
    path = Path(results)
    if not path.is_file():
        raise OnpError(f"no results file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise OnpError(f"cannot read {path} as JSON lines: {e}") from None
    if "\x00" in text:
        raise OnpError(f"{path} is a binary file, not JSON lines of benchmark rows")
    rows = []
    for i, r in enumerate(read_results(path), 1):
        if isinstance(r, dict) and r.get("asr") is None and "asr" in r:
            continue  # a cell recorded as failed
        problem = _row_problem(r)
        if problem:
            raise OnpError(f"{path}: row {i} is not a benchmark row ({problem})")
        rows.append(r)
    return rows


def report_name(title: str | None, rows: list[dict[str, Any]]) -> str:
    """The reports' file name: ``--title`` must be a plain name; a name from the rows (untrusted) is made one,
    so that the outputs stay inside ``--out``."""
    if title is not None:
        if not title or title in (".", "..") or any(c in title for c in "/\\\x00") or title.startswith("."):
            raise OnpError(f"--title {title!r} must be a plain file name (no folders, not hidden)")
        return title
    name = str(rows[0].get("bench") or "results")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name.replace("\\", "/")).name)
    return safe.lstrip(".") or "results"


def clean_source_sentence(rows: list[dict[str, Any]]) -> str:
    """Where the defenses' clean images came from, in one sentence (rows made before the choice existed drew
    from the training set)."""
    sizes = sorted({r.get("defense_size") for r in rows if r.get("defense_size")})
    count = Counter(r.get("clean_source", "train") for r in rows)
    n = "/".join(str(s) for s in sizes) or "the"
    if len(count) == 1:
        return f"Each defense drew its {n} clean images from {SOURCES[next(iter(count))]}."
    parts = "; ".join(f"{c} cells from {SOURCES[k]}" for k, c in sorted(count.items()))
    return f"The defenses drew their {n} clean images from two sources: {parts}."


def _bench_name(rows: list[dict[str, Any]], fallback: str) -> str:
    return str(rows[0].get("bench") or fallback)


def write_report(results: str | Path, out: str | Path, title: str | None = None, command: str | None = None,
                 checks: str | Path | None = None, compare: str | Path | None = None) -> Path:
    """Write ``<name>.md``, ``<name>.html``, ``<name>.csv`` and ``<name>_*.png`` plots for the rows in
    ``results`` into ``out``; with ``checks`` (see :func:`load_checks`), a section holding the rows against
    published behaviour; with ``compare`` (another results file, e.g. the development set's), where the two
    disagree per defense on the cases both hold."""
    rows = with_cases(read_report_rows(results))
    if not rows:
        raise OnpError(f"{results} holds no finished benchmark rows")
    claims = load_checks(checks) if checks else None
    other = with_cases(read_report_rows(compare)) if compare else None
    if other == []:
        raise OnpError(f"{compare} holds no finished benchmark rows to compare with")
    out = Path(out)
    name = report_name(title, rows)
    if out.exists() and not out.is_dir():
        raise OnpError(f"--out {out} is an existing file, not a folder")
    agg = aggregate(rows)
    seeds = sorted({r["seed"] for r in rows})
    sections: list[tuple[str, list[list[str]]]] = [
        ("Summary per defense (%, means over attacks; worst: the worst attack's mean over seeds)",
         summary_table(rows, agg["defenses"]))]
    sections += [(f"{label} (%) per attack and defense, mean ± std over seeds", metric_table(agg, m, label, better))
                 for m, label, better in METRICS]
    sections.append(("Defense wall time (s), mean over seeds", runtime_table(agg)))
    if claims:
        sections.append(("Checks against published behaviour", checks_table(rows, claims)))
    here, there = _bench_name(rows, "these rows"), _bench_name(other or [{}], "the other rows")
    if there == here:
        here, there = "here", "compared"
    if other:
        mine, theirs, over = common_cases(rows, other)
        here_means, there_means = compared_means(mine, theirs)  # not every defense: one may hold only cases left out
        sections.append((f"{here} against {there}, per defense (%, {over}; disagreeing: a difference beyond "
                         f"{100 * DISAGREE['asr']:.0f} points of ASR or DER or {100 * DISAGREE['drop']:.0f} "
                         "of ACC drop)", comparison_table(here_means, there_means, here, there)))
    created = make_parents(out / "report")
    # written beside ``out`` first, then moved in file by file: ``out`` may also hold the results themselves
    done = False
    tmp = out / ".report.none"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".report.", dir=out))
        def png(kind: str) -> Path:
            return tmp / f"{name}_{kind}"

        plots.plot_asr_vs_acc(rows, png("asr_vs_acc.png"))
        for m, label in (("asr", "ASR"), ("clean_acc", "ACC")):
            tab = {a: {d: agg["table"][a][d][m] for d in agg["table"][a]} for a in agg["attacks"]}
            plots.plot_bars(tab, agg["attacks"], agg["defenses"], label, png(f"{m}_bars.png"))
        # the search curves of ONP and its comparators (each point a set scored by the objective J)
        onp_rows = [r for r in rows if r.get("selection_curve") and "value" in r["selection_curve"][0]]
        if onp_rows:
            plots.plot_search_curves(onp_rows, png("search_curves.png"))
        plots.plot_pruning_curves(rows, png("pruning_curves.png"))
        if other:
            plots.plot_comparison({here: here_means, there: there_means}, here, there, png("comparison.png"))
        images = [(p.name, CAPTIONS[p.name.removeprefix(f"{name}_")]) for p in sorted(tmp.glob("*.png"))]
        intro = [f"# {name}", "",
                 f"{len(rows)} cells: {len(agg['attacks'])} attacks x {len(agg['defenses'])} defenses, seeds "
                 f"{seeds}. Best per row in bold (highest ACC, RA, DER; lowest ASR). ACC, ASR and RA are measured "
                 "on the test set after each defense finished; DER = (max(0, dASR) - max(0, dACC) + 1) / 2. "
                 + clean_source_sentence(rows)]
        if command:
            intro += ["", f"Made by: `{command}`"]
        md = intro + [""]
        for head, tab in sections:
            md += [f"## {head}", "", _md(tab), ""]
        md += ["## Plots", ""]
        for i, caption in images:
            md += [f"![{caption}]({quote(i)})", "", f"*{caption}*", ""]  # a --title may hold spaces
        (tmp / f"{name}.md").write_text("\n".join(md))
        (tmp / f"{name}.csv").write_text(leaderboard_csv(rows))
        body = "".join(f"<h2>{html.escape(h)}</h2>{_html(t)}" for h, t in sections)
        body += "".join(f'<figure><img src="{html.escape(quote(i))}" alt="{html.escape(c)}" '
                        f'style="max-width:100%"><figcaption>{html.escape(c)}</figcaption></figure>'
                        for i, c in images)
        cmd = f"<p>Made by: <code>{html.escape(command)}</code></p>" if command else ""
        (tmp / f"{name}.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(name)}</h1><p>{html.escape(intro[2])}</p>{cmd}{body}</body></html>")
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            remove_if_empty(created)
    return out
