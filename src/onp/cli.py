"""The ``onp`` command line. The only place that sets logging handlers and draws progress bars."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from onp import __version__
from onp.errors import OnpError

log = logging.getLogger("onp")


def _progress():  # noqa: ANN202 - imported lazily so `onp --help` stays fast
    from onp.utils.progress import tqdm_progress

    return tqdm_progress


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.2f}"


def print_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    """A small fixed-width table on stdout: ``cols`` are (key, header)."""
    widths = [max(len(h), *(len(_cell(r.get(k), k)) for r in rows)) for k, h in cols]
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
    from onp.models import list_models

    groups = {"datasets": list_datasets, "models": list_models, "attacks": list_attacks}
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
    meta = run_attack(cfg, progress=_progress(), clean=clean)
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
        m = run_eval(path, data_root=args.data_root, arch=args.arch, device=args.device, progress=_progress())
        rows.append({"model": str(path), **m})
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, [("model", "model"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %")])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onp.demo import run_demo

    rows = run_demo(args.out, progress=_progress())
    print()
    print("digits (scikit-learn), small CNN, BadNets 10% poison, target 0:")
    print_table(rows, [("model", "model"), ("clean_acc", "ACC %"), ("asr", "ASR %"), ("ra", "RA %"),
                       ("seconds", "seconds")])
    return 0


# --- parser ----------------------------------------------------------------------------------------------------
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
    p.add_argument("--poison-rate", type=float)
    p.add_argument("--target", type=int, help="target label")
    p.add_argument("--all-to-all", action="store_true")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--reference", help="a saved clean model for lc/trojannn/inputaware")
    p.add_argument("--reference-epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="output directory (default runs/model)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. attack.params.alpha=0.1")
    _common(p)
    p.set_defaults(func=cmd_attack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onp", description="Remove backdoors from image classifiers (ONP).")
    parser.add_argument("--version", action="version", version=f"onp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered datasets, models and attacks")
    p.add_argument("what", nargs="?", choices=["datasets", "models", "attacks"])
    p.set_defaults(func=cmd_list)

    for name, text in (("attack", "train a backdoored model"), ("train", "train a clean model (attack flags ignored)")):
        _attack_parser(sub.add_parser(name, help=text, description=f"{text.capitalize()}. Precedence: defaults < "
                                      "--config YAML < flags."))

    p = sub.add_parser("eval", help="ACC, ASR and RA of saved models")
    p.add_argument("models", nargs="+", help="model directories made by onp attack / defend / repair")
    p.add_argument("--data-root", help="dataset folder (default: the one recorded in the model)")
    p.add_argument("--arch", help="the user architecture file, for models that use one")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="offline demo on scikit-learn digits (about a minute)")
    p.add_argument("--out", default="runs/demo", help="where the demo's models go (default runs/demo)")
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "device", None) is None and "device" in args:
        args.device = "auto"
    func: Callable[[argparse.Namespace], int] = args.func
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            return func(args)
    except OnpError as e:
        print(f"onp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
