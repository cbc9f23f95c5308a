"""Development diagnostic, not a defense: ONP's no-RL ranking with its target estimate forced to the attack's true
target, to tell a wrong estimate apart from probes that miss the trigger (docs/design.md, ONP, SIG and LC).

    .venv/bin/python benchmarks/oracle_target.py benchmarks/zoo/cifar10-resnet18w16-lc --seed 0
    .venv/bin/python benchmarks/oracle_target.py benchmarks/zoo/cifar10-resnet18w16-sig --probe-eps 24 \
        --probe-resolution 16

It reads the target from the model's metadata, which no defense may do, so its numbers never enter a results
table. Prints the neurons pruned, test ACC/ASR after the defense, the probe rates, the clean-set selection curve,
and the test ACC/ASR along the ranking (2000 test images, as the benchmark's pruning curve). About 5 minutes
on one core for ResNet-18 width 16 (the evidence is computed afresh, never read from or written to a cache).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

import onp.rl.probes
from onp.artifacts import load_attack, load_model
from onp.bench.runner import test_pruning_curve
from onp.data import create_dataset, defense_split
from onp.defenses import DefenseContext, DefenseData, create_defense
from onp.errors import OnpError
from onp.evaluate import evaluate
from onp.utils.runtime import seed_everything, set_threads


def force_target(target: int) -> None:
    """Make ONP's target estimate ``target``: its unlearning signal then names it with a share of 1, which decides
    alone (:func:`onp.rl.probes.make_probes`)."""
    original = onp.rl.probes.make_probes

    def forced(model: Any, x: Any, y: Any, num_classes: int, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["unlearned_predictions"] = [1 if c == target else 0 for c in range(num_classes)]
        return original(model, x, y, num_classes, ctx, *args, **kwargs)

    onp.rl.probes.make_probes = forced


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model folder made by `onp attack` (benchmarks/zoo/...)")
    p.add_argument("--seed", type=int, default=0, help="defense seed: the clean split and the probes (default 0)")
    p.add_argument("--defense-size", type=int, default=500)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-eps", type=float, help="the perturbation probe's L-inf bound, in 1/255 (ONP's probe_eps)")
    p.add_argument("--probe-resolution", type=int, help="the perturbation probe's map size (ONP's probe_resolution)")
    args = p.parse_args()
    probe = {"probe_eps": None if args.probe_eps is None else args.probe_eps / 255,
             "probe_resolution": args.probe_resolution}
    try:
        defense = create_defense("onp", rl=False, **probe)
    except OnpError as e:
        p.error(str(e))
    set_threads(args.threads)
    device = torch.device("cpu")
    model, meta = load_model(args.model)
    attack = load_attack(args.model, meta)
    if attack is None:
        p.error(f"{args.model} holds no attack, so it has no true target")
    force_target(int(meta["attack"]["target_label"]))
    root = meta["config"]["data"]["root"]
    train = create_dataset(meta["data"]["name"], root, "train")
    test = create_dataset(meta["data"]["name"], root, "test")
    idx = defense_split(train.labels, train.num_classes, size=args.defense_size, seed=args.seed)
    seed_everything(args.seed)
    data = DefenseData.from_dataset(train.subset(idx), seed=args.seed)
    result = defense.repair(model, data, DefenseContext(device, args.seed))
    report = result.report
    curve = test_pruning_curve(model, report, data, test, attack, device, args.test_images)
    print(json.dumps({
        "model": args.model, "seed": args.seed, "probe": probe, "target_estimate": report["probe"]["target_estimate"],
        "num_pruned": report["chosen"]["pruned"],
        "before": meta.get("metrics"), "after": evaluate(result.model, test, attack, device),
        "probe_rates": report["probe"]["rates"],
        "selection_curve": [{k: round(v, 4) for k, v in q.items()} for q in report["selection_curve"]],
        "test_curve": [{k: round(v, 4) for k, v in q.items()} for q in curve],
    }, indent=1))


if __name__ == "__main__":
    main()
