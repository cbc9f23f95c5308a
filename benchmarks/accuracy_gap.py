"""Development diagnostic: does the accuracy a defense sees on its clean images (drawn from the training set, which
the model memorized) fall as the test accuracy does when neurons are pruned? For prefixes of a results row's
pruning order, prints the accuracy on the row's 500 clean images as they are, flipped, randomly cropped (padding 4
and 8, reflected) and with Gaussian noise (0.05), and on 2000 test images (measured here only; no defense reads it).

    .venv/bin/python benchmarks/accuracy_gap.py benchmarks/zoo/cifar10-resnet18w16-sig \\
        docs/results/cifar10_cpu.jsonl '*-sig-s0-*/onp-s0-*' --sizes 0 5 10 20

About a minute per model on one core.
"""

from __future__ import annotations

import argparse
import fnmatch

import torch
import torch.nn.functional as F

from onp.artifacts import load_model
from onp.bench.runner import read_results
from onp.data import create_dataset
from onp.defenses.pruning import prune_copy
from onp.evaluate import predict
from onp.graph import find_neurons
from onp.pipeline import defense_data
from onp.utils.runtime import set_threads


def crops(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Each image randomly cropped back to its size from a reflect-padded copy, and flipped half the time."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad,) * 4, mode="reflect")
    out = torch.empty_like(x)
    for i in range(len(x)):
        a, b = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
        out[i] = xp[i, :, a:a + h, b:b + w]
        if torch.rand(1, generator=g) < 0.5:
            out[i] = out[i].flip(-1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model folder made by `onp attack`")
    p.add_argument("results", help="a results file with a row of a pruning defense on this model")
    p.add_argument("row", help="shell pattern matching that row's id")
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 5, 10, 20], help="prefix sizes of its order")
    p.add_argument("--test-images", type=int, default=2000)
    args = p.parse_args()
    set_threads(1)
    rows = [r for r in read_results(args.results) if fnmatch.fnmatchcase(r["id"], args.row)]
    if len(rows) != 1 or not rows[0].get("ranking_head"):
        p.error(f"{len(rows)} rows of {args.results} match {args.row!r}; one with a ranking_head needed")
    row, device, g = rows[0], torch.device("cpu"), torch.Generator().manual_seed(0)
    model, meta = load_model(args.model)
    root = meta["config"]["data"]["root"]
    data, _ = defense_data(create_dataset(meta["data"]["name"], root, "train"), size=row["defense_size"],
                           seed=row["seed"])
    x, y = data.x_all, data.y_all
    test = create_dataset(meta["data"]["name"], root, "test")
    xt, yt = test.float_images(slice(0, args.test_images)), test.labels[:args.test_images]
    variants = {"plain": x, "flip": x.flip(-1), "crop4": crops(x, 4, g), "crop8": crops(x, 8, g),
                "noise": (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1), "test": xt}
    neurons = find_neurons(model, x[:1])
    head = torch.tensor(row["ranking_head"], dtype=torch.long)
    print("pruned " + " ".join(f"{k:>6}" for k in variants))
    for k in args.sizes:
        sel = torch.zeros(len(neurons), dtype=torch.bool)
        sel[head[:k]] = True
        m = prune_copy(model, neurons, sel)
        accs = [(predict(m, v, device) == (yt if name == "test" else y)).float().mean().item()
                for name, v in variants.items()]
        print(f"{int(sel.sum()):6d} " + " ".join(f"{100 * a:6.1f}" for a in accs), flush=True)


if __name__ == "__main__":
    main()
