"""Development diagnostic for a target estimate (clean images only): amplify the neurons CLP flags (the largest
per-layer z-scores of the channel Lipschitz bound, data-free) and count the class the clean images then go to.

    .venv/bin/python benchmarks/amplify_target.py benchmarks/zoo/cifar10-resnet18w16-{lc,lc-target5,clean}

Prints, per model, for each number of amplified neurons ``k`` and gain ``a``, the class most of the defender's
500 clean images (the benchmark's seed-0 split) are sent to, and how many. A backdoor's neurons, amplified,
should push to its target (docs/design.md, ONP, SIG and LC). Seconds per model on one core. ONP's target estimate
uses the k=10, a=4 setting, counted over the other classes' fit images (``onp.defenses.onp.evidence.amplified_rates``).
"""

from __future__ import annotations

import argparse

import torch

from onp.artifacts import load_model
from onp.data import create_dataset, defense_split
from onp.graph.neurons import NeuronMask, find_neurons
from onp.scores import channel_lipschitz, standardize_per_layer
from onp.utils.runtime import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model folders (benchmarks/zoo/...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clean split (default 0)")
    p.add_argument("--size", type=int, default=500)
    args = p.parse_args()
    set_threads(1)
    clean: dict[tuple[str, str], tuple[torch.Tensor, int]] = {}  # the clean split per dataset, drawn once
    for path in args.models:
        model, meta = load_model(path)
        model.eval()
        key = (meta["data"]["name"], meta["config"]["data"]["root"])
        if key not in clean:
            train = create_dataset(*key, "train")
            idx = defense_split(train.labels, train.num_classes, size=args.size, seed=args.seed)
            clean[key] = (train.float_images(idx), train.num_classes)
        x, num_classes = clean[key]
        neurons = find_neurons(model, x[:2])
        ranking = torch.argsort(standardize_per_layer(channel_lipschitz(neurons), neurons), descending=True)
        mask = NeuronMask(neurons)
        out = []
        with mask.applied(), torch.no_grad():
            for k in (5, 10, 20):
                for gain in (2.0, 4.0):
                    scale = torch.ones(len(neurons))
                    scale[ranking[:k]] = gain
                    mask.scale = scale
                    counts = torch.bincount(model(x).argmax(1), minlength=num_classes)
                    out.append(f"k={k} a={gain:g}: {int(counts.argmax())} ({int(counts.max())})")
        print(path, "|", " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
