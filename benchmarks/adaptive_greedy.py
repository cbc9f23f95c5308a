"""Development diagnostic for ONP's second design: the greedy search on the adaptive objective, and what each set
it visits does to the real backdoor (measured on the test set only after the search, never by it).

    .venv/bin/python benchmarks/adaptive_greedy.py benchmarks/zoo/cifar10-resnet18w16-sig --seed 0

Class weights come from clean images only: the share of the fit images RNP's unlearned model sends to each class
plus the share amplifying CLP's top neurons sends there (``onp.defenses.onp.evidence.amplified_rates``), divided by
the largest; classes of at least ``--min-weight`` are kept (at most ``--classes``). Then the adaptive objective
(``onp.defenses.onp.objective``) is built on the fit images with the chosen trigger families, and the greedy
search (``onp.defenses.onp.search.greedy``) grows a pruning set. Prints the weights (and the true target from the
metadata, which the search never reads), then per step: neurons pruned, fit-set accuracy, the weighted worst
trigger success, J, and the test ACC/ASR of that set (``--test-images``). A few minutes per model on one core.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time

import torch

from onp.artifacts import load_attack, load_model
from onp.bench.runner import read_results, test_sample
from onp.data import create_dataset
from onp.defenses.base import DefenseData
from onp.defenses.onp.evidence import amplified_rates, class_weights
from onp.defenses.onp.objective import AdaptiveObjective, ObjectiveConfig
from onp.defenses.onp.search import greedy, ranked_greedy
from onp.defenses.onp.triggers import make_families
from onp.defenses.pruning import prune_copy
from onp.errors import OnpError
from onp.evaluate import predict
from onp.graph import find_neurons
from onp.pipeline import defense_data
from onp.scores import unlearn
from onp.utils.runtime import set_threads


def evidence_weights(model: torch.nn.Module, neurons, data: DefenseData, seed: int, min_weight: float,  # noqa: ANN001
                  most: int) -> tuple[dict[int, float], list[float]]:
    """Per class: unlearned share + amplified share, over the largest; the classes kept, and all the values."""
    device = torch.device("cpu")
    unlearned, _ = unlearn(model, data.x_fit, data.y_fit, device, seed)
    k = data.num_classes
    share = torch.bincount(predict(unlearned, data.x_fit, device), minlength=k).float() / len(data.x_fit)
    amp = torch.tensor(amplified_rates(model, neurons, data.x_fit, data.y_fit, k, device))
    evidence = share + amp
    return class_weights(evidence, min_weight, most), [round(float(v), 3) for v in evidence]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model folder made by `onp attack` (benchmarks/zoo/...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defense-size", type=int, default=500)
    p.add_argument("--families", help="comma-separated trigger families (default: all)")
    p.add_argument("--min-weight", type=float, default=0.3)
    p.add_argument("--classes", type=int, default=3, help="most classes the triggers aim at")
    p.add_argument("--fit-steps", type=int, default=40)
    p.add_argument("--refit-steps", type=int, default=5)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--per-step", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--group", action="store_true", help="prune whole residual groups")
    p.add_argument("--aggregate", default="max", help="max or mean of the weighted trigger successes")
    p.add_argument("--warm", default="last", help="re-fits start from the last trigger or the unpruned one (base)")
    p.add_argument("--rate", type=float, default=0.6, help="calibrate each trigger to this rate (0: full strength)")
    p.add_argument("--clean-weight", type=float, default=1.0)
    p.add_argument("--cost-quantile", type=float, default=1.0, help="only neurons at most this cost quantile")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--ranking", nargs=2, metavar=("RESULTS", "ROW"),
                   help="search with ranked_greedy over the ranking_head of the row of RESULTS whose id matches ROW")
    p.add_argument("--window", type=int, default=8, help="ranked_greedy: candidates tried per step")
    args = p.parse_args()
    try:
        families = make_families(args.families.split(",") if args.families else None)
    except OnpError as e:
        p.error(str(e))
    set_threads(1)
    device = torch.device("cpu")
    model, meta = load_model(args.model)
    root = meta["config"]["data"]["root"]
    train = create_dataset(meta["data"]["name"], root, "train")
    data, _ = defense_data(train, size=args.defense_size, seed=args.seed)
    neurons = find_neurons(model, data.x_fit[:1])
    t0 = time.perf_counter()
    weights, evidence = evidence_weights(model, neurons, data, args.seed, args.min_weight, args.classes)
    t_weights = time.perf_counter() - t0
    cfg = ObjectiveConfig(fit_steps=args.fit_steps, refit_steps=args.refit_steps, images=args.images,
                          aggregate=args.aggregate, rate=args.rate or None, warm=args.warm)
    objective = AdaptiveObjective(model, neurons, data.x_fit, data.y_fit, families, weights, cfg, device, args.seed)
    t_fit = time.perf_counter() - t0 - t_weights
    if args.ranking:
        rows = [r for r in read_results(args.ranking[0]) if fnmatch.fnmatchcase(r["id"], args.ranking[1])]
        if len(rows) != 1 or not rows[0].get("ranking_head"):
            p.error(f"{len(rows)} rows of {args.ranking[0]} match {args.ranking[1]!r}; one with a ranking_head needed")
        ranking = torch.tensor(rows[0]["ranking_head"], dtype=torch.long)
        result = ranked_greedy(objective, ranking, args.window, args.max_steps)
    else:
        result = greedy(objective, args.per_step, args.max_steps, args.clean_weight, args.group,
                        cost_quantile=args.cost_quantile)
    t_search = time.perf_counter() - t0 - t_weights - t_fit

    # the search has finished: only now the test set and the trigger are used
    test = create_dataset(meta["data"]["name"], root, "test")
    attack = load_attack(args.model, meta)
    x, y, xt, yt = test_sample(test, attack, args.test_images)
    print(json.dumps({"model": args.model, "seed": args.seed, "args": vars(args),
                      "target": meta["attack"]["target_label"], "evidence": evidence, "weights": weights,
                      "families": list(families),
                      "seconds": {"weights": round(t_weights), "fit": round(t_fit), "search": round(t_search)}}))
    print("step pruned fit_acc adversary J | test_acc test_asr | worst trigger")
    for h, s in zip(result.history, result.sets):
        m = prune_copy(model, neurons, s)
        acc = (predict(m, x, device) == y).float().mean().item()
        asr = (predict(m, xt, device) == yt).float().mean().item()
        worst = max((k for k in h if k.startswith("success/")), key=lambda k: h[k])
        mark = " <- best" if torch.equal(s, result.selected) else ""
        print(f"{h['step']:4d} {h['pruned']:6d} {h['clean_acc']:.3f} {h['adversary']:.3f} {h['value']:.3f} | "
              f"{acc:.4f} {asr:.4f} | {worst[8:]} {h[worst]:.2f}{mark}", flush=True)


if __name__ == "__main__":
    main()
