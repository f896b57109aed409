"""`torchsmith sweep`: Optuna trials of one base config (every `train` flag), shared through a database."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from torchsmith.cli.flags import TRAIN_FLAGS, add_config_flags, config_from_args
from torchsmith.errors import UsageError

SEARCH_HELP = (
    "a setting to search, as KEY=SPACE: log(a,b) (float, log scale), float(a,b), int(a,b[,step]) "
    "or [a,b,c] (choices, lists allowed), e.g. 'optim.lr=log(1e-4,1e-1)' (repeatable)"
)


def add_parsers(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="search settings with Optuna: trials of one base config, pruned early")
    add_config_flags(sweep)
    sweep.add_argument("--compile", action="store_true", default=None, help="train through torch.compile")
    sweep.add_argument("--search", action="append", default=[], metavar="KEY=SPACE", help=SEARCH_HELP)
    sweep.add_argument("--trials", type=int, default=20, help="trials in the study, over all processes")
    sweep.add_argument("--metric", default=None, help="what to optimise, e.g. val_accuracy (default train.monitor)")
    sweep.add_argument("--direction", choices=["max", "min"], default=None, help="default: min for losses, else max")
    sweep.add_argument("--sampler", choices=["tpe", "grid", "random"], default="tpe", help="Optuna sampler")
    sweep.add_argument(
        "--pruner", choices=["median", "hyperband", "none"], default="median", help="stop poor trials after an epoch"
    )
    sweep.add_argument("--workers", type=int, default=1, help="trials at once on this machine (one process each)")
    sweep.add_argument(
        "--storage",
        default=None,
        help="study database URL shared by processes and machines (default SQLite "
        "in the sweep's folder), e.g. sqlite:///sweep.db or postgresql://host/db",
    )
    sweep.add_argument("--study-name", default=None, help="the study's name in the storage (default: folder name)")
    sweep.add_argument(
        "--sampler-seed",
        type=int,
        default=None,
        help="seed of the sampler's choices (one process only: "
        "processes sharing a study with one seed would propose the same settings)",
    )
    sweep.add_argument(
        "--worker", action="store_true", help="run trials only, no table or page (what --workers N starts)"
    )
    sweep.add_argument("--debug", action="store_true", help="show tracebacks")


def command_sweep(args: argparse.Namespace) -> int:
    from torchsmith.app import default_run_dir
    from torchsmith.sweep.report import best_command, best_rows, trial_rows, write_sweep_report
    from torchsmith.sweep.space import parse_space
    from torchsmith.sweep.study import make_plan, open_study, run_worker
    from torchsmith.sweep.workers import run_workers

    require_optuna()
    space = parse_space(args.search)
    base = config_from_args(args)
    folder = Path(base.run_dir) if base.run_dir else Path("sweeps") / default_run_dir(base).name
    metric = args.metric or base.train.monitor
    direction = args.direction or ("min" if "loss" in metric or "perplexity" in metric else "max")
    if args.workers <= 0:
        raise UsageError(f"--workers must be a positive integer, got {args.workers}")
    plan = make_plan(
        base, space, folder, metric=metric, direction={"max": "maximize", "min": "minimize"}[direction],
        trials=args.trials, sampler=args.sampler, pruner=args.pruner, storage=args.storage or "",
        study_name=args.study_name or "", sampler_seed=args.sampler_seed,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # between trials too: the running trial is queued again
    study = open_study(plan)
    if not args.worker:
        print(f"sweep {plan.study_name}: {plan.trials} trials in {folder} (storage {plan.storage})", file=sys.stderr)
    if args.workers > 1:
        code = run_workers(args.argv[1:], args.workers, plan.storage, folder)
        if code:
            return code
    else:
        run_worker(study, plan)
    if args.worker:
        return 0
    rows = trial_rows(study, plan)
    best = best_rows(rows, plan, count=1)
    command = best_command(base_words(args), best[0], plan) if best else ""
    table, page = write_sweep_report(study, plan, command)
    states = [row["state"] for row in rows]
    print(
        f"{len(rows)} trials: {states.count('completed')} completed, {states.count('pruned')} pruned, "
        f"{states.count('failed')} failed; table {table}, page {page}",
        file=sys.stderr,
    )
    if not best:
        print("no trial completed")
        return 1
    print(f"best: trial {best[0]['number']}  {metric} {best[0][metric]:.4f}")
    print(command)
    return 0


def stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # what SIGINT does; inside training StopOnSignal saves the state first


def require_optuna() -> None:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise UsageError("torchsmith sweep needs Optuna, which is not installed: pip install 'torchsmith[sweep]'")


def base_words(args: argparse.Namespace) -> list[str]:
    """The base config's flags as given, for the best trial's `torchsmith train` command line."""
    words: list[str] = []
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and flag != "--run-dir":
            words += [flag, str(value)]
    for flag, value in (("--model-args", args.model_args), ("--config", args.config)):
        if value is not None:
            words += [flag, value]
    for assignment in args.set:
        words += ["--set", assignment]
    return [*words, "--compile"] if args.compile else words


COMMANDS = {"sweep": command_sweep}
