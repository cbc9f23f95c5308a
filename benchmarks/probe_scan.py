"""Development diagnostic (clean images only): how easily each trigger family sends the defender's clean images to
each class. Does a backdoor's target stand out from the natural "sink" classes every model has?

    .venv/bin/python benchmarks/probe_scan.py benchmarks/zoo/cifar10-resnet18w16-{sig,sig-target5,clean}

For each model and family (``onp.defenses.onp.triggers``), a trigger toward every class is fitted for ``--steps``
steps (batch 64) on the images of the other classes of the benchmark's clean split, and its success rate on them is
printed, with the class it reaches best and that rate's excess over the median class. The target is printed
beside it from the model's metadata, which no defense may read. About 4 minutes per model and family set on one
core (ResNet-18 width 16).
"""

from __future__ import annotations

import argparse
import time

import torch

from onp.artifacts import load_model
from onp.data import create_dataset, defense_split
from onp.defenses.onp.triggers import fit, make_families, new_trigger, success
from onp.errors import OnpError
from onp.utils.runtime import set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model folders (benchmarks/zoo/...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clean split and the fits (default 0)")
    p.add_argument("--size", type=int, default=500, help="clean images (default 500)")
    p.add_argument("--steps", type=int, default=40, help="Adam steps per trigger (default 40)")
    p.add_argument("--families", help="comma-separated families (default: all)")
    args = p.parse_args()
    try:
        families = make_families(args.families.split(",") if args.families else None)
    except OnpError as e:
        p.error(str(e))
    set_threads(1)
    device = torch.device("cpu")
    for path in args.models:
        model, meta = load_model(path)
        train = create_dataset(meta["data"]["name"], meta["config"]["data"]["root"], "train")
        idx = defense_split(train.labels, train.num_classes, size=args.size, seed=args.seed)
        x, y = train.float_images(idx), train.labels[idx]
        target = (meta.get("attack") or {}).get("target_label")
        for name, fam in families.items():
            t0, g = time.perf_counter(), torch.Generator().manual_seed(args.seed)
            rates = []
            for c in range(train.num_classes):
                trig = fit(model, new_trigger(fam, c, tuple(x.shape[1:]), g), x[y != c], args.steps, g, device)
                rates.append(success(model, trig, x[y != c], device))
            r = torch.tensor(rates)
            print(f"{path} target {target} | {name:8s} " + " ".join(f"{v:.2f}" for v in rates) +
                  f" | best {int(r.argmax())} excess {float(r.max() - r.median()):.2f} | target's rank "
                  f"{int((r > r[target]).sum()) + 1 if target is not None else '-'} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
