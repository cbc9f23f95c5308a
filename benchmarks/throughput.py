"""Training-loop throughput as a ratio to the bare forward/backward/step of the same model, in the same run.

The loop's overhead is everything around the step: assembling the poisoned batch, augmentation, the
scheduler, bookkeeping. Target: ratio >= 0.9. Run:

    .venv/bin/python benchmarks/throughput.py --data-root ../shared/data/cifar10 --model resnet18 --width 16
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from onp.attacks import create_attack
from onp.data import create_dataset
from onp.models import create_model
from onp.training import TrainConfig, train_model
from onp.utils.runtime import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-root", default="../shared/data/cifar10")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--steps", type=int, default=60, help="training steps timed per measurement")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    set_threads(None)
    device = torch.device("cpu")
    train = create_dataset(args.dataset, args.data_root, "train")
    n = args.steps * args.batch_size
    train = train.subset(torch.arange(n))
    attack = create_attack(args.attack, train.num_classes, train.image_shape, poison_rate=0.1)
    poisoned = attack.poison(train)
    model = create_model(args.model, train.num_classes, train.image_shape[0], train.mean, train.std,
                         width=args.width)
    x = torch.rand(args.batch_size, *train.image_shape)
    y = torch.randint(0, train.num_classes, (args.batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def bare() -> float:
        model.train()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    def loop() -> float:
        t0 = time.perf_counter()
        train_model(model, poisoned, TrainConfig(epochs=1, batch_size=args.batch_size), device)
        return n / (time.perf_counter() - t0)

    bare()  # warm-up
    ratios = []
    for r in range(args.repeats):  # interleaved, so drift on a noisy machine hits both sides alike
        b, lp = bare(), loop()
        ratios.append(lp / b)
        print(f"repeat {r + 1}: bare step {b:8.1f} img/s   training loop {lp:8.1f} img/s   ratio {lp / b:.3f}")
    ratios.sort()
    print(f"median ratio (loop / bare step): {ratios[len(ratios) // 2]:.3f}  (target >= 0.9; "
          f"{args.model} width {args.width}, batch {args.batch_size}, {args.attack}, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
