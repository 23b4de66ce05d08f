"""``moe-study``: the command line of the study platform.

Every subcommand is a thin handler over a plain function that tests call directly. The
functions that run things live in other modules and are imported inside their handler, so a
command whose module is missing (or whose heavy imports are slow) costs the others nothing.

Exit codes: 0 success, 2 bad input (a ``ConfigError``, printed to stderr, or a usage error),
1 a run that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Sequence

from trainables.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-study",
        description="MoE routing study platform: train one trial, run and query studies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect the data mix")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    describe = data_sub.add_parser("describe", help="domains, sources and sizes of a trial config's mix")
    describe.add_argument("config", nargs="?", help="trial config YAML (default: the built-in defaults)")
    describe.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key (repeatable)")
    _format_arg(describe)
    describe.set_defaults(handler=cmd_data_describe)

    train = sub.add_parser("train", help="train one trial, no Ray needed")
    train.add_argument("config", help="trial config YAML (nested sections or dotted keys)")
    train.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, value read as YAML (repeatable): --set train.steps=50")
    _format_arg(train)
    train.add_argument("--json", dest="fmt", action="store_const", const="json",
                       help="print the final metrics as JSON (same as --format json)")
    train.add_argument("--out", help="directory for the expert x domain table (Parquet)")
    train.set_defaults(handler=cmd_train)

    validate = sub.add_parser("validate", help="check a study spec and print what it would run")
    validate.add_argument("spec", help="study spec YAML")
    _spec_set_arg(validate)
    validate.set_defaults(handler=cmd_validate)

    run = sub.add_parser("run", help="run a study spec with Ray Tune, Optuna and MLflow")
    run.add_argument("spec", help="study spec YAML")
    _tracking_args(run)
    run.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    run.add_argument("--name", help="study / MLflow experiment name (default: the spec's name)")
    run.add_argument("--storage", help="where the study keeps its state and Tune's results: a "
                     "folder or a URI such as s3://bucket/prefix, shared by every node on a "
                     "cluster (default: $MOE_STUDY_STORAGE, else ./runs)")
    _spec_set_arg(run)
    _verbose_arg(run)
    run.set_defaults(handler=cmd_run)

    resume = sub.add_parser("resume", help="resume an interrupted study")
    resume.add_argument("name", help="the study's name")
    _tracking_args(resume)
    resume.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    resume.add_argument("--storage", help="the storage the study ran with (folder or URI; "
                        "default: $MOE_STUDY_STORAGE, else ./runs)")
    _verbose_arg(resume)
    resume.set_defaults(handler=cmd_resume)

    studies = sub.add_parser("studies", aliases=["list"],
                             help="the studies in a storage root: state and trial counts")
    studies.add_argument("--storage", help="the storage root (folder or URI; default: "
                         "$MOE_STUDY_STORAGE, else ./runs)")
    _format_arg(studies)
    studies.set_defaults(handler=cmd_studies)

    best = sub.add_parser("best", help="the best trials of a study, from MLflow")
    best.add_argument("experiment", help="MLflow experiment (the study's name)")
    best.add_argument("--top", type=_positive_int, default=10, help="how many runs (default 10)")
    best.add_argument("--by", default="gap_purity", help="metric to rank by (default gap_purity)")
    best.add_argument("--mode", choices=("min", "max"),
                      help="min or max (default: the metric's natural direction)")
    best.add_argument("--where", help="filter: router.method=lbl, purity>0.3, or an MLflow filter "
                                      "such as \"params.`router.scope` = 'global_batch'\"")
    best.add_argument("--include-reference", action="store_true", help="rank the reference runs too")
    best.add_argument("--include-stopped", action="store_true",
                      help="rank trials the scheduler stopped early too (their metrics are from an earlier step)")
    best.add_argument("--show-cost", action="store_true",
                      help="add each run's CPU- and GPU-hours, and its money when the study's spec has a "
                           "price table (cost:)")
    _format_arg(best)
    _tracking_args(best)
    best.set_defaults(handler=cmd_best)

    report = sub.add_parser("report", help="write a study report (tables and plots)")
    report.add_argument("experiment", help="MLflow experiment (the study's name)")
    report.add_argument("--out", help="output directory (default: report-<experiment>)")
    report.add_argument("--compare", action="append", default=[], metavar="EXPERIMENT",
                        help="add a section comparing the cells with another study's (repeatable)")
    _tracking_args(report)
    report.set_defaults(handler=cmd_report)
    return parser


def package_version() -> str:
    """The installed package's version (``importlib.metadata``), ``unknown`` when it is not
    installed (run from a checkout on ``PYTHONPATH``)."""
    from importlib import metadata

    try:
        return metadata.version("moe-routing-study")
    except metadata.PackageNotFoundError:
        return "unknown"


def _spec_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override the spec (repeatable): fix a key (--set model.d_model=256), "
                        "fix a searched key (--set train.seed=0) or keep some of its choices "
                        "(--set 'train.seed=[0, 1]')")


def _format_arg(p: argparse.ArgumentParser) -> None:
    """The one output-format flag of the commands that print data."""
    p.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table",
                   help="table (default, for reading), json or csv (every field)")


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<absolute path of ./mlflow.db>)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (got {value})")
    return value


def _tracking_uri(args: argparse.Namespace) -> str:
    from study.naming import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def _exit_code(result: Any) -> int:
    """Handlers of long runs may return an exit code; anything else means success."""
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


# -- handlers ------------------------------------------------------------------------------------
def cmd_data_describe(args: argparse.Namespace) -> int:
    from study.results.queries import format_rows
    from study.spec import load_trial_config
    from trainables.data.mix import describe_mix

    cfg = load_trial_config(args.config, args.sets)
    described = describe_mix(cfg.data)
    if args.fmt == "json":
        print(json.dumps(described, indent=2))
    else:
        _emit(format_rows(described["domains"], args.fmt))
        if args.fmt == "table":
            print(f"\nmix content hash {described['content_hash']} "
                  f"(cache key {described['cache_key']})")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from study.spec import load_trial_config
    from trainables.training import train_main

    cfg = load_trial_config(args.config, args.sets)
    return _exit_code(train_main(cfg, out_dir=args.out, fmt=args.fmt))


def cmd_validate(args: argparse.Namespace) -> int:
    from study.spec import load_spec

    spec = load_spec(args.spec, sets=args.sets)
    print(describe_spec(spec))
    return EXIT_OK


def describe_spec(spec: Any) -> str:
    """A short human summary of a valid spec (what ``validate`` prints)."""
    lines = [f"{spec.source or spec.name}: valid study spec {spec.name!r} ({spec.content_hash()})"]
    if spec.description:
        lines.append(f"  {spec.description.strip()}")
    for p in spec.params:
        values = p.choices if p.is_choice else f"{p.distribution} [{p.low}, {p.high}]"
        cond = " when " + ", ".join(f"{k} in {v}" for k, v in p.when.items()) if p.when else ""
        lines.append(f"  search {p.key}: {values}{cond}")
    obj = spec.objective
    goal = ", ".join(f"{m} ({mode})" for m, mode in zip(obj.metrics, obj.modes))
    if obj.constraints:
        goal += "; constraints " + ", ".join(
            f"{m} {' '.join(f'{k} {v:g}' for k, v in b.items())}" for m, b in obj.constraints.items()
        )
    lines.append(f"  objective: {goal}")
    grid = " (grid)" if spec.is_grid else ""
    budget = f", at most {spec.budget.time_s:g} s" if spec.budget.time_s else ""
    lines.append(f"  trials: {spec.num_trials}{grid}{budget}; sampler {spec.sampler.type}, "
                 f"scheduler {spec.scheduler.type}")
    res = spec.resources.per_trial()
    lines.append(f"  per trial: {res['CPU']:g} CPU, {res['GPU']:g} GPU, {spec.resources.workers} worker(s); "
                 f"reference router: {'yes' if spec.reference.enabled else 'no'}")
    if spec.cost is not None:
        c = spec.cost
        lines.append(f"  prices: {c.per_cpu_hour:g} {c.currency} a CPU-hour, {c.per_gpu_hour:g} a GPU-hour"
                     + "".join(f"; {name} {p.per_hour:g} a node-hour" for name, p in c.per_node_type.items()))
    return "\n".join(lines)


def _verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show Ray's, Tune's and Optuna's own output (tables, logs, worker output)")


def cmd_run(args: argparse.Namespace) -> int:
    from study.run.runner import run_study
    from study.spec import load_spec

    spec = load_spec(args.spec, sets=args.sets)
    return _exit_code(run_study(
        spec,
        tracking_uri=args.tracking_uri or spec.tracking.uri or _tracking_uri(args),
        address=args.address,
        name=args.name,
        storage=args.storage,
        on_success=_print_best,
        verbose=args.verbose,
    ))


def cmd_resume(args: argparse.Namespace) -> int:
    from study.run.runner import resume_study

    # only a store the user named: the study's own is in its state (a default is no request)
    return _exit_code(resume_study(
        args.name, tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        address=args.address, storage=args.storage,
        on_success=_print_best, verbose=args.verbose,
    ))


def _print_best(name: str, tracking_uri: str, experiment: str, by: str) -> None:
    """After a study ended well: its five best trials by the objective."""
    from study.results.queries import best_runs, format_best

    try:
        rows = best_runs(tracking_uri, experiment, top=5, by=by)
    except ConfigError:
        return
    print(f"[{name}] best by {by}:\n{format_best(rows, by)}", flush=True)
    print("\n".join(next_commands(name, tracking_uri, experiment)), flush=True)


def next_commands(name: str, tracking_uri: str, experiment: str) -> list[str]:
    """What to run next: the report, and the MLflow UI with the direct address of the study's
    runs table (its shared view: the trials flat, sorted by the objective)."""
    from mlflow.tracking import MlflowClient

    from study import naming
    from study.run.mlflow_layout import runs_page

    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    lines = ["", "next:", f"  moe-study report {experiment} --out report-{name}    # report.md with figures"]
    if found is None:
        return lines
    if tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  open {runs_page(tracking_uri, found.experiment_id, name)}    # the MLflow UI of this store")
    else:
        lines += [f"  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000",
                  f"  then open {runs_page('http://127.0.0.1:5000', found.experiment_id, name)}"]
    parents = MlflowClient(tracking_uri).search_runs(
        [found.experiment_id], filter_string=f"tags.`{naming.TAG_ROLE}` = '{naming.ROLE_STUDY}' AND "
        f"tags.`{naming.TAG_STUDY}` = {naming.filter_literal(name)}", max_results=1)
    tags = parents[0].data.tags if parents else {}
    if tags.get(naming.TAG_OPTUNA_STORAGE):  # pip install optuna-dashboard
        lines.append(f"  optuna-dashboard {tags[naming.TAG_OPTUNA_STORAGE]} --host 127.0.0.1    "
                     f"# study {tags.get(naming.TAG_OPTUNA_STUDY, name)}")
    return lines


def cmd_best(args: argparse.Namespace) -> int:
    from study.results.queries import best_runs, format_best

    rows = best_runs(
        _tracking_uri(args), args.experiment, top=args.top, by=args.by, where=args.where,
        include_reference=args.include_reference, mode=args.mode, include_stopped=args.include_stopped,
        show_cost=args.show_cost,
    )
    _emit(format_best(rows, args.by, args.fmt))
    return EXIT_OK


def _emit(text: str) -> None:
    """Print a command's output once: CSV text ends with its own newline."""
    print(text, end="" if text.endswith("\n") else "\n")


def cmd_studies(args: argparse.Namespace) -> int:
    from study.results.studies import format_studies, list_studies

    _emit(format_studies(list_studies(args.storage), args.fmt))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from study.results.report import write_report

    out = write_report(args.experiment, out_dir=args.out, tracking_uri=_tracking_uri(args),
                       compare=args.compare)
    if out is not None and not isinstance(out, int):
        print(f"report written to {out}")
    return _exit_code(out)


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"moe-study {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as err:  # a broken or partial install: name the module
        print(f"moe-study {args.command}: {err.name or 'a module'} is not available: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"moe-study {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception:  # a failed run: show where, exit 1
        traceback.print_exc()
        print(f"moe-study {args.command}: failed", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
