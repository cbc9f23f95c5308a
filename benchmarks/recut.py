"""Re-cut benchmark rows at another stop tolerance and measure the result on the test set: a what-if for the
stopping rule, from the rows alone (their ``selection_curve`` and ``ranking_head``), without re-running the defense.

    .venv/bin/python benchmarks/recut.py docs/results/cifar10_cpu.jsonl --only '*/onp-s1-*' --tolerance 0.02 0.01

For each row of ONP or an ablation that carries both fields (the stops of the other defenses have no tolerance)
and each tolerance, the stop (:func:`onp.defenses.pruning.choose_prefix`) is applied to the row's clean-set curve,
the first ``k`` neurons of its ranking are pruned from the attacked model, and ACC/ASR are measured on the whole
test set. At the defense's own tolerance this reproduces the row (printed above it, as a check). The test set
decides nothing here: this studies a rule, it is not a defense.
"""

from __future__ import annotations

import argparse
import fnmatch

import torch

from onp.artifacts import load_attack, load_model
from onp.bench.runner import read_results
from onp.data import create_dataset
from onp.defenses.pruning import choose_prefix, prefix_mask, prune_copy
from onp.evaluate import evaluate
from onp.graph import find_neurons
from onp.utils.runtime import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="a benchmark results file (JSON lines)")
    p.add_argument("--only", action="append", metavar="GLOB",
                   help="rows whose id matches, as `onp bench --only` (repeatable)")
    p.add_argument("--tolerance", type=float, nargs="+", default=[0.02, 0.01])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    device = torch.device("cpu")
    rows = [r for r in read_results(args.results)
            if r.get("ranking_head") and r.get("selection_curve") and "objective" in r["selection_curve"][0]
            and (not args.only or any(fnmatch.fnmatchcase(r["id"], g) for g in args.only))]
    if not rows:
        p.error(f"no ONP row of {args.results} matches and carries a selection curve and a ranking head")
    tests: dict[str, object] = {}
    for r in rows:
        model, meta = load_model(r["model_dir"])
        attack = load_attack(r["model_dir"], meta)
        root = meta["config"]["data"]["root"]
        if root not in tests:  # one test set per data root, read once for all its rows
            tests[root] = create_dataset(r["dataset"], root, "test")
        test = tests[root]
        neurons = find_neurons(model, torch.zeros(1, *meta["data"]["image_shape"]))
        params = r.get("defense_params") or {}
        head = torch.tensor(r["ranking_head"], dtype=torch.long)
        print(f"{r['id']}: row k={r['chosen']['k']} ASR {100 * r['asr']:.2f} ACC {100 * r['clean_acc']:.2f}")
        for t in args.tolerance:
            chosen = choose_prefix(r["selection_curve"], params.get("max_drop", 0.02), objective="objective",
                                   tolerance=t)
            sel = prefix_mask(neurons, head, int(chosen["k"]), params.get("granularity", "neuron"))
            m = evaluate(prune_copy(model, neurons, sel), test, attack, device)  # type: ignore[arg-type]
            print(f"  tolerance {t:g}: k={chosen['k']} clean-set ACC {100 * chosen['clean_acc']:.1f} probe rate "
                  f"{chosen['probe_rate']:.2f} -> test ASR {100 * m['asr']:.2f} ACC {100 * m['clean_acc']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
