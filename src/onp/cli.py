"""The ``onp`` command line. The only place that sets logging handlers and draws progress bars.

Each command imports what it runs inside its function, so that ``onp --help`` and a mistyped flag answer without
loading torch (a few seconds here).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onp.errors import OnpError
from onp.version import __version__

log = logging.getLogger("onp")


def _progress():  # noqa: ANN202
    from onp.utils.progress import tqdm_progress

    return tqdm_progress


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.2f}"


def print_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    """A small fixed-width table on stdout: ``cols`` are (key, header)."""
    widths = [max([len(h)] + [len(_cell(r.get(k), k)) for r in rows]) for k, h in cols]
    print("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_cell(r.get(k), k).ljust(w) for (k, _), w in zip(cols, widths)))


_PERCENT = {"clean_acc", "asr", "ra", "der", "acc_drop"}


def _cell(v: Any, key: str = "") -> str:
    if isinstance(v, float) and key in _PERCENT:
        return _fmt_pct(v)
    if isinstance(v, float):
        return f"{v:.1f}"
    return "-" if v is None else str(v)


# --- commands --------------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from onp.attacks import list_attacks
    from onp.data import list_datasets
    from onp.defenses import list_defenses
    from onp.models import list_models

    groups = {"datasets": list_datasets, "models": list_models, "attacks": list_attacks, "defenses": list_defenses}
    for name, fn in groups.items():
        if args.what in (None, name):
            print(f"{name}: {', '.join(fn())}")
    return 0


def _attack_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from onp.config import parse_set

    o = {
        "data.name": args.dataset, "data.root": args.data_root, "data.download": True if args.download else None,
        "model.name": args.model, "model.width": args.width,
        "attack.name": args.attack, "attack.poison_rate": args.poison_rate, "attack.target_label": args.target,
        "attack.all_to_all": True if args.all_to_all else None,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "reference": args.reference, "reference_epochs": args.reference_epochs,
        "seed": args.seed, "device": args.device, "threads": args.threads, "out": args.out,
    }
    o.update(parse_set(args.set or []))
    return o


def cmd_attack(args: argparse.Namespace) -> int:
    from onp.config import AttackRun, load_config
    from onp.runs import run_attack

    clean = args.command == "train"
    cfg = load_config(AttackRun, args.config, _attack_overrides(args))
    meta = run_attack(cfg, progress=_progress(), clean=clean, overwrite=args.overwrite)
    print(f"saved {cfg.out}")
    print_table([{"attack": "none" if clean else cfg.attack.name, **meta["metrics"]}],
                [("attack", "attack"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %")])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onp.runs import run_eval
    from onp.utils.runtime import set_threads

    set_threads(args.threads)
    rows = []
    for path in args.models:
        m = run_eval(path, data_root=args.data_root, arch=args.arch, device=args.device, progress=_progress(),
                     trigger_from=args.trigger_from, images=args.images)
        rows.append({"model": str(path), **m})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, [("model", "model"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %")])
    return 0


def _defense_params(args: argparse.Namespace) -> dict[str, Any]:
    from onp.config import parse_set

    return parse_set(args.set or [])


def _before_after(outcome: Any) -> None:
    m = outcome.metrics
    if not m:
        return
    rows = [{"model": "before", **m["before"]}, {"model": f"after {outcome.defense.name}", **m["after"]}]
    print_table(rows, [("model", "model"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %")])


def _pruned(outcome: Any) -> str:
    p = outcome.pruning
    return "-" if p is None else f"{p.num_pruned} of {len(p.neurons)}"


def cmd_defend(args: argparse.Namespace) -> int:
    from onp.defense_runs import run_defend
    from onp.utils.runtime import set_threads

    set_threads(args.threads)
    outcome = run_defend(args.model, args.method, _defense_params(args), args.out, data_root=args.data_root,
                         defense_size=args.defense_size, defense_fraction=args.defense_fraction, seed=args.seed,
                         device=args.device, arch=args.arch, evaluate_after=not args.no_eval, slim=args.slim,
                         progress=_progress(), overwrite=args.overwrite)
    print(f"saved {args.out} ({_pruned(outcome)} neurons pruned, {outcome.wall_time:.0f} s)")
    _before_after(outcome)
    return 0


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise OnpError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_repair(args: argparse.Namespace) -> int:
    from onp.config import parse_set
    from onp.defense_runs import run_repair
    from onp.utils.runtime import set_threads

    set_threads(args.threads)
    outcome = run_repair(args.arch, args.weights, args.clean, args.out, args.method, _defense_params(args),
                         input_size=args.input_size, resize=args.resize, mean=_floats(args.mean),
                         std=_floats(args.std), seed=args.seed, device=args.device, slim=args.slim,
                         progress=_progress(), overwrite=args.overwrite,
                         arch_kwargs=parse_set(args.arch_kwargs) if args.arch_kwargs else None)
    print(f"saved {args.out} (the report is {Path(args.out) / 'report.json'})")
    print_summary(outcome.summary(), outcome.defense.name)
    return 0


def print_summary(s: dict[str, Any], method: str) -> None:
    """The repair's before/after table: clean accuracy on the held-out clean images, then what was done."""
    print_table([{"model": "before", "clean_acc": s["clean_acc_before"]},
                 {"model": f"after {method}", "clean_acc": s["clean_acc_after"]}],
                [("model", "model"), ("clean_acc", f"ACC % ({s['held_out_images']} held-out clean images)")])
    pruned = "-" if s["neurons_pruned"] is None else f"{s['neurons_pruned']} of {s['neurons']}"
    target, name = s["suspected_target"], s.get("suspected_target_name")
    name = f" ({name})" if name else ""
    print(f"neurons pruned: {pruned}; suspected target class: {'-' if target is None else f'{target}{name}'}; "
          f"time: {s['seconds']:.0f} s")


