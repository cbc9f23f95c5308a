"""Development diagnostic, not a defense: ONP with its triggers aimed at the attack's true target alone, to tell
class weights that miss the target apart from triggers or a search that miss the backdoor (docs/design.md, ONP).

    .venv/bin/python benchmarks/oracle_target.py benchmarks/zoo/cifar10-resnet18w16-sig --seed 0

It reads the target from the model's metadata, which no defense may do, so its numbers never enter a results
table. Prints the neurons pruned, test ACC/ASR after the defense, the search curve (fit-set accuracy, the
re-fitted triggers' success, J) and the test ACC/ASR along the pruning order (2000 test images, as the
benchmark's pruning curve). About 10 minutes on one core for ResNet-18 width 16 (the evidence is computed afresh,
never read from or written to a cache).
"""

from __future__ import annotations

import argparse
import json

import torch

from onp.artifacts import load_attack, load_model
from onp.bench.runner import test_pruning_curve
from onp.data import create_dataset
from onp.defenses import create_defense
from onp.pipeline import defend
from onp.utils.runtime import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model folder made by `onp attack` (benchmarks/zoo/...)")
    p.add_argument("--seed", type=int, default=0, help="defense seed: the clean split and the triggers (default 0)")
    p.add_argument("--defense-size", type=int, default=500)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    device = torch.device("cpu")
    model, meta = load_model(args.model)
    attack = load_attack(args.model, meta)
    if attack is None:
        p.error(f"{args.model} holds no attack, so it has no true target")
    defense = create_defense("onp", oracle_target=int(meta["attack"]["target_label"]))
    root = meta["config"]["data"]["root"]
    train = create_dataset(meta["data"]["name"], root, "train")
    test = create_dataset(meta["data"]["name"], root, "test")
    outcome = defend(model, defense, train, size=args.defense_size, seed=args.seed, device=device, test=test,
                     attack=attack, before=meta.get("metrics"))
    pruning = outcome.pruning
    assert pruning is not None and outcome.metrics is not None
    curve = test_pruning_curve(model, pruning, defense.params()["granularity"], test, attack, device,
                               args.test_images)
    keys = ("pruned", "clean_acc", "adversary", "value")
    print(json.dumps({
        "model": args.model, "seed": args.seed, "num_pruned": pruning.num_pruned, **outcome.metrics,
        "search_curve": [{k: round(q[k], 4) for k in keys} for q in pruning.curve],
        "test_curve": [{k: round(v, 4) for k, v in q.items()} for q in curve],
    }, indent=1))


if __name__ == "__main__":
    main()
