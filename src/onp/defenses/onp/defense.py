"""ONP: Optimized Neuron Pruning (Li, Yu and Yi 2024, "Rethinking Pruning for Backdoor Mitigation: An
Optimization Perspective", ECCV), re-implemented from the paper's description; docs/design.md, ONP, holds the
measurements behind each choice.

The algorithm, top to bottom in :func:`onp_repair`:

1. The model becomes a neuron graph (:mod:`onp.graph`): nodes are neurons, edges the traced dataflow weighted by
   connection strength, residual couplings as skip edges.
2. Evidence from the clean images alone (:mod:`.evidence`): per-neuron features (RNP's and ANP's masks, CLP's
   bound, activation statistics, the clean-loss cost) and, per class, how much it looks like a backdoor's target.
3. The objective (:mod:`.objective`): ``J(S)`` is the clean accuracy with the set ``S`` pruned, less how well the
   best small triggers (:mod:`.triggers`: patch, additive, low-frequency, stripes, blend; aimed at every class
   with evidence, weighted by it) still work after being re-fitted against the pruned network, less the pruned
   share and an accuracy penalty beyond ``max_drop``.
4. The search (:mod:`.search`, :mod:`.agent`): each step the agent (a GNN policy over the graph, on the features
   plus how strongly each neuron responds to the triggers, started from a prior) proposes its best few neurons,
   each is scored by ``J``, the best is pruned, the triggers are re-fitted, and the agent learns from the scores.
5. The answer is the best set the search scored, folded into the weights.
"""

from __future__ import annotations

import logging
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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
    gather_evidence,
    load_evidence,
    save_evidence,
)
from onp.defenses.onp.features import FeatureConfig, trigger_shift
from onp.defenses.onp.objective import AdaptiveObjective, ObjectiveConfig
from onp.defenses.onp.search import (
    GreedyResult,
    RankingProposer,
    learn_mask,
    prefix_search,
    windowed_search,
)
from onp.defenses.onp.triggers import make_families
from onp.defenses.pruning import GRANULARITIES, prune_copy
from onp.defenses.registry import register_defense
from onp.errors import OnpError
from onp.graph import build_graph, find_neurons
from onp.graph.build import NeuronGraph

if TYPE_CHECKING:
    from onp.defenses.onp.agent import Agent

log = logging.getLogger(__name__)

SEARCHES = ("agent", "greedy", "prefix", "mask")

PRIOR_WEIGHTS = {"rnp_mask": -1.0, "anp_mask": -1.0, "clp_z": 1.0, "trigger_shift_z": 2.0}
"""The prior: suspicion features with their signs. The agent starts from it; the greedy and no-RL comparators
rank by it alone. The trigger response counts twice, as the first design's two probe-shift columns did."""


@dataclass
class ONPConfig:
    """Every setting of ONP, one line each (docs/design.md, ONP, for the measurements behind the defaults)."""

    max_drop: float = 0.015  # clean-accuracy drop (on all the defender's images) before J's penalty starts
    granularity: str = "neuron"  # "neuron", or "group": a candidate pulls in its coupled residual channels
    search: str = "agent"  # "agent" (ONP); "greedy" (the prior's ranking, same windows, no learning); "prefix" (the
    # prior's prefixes scored by J); "mask" (a continuous mask learned against the triggers, its prefixes scored)
    gnn: bool = True  # message passing in the policy (False: an MLP, the no-GNN ablation)
    window: int = 6  # candidates scored by J per step
    max_steps: int = 32  # most search steps (one candidate pruned per step)
    patience: int = 8  # stop after this many steps without a better set
    stop_below: float = 0.03  # stop once the clean accuracy is this far under the unpruned one
    prefix_points: int = 36  # prefixes the "prefix" and "mask" searches score (1..this)
    mask_steps: int = 200  # "mask": gradient steps of the mask
    mask_lr: float = 0.2  # "mask": its learning rate
    mask_sparsity: float = 1.0  # "mask": weight of the mean of 1 - m
    families: str = "patch,additive,lowfreq,stripes,blend"  # trigger families (comma-separated)
    min_weight: float = 0.3  # classes whose evidence is at least this share of the largest are aimed at
    classes: int = 3  # at most this many classes
    fit_steps: int = 40  # steps of each trigger's first fit
    refit_steps: int = 5  # steps of each re-fit against a pruned network
    images: int = 64  # images each trigger is fitted and scored on
    rate: float = 0.6  # each trigger calibrated to about this success rate on the unpruned network
    min_success: float = 0.2  # triggers weaker than this on the unpruned network (at full strength) are dropped
    trial_share: float = 0.5  # share of the images a candidate's trial (no re-fit) is scored on
    full: bool = True  # count a calibrated trigger by the mean of its calibrated and full-strength successes
    rho: float = 1.0  # J's weight of the pruned share (on a 1,200-neuron net a neuron must buy 0.0008 of adversary)
    mirror: bool = True  # clean accuracy also on the images' mirror images (the memorization gap), where the
    # dataset's augmentation flips (not digits, not traffic signs)
    kappa: float = 100.0  # J's weight of the accuracy lost beyond max_drop (100: a point costs more than any
    # adversary gain, so the bound is hard)
    anp_iterations: int = 100  # ANP mask steps for the ANP feature
    lr: float = 1e-2  # the policy's learning rate
    oracle_target: int | None = None  # diagnostics only: aim at this class alone (the benchmark refuses it)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise OnpError(f"unknown granularity {self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if self.search not in SEARCHES:
            raise OnpError(f"unknown search {self.search!r}; valid: {', '.join(SEARCHES)}")
        make_families(self.families.split(","))  # an unknown family is refused here, before any work
        for name in ("window", "max_steps", "patience", "prefix_points", "classes", "images"):
            if getattr(self, name) < 1:
                raise OnpError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("rate", "trial_share"):
            if not 0 < getattr(self, name) <= 1:
                raise OnpError(f"{name} must be in (0, 1], got {getattr(self, name)}")