def cmd_bench(args: argparse.Namespace) -> int:
    from onp.bench.grid import load_bench
    from onp.bench.runner import run_bench
    from onp.config import parse_set

    cfg = load_bench(args.config, parse_set(args.set or []))
    results = args.results or str(Path(args.config).with_suffix(".jsonl"))
    rows = run_bench(cfg, results, executor=args.executor, address=args.address, jobs=args.jobs,
                     progress=_progress(), show_cell_progress=not args.quiet, max_cells=args.max_cells,
                     only=args.only, models_only=args.models_only)
    if args.models_only:
        print(f"the models of the grid{' slice' if args.only else ''} are in {cfg.zoo}")
        return 0
    print(f"{len(rows)} rows in {results}")
    print_table([{"attack": r["attack"]["name"], "defense": r["defense"], "seed": r["seed"], **{
        k: r[k] for k in ("clean_acc", "asr", "ra", "der", "wall_time")}} for r in rows],
        [("attack", "attack"), ("defense", "defense"), ("seed", "seed"), ("clean_acc", "ACC %"), ("asr", "ASR %"),
         ("ra", "RA %"), ("der", "DER %"), ("wall_time", "seconds")])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from onp.bench.report import write_report

    out = write_report(args.results, args.out, title=args.title, command=args.command_line, checks=args.checks,
                       compare=args.compare)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onp.demo import run_demo

    rows = run_demo(args.out, progress=_progress())
    print()
    print("digits (scikit-learn), small CNN, BadNets 10% poison, target 0; ONP with 200 clean images:")
    print_table(rows, [("model", "model"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %"),
                       ("seconds", "seconds")])
    return 0


# --- parser ----------------------------------------------------------------------------------------------------
OVERWRITE_HELP = "replace an earlier onp output at --out (a folder holding anything else is always refused)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def _attack_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with keys of the AttackRun config")
    p.add_argument("--dataset")
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true", help="fetch the dataset archive if missing")
    p.add_argument("--model", help="registry name or path/file.py:factory")
    p.add_argument("--width", type=int)
    p.add_argument("--attack")
    p.add_argument("--poison-rate", type=float,
                   help="fraction poisoned: of the training set, of the target class for clean-label attacks")
    p.add_argument("--target", type=int, help="target label")
    p.add_argument("--all-to-all", action="store_true")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--reference", help="a saved clean model for lc/trojannn/inputaware")
    p.add_argument("--reference-epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="output directory (default runs/model)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. attack.params.alpha=0.1")
    _common(p)
    p.set_defaults(func=cmd_attack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onp", description="Remove backdoors from image classifiers (ONP).")
    parser.add_argument("--version", action="version", version=f"onp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered datasets, models and attacks")
    p.add_argument("what", nargs="?", choices=["datasets", "models", "attacks", "defenses"])
    p.set_defaults(func=cmd_list)

    for name, text in (("attack", "train a backdoored model"), ("train", "train a clean model (attack flags ignored)")):
        _attack_parser(sub.add_parser(name, help=text, description=f"{text.capitalize()}. Precedence: defaults < "
                                      "--config YAML < flags."))

    p = sub.add_parser("eval", help="ACC, ASR and RA of saved models")
    p.add_argument("models", nargs="+", help="model directories made by onp attack / defend / repair")
    p.add_argument("--data-root", help="dataset folder (default: the one recorded in the model)")
    p.add_argument("--arch", help="the user architecture file, for models that use one")
    p.add_argument("--trigger-from", metavar="DIR",
                   help="evaluate with the dataset and trigger of this model made by onp attack (for models "
                        "repaired by onp repair)")
    p.add_argument("--images", metavar="DIR",
                   help="measure on this folder of class folders (your own test images) instead of the test split")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("defend", help="repair a model made by onp attack, then evaluate it")
    p.add_argument("model", help="model directory (from onp attack)")
    p.add_argument("--method", default="onp", help="defense name (onp list defenses)")
    p.add_argument("--out", required=True, help="output directory of the repaired model")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--data-root", help="dataset folder (default: the one recorded in the model)")
    p.add_argument("--defense-size", type=int, default=500, help="clean images, class-balanced (default 500)")
    p.add_argument("--defense-fraction", type=float, help="or a fraction of the training set (0.01 = 1%%)")
    p.add_argument("--seed", type=int, default=0, help="seeds the clean split and the defense")
    p.add_argument("--arch", help="the user architecture file, for models that use one")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation afterwards")
    p.add_argument("--slim", action="store_true", help="physically remove pruned channels (Torch-Pruning)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="defense hyperparameter, e.g. max_steps=30")
    _common(p)
    p.set_defaults(func=cmd_defend)

    p = sub.add_parser("repair", help="repair your own model with a folder of clean images")
    p.add_argument("--arch", required=True, help="registry name or path/to/file.py:factory")
    p.add_argument("--weights", required=True, help="model.safetensors (or a .pt/.pth state dict, loaded safely)")
    p.add_argument("--clean", required=True, help="folder of clean images in class subfolders")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--method", default="onp", help="defense name (default onp)")
    p.add_argument("--arch-kwargs", action="append", metavar="KEY=VALUE",
                   help="architecture argument, e.g. width=16 (default: from a model.json beside the weights)")
    p.add_argument("--input-size", type=int, help="image side the model takes (default: from model.json, if any)")
    p.add_argument("--resize", action="store_true", help="resize the clean images to --input-size")
    p.add_argument("--mean", help="normalization mean, comma-separated, if the model expects normalized input")
    p.add_argument("--std", help="normalization std, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slim", action="store_true", help="physically remove pruned channels (Torch-Pruning)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="defense hyperparameter")
    _common(p)
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("bench", help="run a benchmark grid (resumable)")
    p.add_argument("config", help="benchmark YAML, e.g. benchmarks/cifar10_cpu.yaml")
    p.add_argument("--results", help="JSON-lines results file (default: CONFIG with .jsonl)")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--jobs", type=int, default=1, help="cells at once on the local executor (default 1)")
    p.add_argument("--max-cells", type=int, help="stop after this many new cells")
    p.add_argument("--only", action="append", metavar="GLOB",
                   help="run only the cells whose id matches, e.g. '*-sig-*/onp-s0-*' (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar for the cell in flight")
    p.add_argument("--models-only", action="store_true",
                   help="train the grid's missing models (those of --only's cells) and stop; two such runs with "
                        "different --only train on two cores")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="Markdown, HTML and plots from benchmark results")
    p.add_argument("results", help="JSON-lines results of onp bench")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--title", help="report name (default: the benchmark's)")
    p.add_argument("--command-line", help="the command that made the results, printed in the report")
    p.add_argument("--checks", help="YAML of published behaviour to hold the rows against (a 'checks:' list)")
    p.add_argument("--compare", metavar="RESULTS",
                   help="another benchmark's results (e.g. the development set's): where the two disagree per "
                        "defense on mean ASR, ACC drop and DER")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="offline demo on scikit-learn digits (about two minutes)")
    p.add_argument("--out", default="runs/demo", help="where the demo's models go (default runs/demo)")
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    func: Callable[[argparse.Namespace], int] = args.func
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            return func(args)
    except OnpError as e:
        print(f"onp: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder onp may not write, a file it may not read: the system's words, one line
        print(f"onp: error: {e.strerror or e}: {e.filename}" if e.filename else f"onp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
