"""The offline demo: a backdoored model on scikit-learn's digits (at 16x16), then its ONP repair, before and after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onp.config import AttackConfig, AttackRun, DataConfig, ModelConfig
from onp.defense_runs import run_defend
from onp.runs import run_attack
from onp.training import TrainConfig
from onp.utils.progress import ProgressFactory, null_progress

DEMO_RUN = AttackRun(
    data=DataConfig(name="digits16"),
    model=ModelConfig(name="small_cnn", width=32),
    attack=AttackConfig(name="badnets", poison_rate=0.1, target_label=0),
    train=TrainConfig(epochs=30, batch_size=64, lr=0.05),
    seed=0,
)
# 16x16 and width 32: at 8x8 every small trigger ONP fits is dropped, and at width 16 one neuron carries points of
# accuracy (docs/design.md, ONP, the demo). digits has 1,347 training images: 200 clean ones (15%) stand in for
# CIFAR-10's 500 (1%)
DEMO_DEFENSE_SIZE = 200


def run_demo(out: str | Path, progress: ProgressFactory = null_progress) -> list[dict[str, Any]]:
    """Train the backdoored demo model into ``out/backdoored``, repair it with ONP into ``out/onp``;
    return the before/after table rows."""
    out = Path(out)
    cfg = AttackRun(**{**DEMO_RUN.__dict__, "out": str(out / "backdoored")})
    t0 = time.perf_counter()
    meta = run_attack(cfg, progress, overwrite=True)  # the demo replaces its own earlier outputs
    rows = [{"model": "backdoored", **meta["metrics"], "seconds": round(time.perf_counter() - t0, 1)}]
    t0 = time.perf_counter()
    outcome = run_defend(out / "backdoored", "onp", {}, out / "onp", defense_size=DEMO_DEFENSE_SIZE, seed=0,
                         progress=progress, overwrite=True)
    pruning = outcome.pruning
    assert pruning is not None and outcome.metrics is not None  # ONP prunes; run_defend measures after
    rows.append({"model": f"ONP ({pruning.num_pruned} of {len(pruning.neurons)} neurons pruned)",
                 **outcome.metrics["after"], "seconds": round(time.perf_counter() - t0, 1)})
    return rows