def onp_repair(model: nn.Module, data: DefenseData, ctx: DefenseContext, cfg: ONPConfig) -> DefenseResult:
    """ONP on ``model`` (left unchanged) with the defender's clean ``data``; the repaired copy and what it did."""
    t0 = time.perf_counter()
    model = model.to(ctx.device).eval()
    neurons = find_neurons(model, data.x_fit[:1].to(ctx.device))
    graph = build_graph(neurons)
    expand = neurons.expand_groups if cfg.granularity == "group" else None

    # evidence: features and class weights, from the clean images alone (shared with the ablations by the cache)
    ev, cached = _evidence(model, graph, data, ctx, cfg)
    classes = {cfg.oracle_target: 1.0} if cfg.oracle_target is not None else ev.class_weights(cfg.min_weight,
                                                                                             cfg.classes)
    t_evidence = time.perf_counter() - t0

    # the objective: triggers fitted toward each weighted class and calibrated on the unpruned network
    mirror = cfg.mirror and bool(getattr(data.augment, "hflip", False))
    ocfg = ObjectiveConfig(fit_steps=cfg.fit_steps, refit_steps=cfg.refit_steps, images=cfg.images, rho=cfg.rho,
                           kappa=cfg.kappa, max_drop=cfg.max_drop, rate=cfg.rate, min_success=cfg.min_success,
                           trial_share=cfg.trial_share, full=cfg.full, mirror=mirror, warm="base", aggregate="mean")
    # on all the defender's images (fit and held-out): the accuracy bound is a stopping rule (DefenseData), and
    # more images narrow the estimate of a drop
    objective = AdaptiveObjective(model, neurons, data.x_all, data.y_all, make_families(cfg.families.split(",")),
                                  classes, ocfg, ctx.device, ctx.seed)
    shift = trigger_shift(model, neurons, data.x_fit, [(t, objective.others[t.target], objective.weights[t.target])
                                                       for t in objective.triggers], ctx.device)
    feats = torch.cat([ev.feats, ((shift - shift.mean()) / shift.std().clamp_min(1e-6))[:, None]], 1)
    names = [*ev.names, "trigger_shift_z"]
    prior = prior_scores(feats, names)
    t_objective = time.perf_counter() - t0 - t_evidence

    # the search
    agent, order = None, prior.argsort(descending=True)
    if cfg.search in ("prefix", "mask"):
        if cfg.search == "mask":
            order = learn_mask(objective, cfg.mask_steps, cfg.mask_lr, cfg.mask_sparsity,
                               progress=ctx.progress).argsort()
        result = prefix_search(objective, order, range(cfg.prefix_points + 1), cfg.stop_below, expand, ctx.progress)
    else:
        proposer: Agent | RankingProposer
        if cfg.search == "agent":
            # PyTorch Geometric (about 2 s to import) loads only when the agent runs
            from onp.defenses.onp.agent import Agent, AgentConfig

            agent = proposer = Agent(feats, graph.edge_index, graph.edge_attr[:, 0], prior,
                                     AgentConfig(gnn=cfg.gnn, lr=cfg.lr), ctx.seed)
        else:
            proposer = RankingProposer(order)
        result = windowed_search(objective, proposer, cfg.window, cfg.max_steps, cfg.stop_below, cfg.patience,
                                 expand, ctx.progress, desc=f"onp: {cfg.search} search")
    t_search = time.perf_counter() - t0 - t_evidence - t_objective

    selected = result.selected
    ranking = _ranking(result, agent.ranking(selected) if agent is not None else order)
    repaired = prune_copy(model, neurons, selected)
    chosen = result.history[result.step]
    log.info("onp: pruned %d of %d neurons; fit-set acc %.4f -> %.4f, adversary %.3f -> %.3f (J %.3f)",
             int(selected.sum()), len(neurons), objective.acc0, chosen["clean_acc"], result.history[0]["adversary"],
             chosen["adversary"], result.value)
    details: dict[str, Any] = {
        "classes": {"evidence": ev.classes, "weights": {str(c): w for c, w in classes.items()}},
        "triggers": [{"family": t.family.name, "target": t.target, "strength": round(t.strength, 4)}
                     for t in objective.triggers],
        "triggers_dropped": [{"family": t.family.name, "target": t.target} for t in objective.dropped],
        "features": names, "diagnostics": ev.info, "search_curve": result.history,
        "agent_losses": agent.losses if agent is not None else [],
        "graph": {"nodes": len(neurons), "edges": int(graph.edge_index.shape[1]),
                  "groups": len(set(c.group for c in neurons.carriers))},
        "objective_evaluations": objective.evaluations,
        "timings": {"evidence": t_evidence, "objective": t_objective, "search": t_search},
        "evidence_cached_seconds": sum(ev.timings.values()) if cached else 0.0,
    }
    return DefenseResult(repaired, details, Pruning(neurons, selected, ranking, result.history, chosen))


