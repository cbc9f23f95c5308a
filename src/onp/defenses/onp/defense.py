"""ONP: Optimized Neuron Pruning (Li, Yu and Yi 2024, "Rethinking Pruning for Backdoor Mitigation: An
Optimization Perspective", ECCV), re-implemented from the paper's description; docs/design.md, ONP, holds the
measurements behind each choice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onp.defenses.base import (
    Defense,
    DefenseContext,
    DefenseData,
    DefenseResult,
    Pruning,
)
from onp.defenses.onp.evidence import (
    Evidence,
    evidence_key,
    load_evidence,
    save_evidence,
)
from onp.defenses.onp.features import FeatureConfig, neuron_features
from onp.defenses.onp.probes import amplified_rates, make_probes
from onp.defenses.onp.reward import CleanReward, RewardConfig
from onp.defenses.pruning import (
    GRANULARITIES,
    STOP_MARGIN,
    choose_prefix,
    k_grid,
    prefix_mask,
    prune_copy,
    pruning_curve,
)
from onp.defenses.registry import register_defense
from onp.errors import OnpError
from onp.graph import build_graph, find_neurons
from onp.graph.build import NeuronGraph
from onp.graph.neurons import Neurons
from onp.scores import rnp_masks

log = logging.getLogger(__name__)

PRIOR_WEIGHTS = {"rnp_mask": -1.0, "anp_mask": -1.0, "clp_z": 1.0, "shift_uap_z": 1.0, "shift_patch_z": 1.0}
"""The prior: every suspicion feature with its sign, weighted equally. The policy starts from it, and the no-RL
ablation ranks by it alone."""


@register_defense
class ONP(Defense):
    """Optimized Neuron Pruning: a GNN-based agent learns, by policy gradient, which neurons to prune.

    1. The model becomes a neuron graph (:mod:`onp.graph`): nodes are neurons, edges the traced dataflow
       weighted by connection strength, residual couplings as skip edges.
    2. Trigger-free probes (a universal perturbation and an inverted patch) estimate the backdoor's shortcut
       from the clean set (:mod:`.probes`); per-neuron features gather RNP, ANP, CLP, activation and
       probe-shift evidence (:mod:`.features`).
    3. A GNN policy, starting from the prior (:data:`PRIOR_WEIGHTS`), is trained with REINFORCE to propose
       pruning sets that keep clean accuracy and break the probes (:mod:`.agent`, :mod:`.reward`), on the fit
       part of the clean set; the prior's ranking is kept instead if it scores higher there.
    4. The chosen pruning order is cut where the same objective peaks on all the clean images (the probes at
       calibrated and at full strength), within ``max_drop`` of the unpruned accuracy, and the pruning is folded
       into the weights.

    Args:
        max_drop: allowed clean-accuracy drop (default 0.02).
        granularity: ``"neuron"`` or ``"group"`` (coupled residual channels together).
        max_fraction: most neurons the final cut may prune (default 0.3).
        rl: train the policy (False: the no-RL ablation ranks by the prior).
        gnn: message passing in the policy (False: the no-GNN ablation).
        updates, episodes_per_update, steps: the search's size (see :class:`.agent.AgentConfig`).
        lam, rho: reward weights (see :class:`.reward.RewardConfig`).
        uap_eps: L-inf bound of the target estimate's universal perturbations and, by default, of the probe
            (default 8/255).
        probe_eps, probe_resolution: L-inf bound (default ``uap_eps``) and map size (default: the image's) of the
            targeted perturbation probe; a low resolution makes it a low-frequency pattern.
        anp_iterations: ANP steps for the ANP feature (default 100).
        reward_images: clean (and probed) images per reward evaluation during the search (default 128).
        tolerance: the stop is the smallest prefix whose objective is within this of the best (default 0.02).
        stop_full: the stop also scores each calibrated probe at full strength (default True).
        prior_weight: the policy's node logits are this weight times the standardized prior plus what it learns
            (default 1; 0: from scratch, and no pick between the policy's and the prior's ranking).
        oracle_target: diagnostics only (``benchmarks/oracle_target.py``): aim the probes at this class instead
            of estimating it. A defense never knows the target; the benchmark refuses this parameter.
    """

    name = "onp"
    prunes = True

    def __init__(self, max_drop: float = 0.02, granularity: str = "neuron", max_fraction: float = 0.3, rl: bool = True,
                 gnn: bool = True, updates: int = 20, episodes_per_update: int = 8, steps: int = 3, lam: float = 1.0,
                 rho: float = 0.5, uap_eps: float = 8 / 255, anp_iterations: int = 100, reward_images: int = 128,
                 tolerance: float = 0.02, stop_full: bool = True, prior_weight: float = 1.0,
                 probe_eps: float | None = None, probe_resolution: int | None = None,
                 oracle_target: int | None = None) -> None:
        if granularity not in GRANULARITIES:
            raise OnpError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if probe_resolution is not None and probe_resolution < 1:
            raise OnpError(f"probe_resolution must be a positive map size, got {probe_resolution}")
        if probe_eps is not None and not 0 < probe_eps <= 1:
            raise OnpError(f"probe_eps must be in (0, 1] (image units), got {probe_eps}")
        self.max_drop, self.granularity, self.max_fraction, self.rl, self.gnn = max_drop, granularity, max_fraction, \
            rl, gnn
        self.updates, self.episodes_per_update, self.steps = updates, episodes_per_update, steps
        self.lam, self.rho, self.uap_eps, self.anp_iterations = lam, rho, uap_eps, anp_iterations
        self.reward_images, self.tolerance, self.stop_full = reward_images, tolerance, stop_full
        self.prior_weight, self.probe_eps, self.probe_resolution = prior_weight, probe_eps, probe_resolution
        self.oracle_target = oracle_target

    def params(self) -> dict[str, Any]:
        p = super().params()
        if p["oracle_target"] is None:  # recorded only when a diagnostic sets it
            del p["oracle_target"]
        return p

    def _evidence(self, model: nn.Module, neurons: Neurons, graph: NeuronGraph, data: DefenseData,
                  ctx: DefenseContext) -> tuple[Evidence, bool]:
        """Probes and features (RNP's masks among them): from ``ctx.cache_dir`` when ONP or an ablation already
        gathered them for this model, clean set and seed (then ``True``), else computed (and stored there, if
        given)."""
        key = None
        if ctx.cache_dir is not None:
            params = {"seed": ctx.seed, "uap_eps": self.uap_eps, "anp_iterations": self.anp_iterations}
            # set only when not the default, so that the keys of default runs stay as they were
            params.update({k: v for k, v in (("probe_eps", self.probe_eps), ("probe_resolution", self.probe_resolution),
                                             ("oracle_target", self.oracle_target)) if v is not None})
            key = evidence_key(model, data.x_fit, data.y_fit, params)
            ev = load_evidence(Path(ctx.cache_dir), key)
            if ev is not None:
                log.info("onp: evidence loaded from the cache (computed in %.0f s)", sum(ev.timings.values()))
                return ev, True
        t0 = time.perf_counter()
        rnp, rnp_info = rnp_masks(model, neurons, data.x_fit, data.y_fit, ctx.device, ctx.seed)
        amplified = amplified_rates(model, neurons, data.x_fit, data.y_fit, data.num_classes, ctx.device)
        probes = make_probes(model, data.x_fit, data.y_fit, data.num_classes, ctx, self.uap_eps,
                             unlearned_predictions=rnp_info["unlearned_predictions"], amplified=amplified,
                             probe_eps=self.probe_eps, probe_resolution=self.probe_resolution,
                             target=self.oracle_target)
        t_probes = time.perf_counter() - t0
        feats, names = neuron_features(model, graph, data.x_fit, data.y_fit, probes, rnp, ctx,
                                       FeatureConfig(anp_iterations=self.anp_iterations))
        timings = {"probes": t_probes, "features": time.perf_counter() - t0 - t_probes}
        ev = Evidence(probes, feats, names, {"rnp": rnp_info}, timings)
        if key is not None:
            save_evidence(Path(ctx.cache_dir), key, ev)
        return ev, False

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        t0 = time.perf_counter()
        model = model.to(ctx.device).eval()
        neurons = find_neurons(model, data.x_fit[:1].to(ctx.device))
        graph = build_graph(neurons)
        ev, cached = self._evidence(model, neurons, graph, data, ctx)
        # a cached stage took no time here; the report says what computing it took
        timings: dict[str, float] = {"probes": 0.0, "features": 0.0} if cached else dict(ev.timings)
        probes, feats, names = ev.probes, ev.feats, ev.names
        rcfg = RewardConfig(lam=self.lam, rho=self.rho, max_drop=self.max_drop)
        history: list[dict[str, float]] = []
        prior, n = prior_scores(feats, names), len(neurons)
        pick: dict[str, Any] | None = None
        if self.rl:
            # PyTorch Geometric (about 2 s to import) loads only when a search runs
            from onp.defenses.onp.agent import AgentConfig, search

            reward = CleanReward(model, neurons, data.x_fit, data.y_fit, probes, ctx.device, rcfg,
                                 max_images=self.reward_images, seed=ctx.seed)
            acfg = AgentConfig(updates=self.updates, episodes_per_update=self.episodes_per_update, steps=self.steps,
                               gnn=self.gnn, prior_weight=self.prior_weight)
            result = search(feats, graph.edge_index, graph.edge_attr[:, 0], reward, acfg, ctx.seed, ctx.progress,
                            prior=prior)
            ranking, history = result.ranking, result.history
            if self.prior_weight:
                ranking, pick = pick_ranking(
                    {"policy": ranking, "prior": prior.argsort(descending=True)}, reward, int(self.max_fraction * n))
        else:
            ranking = prior.argsort(descending=True)
        timings["search"] = time.perf_counter() - t0 - timings["probes"] - timings["features"]

        # the stopping rule: the same objective on all the clean images, within the accuracy bound, cut at the
        # smallest prefix within `tolerance` of the best
        val = CleanReward(model, neurons, data.x_all, data.y_all, probes.with_full_strength() if self.stop_full
                          else probes, ctx.device, rcfg)
        curve = pruning_curve(model, neurons, ranking, k_grid(n, self.max_fraction), val.metrics, self.granularity,
                              stop_below=self.max_drop + STOP_MARGIN)
        acc0 = curve[0]["clean_acc"]
        for p in curve:
            p["objective"] = val.value({**p, "pruned_fraction": p["pruned"] / n}, acc0)
        chosen = choose_prefix(curve, self.max_drop, objective="objective", tolerance=self.tolerance)
        selected = prefix_mask(neurons, ranking, int(chosen["k"]), self.granularity)
        repaired = prune_copy(model, neurons, selected)
        timings["select"] = time.perf_counter() - t0 - sum(timings.values())
        log.info("onp: pruned %d of %d neurons; clean acc %.4f -> %.4f, probe rate %.3f -> %.3f",
                 int(selected.sum()), n, acc0, chosen["clean_acc"], curve[0]["probe_rate"], chosen["probe_rate"])
        details: dict[str, Any] = {
            "probe": {"target_estimate": probes.target, "rates": probes.rates},
            "features": names, "diagnostics": ev.info, "ranking_pick": pick, "reward_curve": history,
            "graph": {"nodes": n, "edges": int(graph.edge_index.shape[1]),
                      "groups": len(set(c.group for c in neurons.carriers))},
            "timings": timings, "evidence_cached_seconds": sum(ev.timings.values()) if cached else 0.0,
        }
        return DefenseResult(repaired, details, Pruning(neurons, selected, ranking, curve, chosen))


def pick_ranking(rankings: dict[str, Tensor], reward: Callable[[Tensor], tuple[float, Any]], kmax: int
                 ) -> tuple[Tensor, dict[str, Any]]:
    """The ranking whose prefixes (1, 2, 4, ... up to ``kmax`` neurons) reach the highest ``reward`` (the
    search's clean objective on the fit images), and the best value of each."""
    sizes = [k for k in (2 ** i for i in range(12)) if k <= max(1, kmax)]
    best = {}
    for name, ranking in rankings.items():
        values = []
        for k in sizes:
            sel = torch.zeros(len(ranking), dtype=torch.bool)
            sel[ranking[:k]] = True
            values.append(reward(sel)[0])
        best[name] = max(values)
    chosen = max(best, key=lambda name: best[name])  # ties keep the first (the policy's)
    log.info("onp: ranking of the %s kept (best fit-set objective %s)", chosen,
             ", ".join(f"{k} {v:.3f}" for k, v in best.items()))
    return rankings[chosen], {"chosen": chosen, "best": best}


def prior_scores(feats: Tensor, names: list[str]) -> Tensor:
    """The prior: the signed sum of the standardized suspicion features named in :data:`PRIOR_WEIGHTS`."""
    score = torch.zeros(feats.shape[0])
    for name, w in PRIOR_WEIGHTS.items():
        if name in names:
            score += w * feats[:, names.index(name)]
    return score


@register_defense
class ONPNoGNN(ONP):
    """Ablation: ONP with an MLP policy on the same features (no message passing over the neuron graph)."""

    name = "onp_nognn"

    def __init__(self, **kw: Any) -> None:
        kw["gnn"] = False
        super().__init__(**kw)


@register_defense
class ONPNoRL(ONP):
    """Ablation: no policy search; the same features ranked by the prior, same stopping rule."""

    name = "onp_norl"

    def __init__(self, **kw: Any) -> None:
        kw["rl"] = False
        super().__init__(**kw)
