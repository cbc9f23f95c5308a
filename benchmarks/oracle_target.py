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

import torch

from onp.artifacts import load_attack, load_model
from onp.bench.runner import test_pruning_curve
from onp.data import create_dataset
from onp.defenses import create_defense
from onp.errors import OnpError
from onp.pipeline import defend
from onp.utils.runtime import set_threads


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
        create_defense("onp", rl=False, **probe)  # a bad value is refused before any data is read
    except OnpError as e:
        p.error(str(e))
    set_threads(args.threads)
    device = torch.device("cpu")
    model, meta = load_model(args.model)
    attack = load_attack(args.model, meta)
    if attack is None:
        p.error(f"{args.model} holds no attack, so it has no true target")
    defense = create_defense("onp", rl=False, oracle_target=int(meta["attack"]["target_label"]), **probe)
    root = meta["config"]["data"]["root"]
    train = create_dataset(meta["data"]["name"], root, "train")
    test = create_dataset(meta["data"]["name"], root, "test")
    outcome = defend(model, defense, train, size=args.defense_size, seed=args.seed, device=device, test=test,
                     attack=attack, before=meta.get("metrics"))
    pruning, details = outcome.pruning, outcome.result.details
    assert pruning is not None and outcome.metrics is not None
    curve = test_pruning_curve(model, pruning, defense.params()["granularity"], test, attack, device,
                               args.test_images)
    print(json.dumps({
        "model": args.model, "seed": args.seed, "probe": probe, "target_estimate": details["probe"]["target_estimate"],
        "num_pruned": pruning.chosen["pruned"], **outcome.metrics, "probe_rates": details["probe"]["rates"],
        "selection_curve": [{k: round(v, 4) for k, v in q.items()} for q in pruning.curve],
        "test_curve": [{k: round(v, 4) for k, v in q.items()} for q in curve],
    }, indent=1))


if __name__ == "__main__":
    main()
