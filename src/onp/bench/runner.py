"""Run a benchmark grid: train or reuse the backdoored models, run every defense cell, append one JSON line per
finished cell. Resumable: a finished cell is never redone, and a cell killed halfway leaves nothing behind.

Each defense cell runs in a fresh process, so its peak memory is its own; executors: ``local`` (one cell at a
time on this machine) or ``ray`` (cells as Ray tasks on a local or existing cluster). Both run the same cell
function on the same inputs, so they give the same rows.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import multiprocessing as mp
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from onp.artifacts import load_attack, load_model
from onp.attacks import Attack
from onp.bench.grid import BenchConfig, DefenseCell, ModelCell, attack_key, expand
from onp.config import AttackRun, from_dict
from onp.data import ImageDataset, create_dataset, holdout_split
from onp.defenses import create_defense
from onp.defenses.base import Pruning
from onp.defenses.pruning import pruning_curve
from onp.errors import OnpError, at_least
from onp.evaluate import predict
from onp.pipeline import defend
from onp.runs import run_attack
from onp.utils.io import atomic_write_text, stable_hash
from onp.utils.progress import ProgressFactory, null_progress, tqdm_progress
from onp.utils.runtime import code_changes, provenance, resolve_device, set_threads

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")


# --- results file -----------------------------------------------------------------------------------------------
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file; a line that is not complete JSON (a torn write from an old crash) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not a complete JSON line; ignored", path, i)
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row atomically: the whole file is rewritten through a temporary file and a rename, so a kill
    leaves either the old file or the new one, never half a line."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(row, sort_keys=True, default=str) + "\n")


# --- metrics ----------------------------------------------------------------------------------------------------
def der(before: dict[str, float], after: dict[str, float]) -> float:
    """Defense Effectiveness Rating (BackdoorBench, Wu et al. 2022): ``(max(0, dASR) - max(0, dACC) + 1) / 2``,
    in [0, 1]; 1 removes the whole ASR at no accuracy cost, 0.5 changes nothing."""
    d_asr = max(0.0, before["asr"] - after["asr"])
    d_acc = max(0.0, before["clean_acc"] - after["clean_acc"])
    return (d_asr - d_acc + 1) / 2


# --- the zoo of backdoored models -------------------------------------------------------------------------------
def find_in_zoo(zoo: Path, run: AttackRun) -> Path | None:
    """A model directory in ``zoo`` whose recorded config has the same attack key as ``run``."""
    want = attack_key(run)
    for meta_path in sorted(zoo.glob("*/model.json")):
        try:
            cfg = json.loads(meta_path.read_text()).get("config")
            if cfg and attack_key(from_dict(AttackRun, cfg)) == want:
                return meta_path.parent
        except (OnpError, json.JSONDecodeError, TypeError, KeyError):
            continue
    return None


def ensure_model(cell: ModelCell, zoo: Path, progress: ProgressFactory = null_progress) -> Path:
    """The backdoored model of ``cell``: from the zoo when one matches, else trained into it."""
    found = find_in_zoo(zoo, cell.run)
    if found is not None:
        return found
    out = zoo / cell.id.replace("/", "_")
    log.info("training %s", cell.id)
    run_attack(AttackRun(**{**cell.run.__dict__, "out": str(out)}), progress=progress)
    return out


# --- one defense cell -------------------------------------------------------------------------------------------
def clean_images(train: ImageDataset, meta: dict[str, Any], source: str, model_dir: str) -> tuple[ImageDataset, str]:
    """The images a defense of this model draws its clean set from, and a word on them for the row: the images
    the model trained on (``train``: the benchmark convention), or the pool it held out of its training
    (``pool``), re-drawn from its recorded size and seed and checked against its recorded indices."""
    held = (meta.get("data") or {}).get("holdout")
    if not held:
        if source == "pool":
            raise OnpError(f"{model_dir} held no pool out of its training; it cannot give clean_source pool")
        return train, "train split"
    pool, rest = holdout_split(train.labels, train.num_classes, held["size"], held["seed"])
    if stable_hash(pool.tolist()) != held["indices_sha"]:
        raise OnpError(f"{model_dir}: the held-out pool re-drawn from its size and seed is not the one it recorded")
    if source == "train":
        return train.subset(rest), "train split (the images the model trained on)"
    return train.subset(pool), f"held-out pool of {len(pool)} images the model never trained on"


def run_defense_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one defense cell from a plain-data ``spec`` and return its row. Runs in a fresh process."""
    versions = provenance()  # read before the cell's work, while the checkout is the code this process imports
    set_threads(spec["threads"])
    progress = tqdm_progress if spec.get("show_progress") else null_progress
    device = resolve_device(spec["device"])
    model, meta = load_model(spec["model_dir"])
    train = create_dataset(spec["data"]["name"], spec["data"]["root"], "train")
    test = create_dataset(spec["data"]["name"], spec["data"]["root"], "test")
    attack = load_attack(spec["model_dir"], meta)
    defense = create_defense(spec["defense"]["name"], **spec["defense"]["params"])
    source = spec.get("clean_source", "train")
    clean, source_words = clean_images(train, meta, source, spec["model_dir"])
    outcome = defend(model, defense, clean, size=spec["defense_size"], seed=spec["seed"], device=device,
                     progress=progress, cache_dir=spec.get("cache_dir"), source=source_words, test=test,
                     attack=attack, before=meta.get("metrics"))
    assert outcome.metrics is not None  # a test set was given
    details, pruning = outcome.result.details, outcome.pruning
    # a cell that loaded evidence another cell computed (ONP's ablations) is charged what computing it took, so
    # that every wall time is the cost of running that defense alone
    wall = outcome.wall_time + float(details.get("evidence_cached_seconds") or 0.0)
    before, after = outcome.metrics["before"], outcome.metrics["after"]
    row = {
        "id": spec["id"], "bench": spec["bench"], "model_id": spec["model_id"], "model_dir": spec["model_dir"],
        "dataset": spec["data"]["name"], "model": spec["model"], "attack": meta.get("attack"),
        "defense": spec["defense"]["label"] or spec["defense"]["name"], "defense_name": spec["defense"]["name"],
        "defense_params": defense.params(), "seed": spec["seed"], "defense_size": spec["defense_size"],
        "clean_source": source,
        "before": before, "after": after, "clean_acc": after["clean_acc"], "asr": after.get("asr"),
        "ra": after.get("ra"), "der": der(before, after), "wall_time": wall, "wall_time_measured": outcome.wall_time,
        "num_pruned": pruning.num_pruned if pruning else None,
        "num_neurons": len(pruning.neurons) if pruning else None,
        "timings": details.get("timings"), "classes": details.get("classes"), "triggers": details.get("triggers"),
        "chosen": pruning.chosen if pruning else None,
        # what the defense saw on its clean images at each set it chose from (ONP: each step of its search)
        "selection_curve": pruning.curve if pruning else None,
        "ranking_head": pruning.ranking_head() if pruning else None,
        "versions": versions, "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if spec.get("curves") and pruning is not None and attack is not None:
        granularity = defense.params().get("granularity", "neuron")
        row["pruning_curve"] = test_pruning_curve(model, pruning, granularity, test, attack, device,
                                                  spec["curve_images"])
    row["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def test_sample(test: ImageDataset, attack: Attack, images: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed draw of ``images`` test images and labels, and the triggered copies of those that count for the
    attack with their attack labels (for curves measured after a defense)."""
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:images]
    x, y = test.float_images(pick), test.labels[pick]
    keep = attack.asr_mask(y)
    return x, y, attack.apply(x[keep]), attack.target_of(y[keep])


def test_pruning_curve(model: torch.nn.Module, pruning: Pruning, granularity: str, test: ImageDataset,
                       attack: Attack, device: torch.device, images: int) -> list[dict[str, float]]:
    """Test ACC and ASR as the defense's ranking is pruned further (measured after the defense finished), at up
    to 12 of the prefix sizes its stop looked at, on ``images`` test images."""
    ks = sorted({int(p["k"]) for p in pruning.curve})
    if len(ks) > 12:
        ks = [ks[i] for i in torch.linspace(0, len(ks) - 1, 12).round().long().tolist()]
    x, y, xt, yt = test_sample(test, attack, images)

    def metric(m: torch.nn.Module) -> dict[str, float]:
        def acc(xx: torch.Tensor, yy: torch.Tensor) -> float:
            return (predict(m, xx, device, 500) == yy).float().mean().item()

        return {"clean_acc": acc(x, y), "asr": acc(xt, yt)}

    return pruning_curve(model, pruning.neurons, pruning.ranking, ks, metric, granularity)


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a cell process: end it as soon as ``parent`` is gone. A killed ``onp bench`` otherwise leaves its cell
    running to the end as an orphan (it did: two orphans held both cores for 20 minutes), and its row is lost
    anyway."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_local(specs: list[dict[str, Any]], results: str | Path, jobs: int, bar: Any) -> list[str]:
    """Run each cell in a fresh spawned process (its own memory peak, no state shared with the parent), ``jobs``
    at a time; each row is appended as soon as its cell finishes. Returns the ids of the cells that failed. A
    cell process ends with its parent (:func:`exit_with_parent`)."""
    ctx = mp.get_context("spawn")
    failed: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1, initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_defense_cell, spec): spec for spec in specs}
        for fut in as_completed(futures):
            _collect(results, futures[fut], fut.result, failed)
            bar.update(1, cell=futures[fut]["id"].split("/")[-1])
    return failed


def _collect(results: str | Path, spec: dict[str, Any], get: Callable[[], dict[str, Any]], failed: list[str]) -> None:
    """Append a finished cell's row; a cell that raised is logged and left out (a rerun retries it), so one bad
    cell does not stop a night's grid."""
    try:
        row = get()
    except Exception as e:  # noqa: BLE001 - any failure of the cell's own code
        log.error("cell %s failed: %s: %s", spec["id"], type(e).__name__, e)
        failed.append(spec["id"])
        return
    append_row(results, row)


def cell_spec(cfg: BenchConfig, cell: DefenseCell, model_dir: Path, show_progress: bool) -> dict[str, Any]:
    run = cell.model.run
    return {
        "id": cell.id, "bench": cfg.name, "model_id": cell.model.id, "model_dir": str(model_dir),
        "data": {"name": run.data.name, "root": run.data.root}, "model": asdict(run.model),
        "defense": asdict(cell.defense), "seed": cell.seed, "defense_size": cell.defense_size,
        "clean_source": cell.clean_source, "threads": cfg.threads, "device": cfg.device, "curves": cfg.curves,
        "curve_images": cfg.curve_images,
        "show_progress": show_progress, "cache_dir": str(Path(cfg.zoo) / ".cache"),
    }


# --- the grid ---------------------------------------------------------------------------------------------------
def refuse_stale_rows(cells: list[DefenseCell], rows: dict[str, dict[str, Any]], results: str | Path) -> None:
    """Refuse to resume from rows whose defense ran with other settings than the current code's defaults give the
    same cell (a changed default keeps a cell's id): old and new rows must never be mixed in one table."""
    stale = []
    for c in cells:
        row = rows.get(c.id)
        if row is None or "defense_params" not in row:
            continue
        now = json.loads(json.dumps(create_defense(c.defense.name, **c.defense.params).params()))
        if row["defense_params"] != now:
            changed = sorted(k for k in set(now) | set(row["defense_params"])
                             if now.get(k) != row["defense_params"].get(k))
            stale.append(f"{c.id} ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})")
    if stale:
        raise OnpError(f"{len(stale)} rows of {results} were made with other settings than the present code's, "
                       f"e.g. {stale[0]}; delete them (or write to another results file) so that old and new rows "
                       f"are not mixed")


def refuse_unfrozen(frozen: str, cells: list[DefenseCell], rows: dict[str, dict[str, Any]],
                    results: str | Path) -> None:
    """For a frozen benchmark: refuse to run while onp's source differs from the frozen revision, and refuse the
    rows of ``cells`` made by other code (or by uncommitted code, which no revision names): every row of a frozen
    grid comes from the same defenses. The caller passes the whole grid, not an ``--only`` slice."""
    if changed := code_changes(frozen):
        raise OnpError(f"the benchmark is frozen at {frozen}, but onp's source differs from it in "
                       f"{', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}: restore that code, or "
                       f"freeze anew and re-run every row")
    diffs: dict[str, list[str]] = {}
    other = []
    for c in cells:
        if (row := rows.get(c.id)) is None:
            continue
        rev = (row.get("versions") or {}).get("git") or ""
        if not rev or rev.endswith("-dirty"):
            other.append(f"{c.id} ({rev or 'no revision'})")
            continue
        if rev not in diffs:
            diffs[rev] = code_changes(frozen, rev)
        if diffs[rev]:
            other.append(f"{c.id} ({rev[:12]}, which differs in {diffs[rev][0]})")
    if other:
        raise OnpError(f"{len(other)} rows of {results} were not made by the frozen code ({frozen}), e.g. "
                       f"{other[0]}; delete them so that old and new rows are not mixed")


def run_bench(cfg: BenchConfig, results: str | Path, executor: str = "local", address: str | None = None,
              progress: ProgressFactory = null_progress, show_cell_progress: bool = False,
              max_cells: int | None = None, jobs: int = 1, only: list[str] | None = None,
              models_only: bool = False) -> list[dict[str, Any]]:
    """Run every cell of ``cfg`` not yet in ``results``; return all rows (old and new) in grid order.

    ``max_cells`` stops after that many new cells (for tests of resumption and for slicing long runs); ``jobs``
    cells run at once on the local executor (give each ``threads`` cores: 2 jobs of 1 thread on 2 cores);
    ``only`` keeps the cells whose id (``<dataset>-<model>-<attack>-s<seed>-<hash>/<defense>-s<seed>-<hash>``)
    matches one of these shell patterns, and trains only their models. ``models_only`` trains the models those
    cells need and returns no rows.
    """
    if executor not in EXECUTORS:
        raise OnpError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    at_least(jobs, 1, "--jobs")
    if max_cells is not None:  # a negative count would slice the to-do list from its end: nearly the whole grid
        at_least(max_cells, 1, "--max-cells")
    models, cells = expand(cfg)
    rows = {r["id"]: r for r in read_results(results)}
    done = set(rows)
    in_scope = [c for c in cells if not only or any(fnmatch.fnmatchcase(c.id, pat) for pat in only)]
    if only and not in_scope:  # a mistyped pattern would otherwise run nothing and look like success
        raise OnpError(f"--only {' '.join(repr(p) for p in only)} matches none of the grid's {len(cells)} cells "
                       f"(ids look like {cells[0].id!r})" if cells else "the grid has no cells")
    refuse_stale_rows(in_scope, rows, results)
    if cfg.frozen and not models_only:  # models may be trained before the freeze; they are not defense code
        refuse_unfrozen(cfg.frozen, cells, rows, results)
    todo = [c for c in in_scope if c.id not in done]
    if max_cells is not None:
        todo = todo[:max_cells]
    zoo = Path(cfg.zoo)
    log.info("%d cells in the grid, %d done, %d to run", len(cells), len(done), len(todo))
    needed = {c.model.id: c.model for c in todo}
    model_dirs: dict[str, Path] = {}
    with progress(total=len(needed), desc="models") as bar:
        for mid, mc in needed.items():
            model_dirs[mid] = ensure_model(mc, zoo, progress)
            bar.update(1)
    if models_only:
        return []
    specs = [cell_spec(cfg, c, model_dirs[c.model.id], show_cell_progress) for c in todo]
    with progress(total=len(specs), desc="grid") as bar:
        if executor == "local":
            failed = _run_local(specs, results, jobs, bar)
        else:
            failed = _run_ray(specs, results, address, bar)
    if failed:
        raise OnpError(f"{len(failed)} of {len(specs)} cells failed (their errors are logged above; a rerun retries "
                       f"them): {', '.join(failed)}")
    order = {c.id: i for i, c in enumerate(cells)}
    rows = [r for r in read_results(results) if r["id"] in order]
    return sorted(rows, key=lambda r: order[r["id"]])


def _run_ray(specs: list[dict[str, Any]], results: str | Path, address: str | None, bar: Any) -> list[str]:
    try:
        import ray
    except ImportError:
        raise OnpError("the ray executor needs Ray: pip install 'onp[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}}
                 if os.environ.get("OMP_NUM_THREADS") else None)
    try:
        # a fresh worker process per cell (max_calls=1), so its memory peak is the cell's own
        task = ray.remote(num_cpus=1, max_calls=1)(run_defense_cell)
        pending = {task.remote(s): s for s in specs}
        failed: list[str] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                spec = pending.pop(ref)
                _collect(results, spec, lambda ref=ref: ray.get(ref), failed)
                bar.update(1, cell=spec["id"].split("/")[-1])
        return failed
    finally:
        if started_here:
            ray.shutdown()
