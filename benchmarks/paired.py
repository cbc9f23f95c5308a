"""Paired comparison of one defense with others on the cells both have (same model, same defense seed): means of
ASR, ACC drop and DER, how many cells each wins on DER, and how sure the DER difference is, by a bootstrap that
resamples attacks (both seeds of an attack together, since they share a model), seeded.

Usage: python benchmarks/paired.py RESULTS.jsonl [--base onp] [--against onp_nognn onp_norl ...]
Prints a Markdown table (ASR and drop in %, DER in points, time in seconds)."""

from __future__ import annotations

import argparse
import json
import random
import statistics as st
from pathlib import Path


def load(path: Path) -> dict[tuple[str, str, int], dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["defense"], r["attack"]["name"], r["seed"]): r for r in rows if r.get("asr") is not None}


def m(rs: list[dict], f) -> float:
    return st.fmean(f(r) for r in rs)


def asr(r: dict) -> float:
    return 100 * r["asr"]


def drop(r: dict) -> float:
    return 100 * (r["before"]["clean_acc"] - r["clean_acc"])


def der(r: dict) -> float:
    return 100 * r["der"]


def bootstrap(diff: dict[str, list[float]], draws: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean difference, resampling the attacks with replacement."""
    attacks, g = sorted(diff), random.Random(seed)
    means = sorted(st.fmean([x for a in (g.choice(attacks) for _ in attacks) for x in diff[a]])
                   for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--base", default="onp")
    p.add_argument("--against", nargs="+", default=["onp_nognn", "onp_norl", "onp_greedy", "onp_mask"])
    args = p.parse_args()
    by = load(args.results)
    b = args.base
    print(f"| defense | cells | ASR: {b} / it | drop: {b} / it | DER: {b} / it | ASR <= 5%: {b} / it | it wins DER "
          f"| {b} - it, DER: median | 95% interval | time (s): {b} / it |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in args.against:
        keys = sorted((a, s) for (dd, a, s) in by if dd == d and (b, a, s) in by)
        if not keys:
            print(f"| {d} | 0 | | | | | | | | |")
            continue
        o, c = [by[(b, a, s)] for a, s in keys], [by[(d, a, s)] for a, s in keys]
        wins = sum(y["der"] > x["der"] for x, y in zip(o, c))
        ties = sum(y["der"] == x["der"] for x, y in zip(o, c))
        diff: dict[str, list[float]] = {}
        for (a, _), x, y in zip(keys, o, c):
            diff.setdefault(a, []).append(der(x) - der(y))
        flat = [v for vs in diff.values() for v in vs]
        lo, hi = bootstrap(diff) if len(diff) > 1 else (float("nan"), float("nan"))
        print(f"| {d} | {len(keys)} | {m(o, asr):.2f} / {m(c, asr):.2f} | {m(o, drop):.2f} / {m(c, drop):.2f} | "
              f"{m(o, der):.2f} / {m(c, der):.2f} | {sum(r['asr'] <= 0.05 for r in o)} / "
              f"{sum(r['asr'] <= 0.05 for r in c)} | {wins}{f' ({ties} tied)' if ties else ''} | "
              f"{st.median(flat):.2f} | [{lo:.2f}, {hi:.2f}] | {m(o, lambda r: r['wall_time']):.0f} / "
              f"{m(c, lambda r: r['wall_time']):.0f} |")


if __name__ == "__main__":
    main()