def _evidence(model: nn.Module, graph: NeuronGraph, data: DefenseData, ctx: DefenseContext, cfg: ONPConfig
              ) -> tuple[Evidence, bool]:
    """The evidence from ``ctx.cache_dir`` when ONP or an ablation already gathered it for this model, clean set
    and seed (then ``True``), else gathered (and stored there, if given)."""
    key = None
    if ctx.cache_dir is not None:
        key = evidence_key(model, data.x_fit, data.y_fit, {"seed": ctx.seed, "anp_iterations": cfg.anp_iterations})
        ev = load_evidence(Path(ctx.cache_dir), key)
        if ev is not None:
            log.info("onp: evidence loaded from the cache (computed in %.0f s)", sum(ev.timings.values()))
            return ev, True
    ev = gather_evidence(model, graph, data, ctx, FeatureConfig(anp_iterations=cfg.anp_iterations))
    if key is not None:
        save_evidence(Path(ctx.cache_dir), key, ev)  # type: ignore[arg-type]
    return ev, False


def _ranking(result: GreedyResult, rest: Tensor) -> Tensor:
    """The order the search pruned in (so that its sets are prefixes), then ``rest`` (the others, best first)."""
    path: list[int] = []
    for before, after in zip(result.sets, result.sets[1:]):
        path += [int(i) for i in torch.nonzero(after & ~before).flatten()]
    seen = set(path)
    return torch.tensor(path + [int(i) for i in rest if int(i) not in seen], dtype=torch.long)


def prior_scores(feats: Tensor, names: list[str]) -> Tensor:
    """The prior: the signed sum of the standardized suspicion features named in :data:`PRIOR_WEIGHTS`."""
    score = torch.zeros(feats.shape[0])
    for name, w in PRIOR_WEIGHTS.items():
        if name in names:
            score += w * feats[:, names.index(name)]
    return score


@register_defense
class ONP(Defense):
    """Optimized Neuron Pruning: a GNN agent searches for the pruning set that best defeats re-fitted triggers at
    a bounded clean-accuracy cost (:func:`onp_repair`; every setting: :class:`ONPConfig`)."""

    name = "onp"
    prunes = True
    fixed: ClassVar[dict[str, Any]] = {}
    """Settings an ablation fixes."""

    def __init__(self, **settings: Any) -> None:
        clash = set(settings) & set(self.fixed)
        if clash:
            raise OnpError(f"{self.name} fixes {', '.join(sorted(clash))}")
        self.cfg = ONPConfig(**{**settings, **self.fixed})

    @classmethod
    def param_types(cls) -> dict[str, Any]:
        """The settings a user may give: :class:`ONPConfig`'s, less those this variant fixes."""
        return {k: v for k, v in typing.get_type_hints(ONPConfig).items() if k not in cls.fixed}

    def params(self) -> dict[str, Any]:
        p = asdict(self.cfg)
        if p["oracle_target"] is None:  # recorded only when a diagnostic sets it
            del p["oracle_target"]
        return p

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        return onp_repair(model, data, ctx, self.cfg)


@register_defense
class ONPNoGNN(ONP):
    """Ablation: the agent's policy is an MLP on the same features (no message passing over the neuron graph)."""

    name = "onp_nognn"
    fixed: ClassVar[dict[str, Any]] = {"gnn": False}


@register_defense
class ONPGreedy(ONP):
    """Comparator: the same windowed search on the same objective, candidates from the prior's fixed ranking (no
    learning)."""

    name = "onp_greedy"
    fixed: ClassVar[dict[str, Any]] = {"search": "greedy"}


@register_defense
class ONPNoRL(ONP):
    """Comparator: no search; the prefixes of the prior's ranking, each scored by the same objective, the best
    kept."""

    name = "onp_norl"
    fixed: ClassVar[dict[str, Any]] = {"search": "prefix"}


@register_defense
class ONPMask(ONP):
    """Comparator: a continuous neuron mask learned by gradient descent against the same re-fitted triggers; its
    prefixes scored by the same objective, the best kept."""

    name = "onp_mask"
    fixed: ClassVar[dict[str, Any]] = {"search": "mask"}
