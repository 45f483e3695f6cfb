"""`sgpo`: run the pipeline, inspect configs, recompute benchmark metrics.

sgpo run [CONFIG] [key=value ...] [--force STAGE ...]
sgpo evaluate [EVAL_CONFIG] [key=value ...]   AlpacaEval 2.0 / Arena-Hard / pairwise judging of a model
sgpo stage NAME [CONFIG] [key=value ...] --INPUT URI ...   run one stage alone (= python -m tasks.NAME)
sgpo compare [PRESET] [key=value] [--method RECIPE ...]   recipes side by side, beside the papers' numbers
sgpo config [CONFIG] [key=value ...]          print the resolved config
sgpo deploy                                   register work pools and deployments (docs/cluster.md)
sgpo verify STORE                             check every artifact against its manifest (sha256)
sgpo show ARTIFACT_URI                        an artifact's settings as the stage used them, and its lineage
sgpo metrics alpaca-eval ANNOTATIONS.json     AlpacaEval 2.0 WR / LC from official-format files
sgpo metrics arena-hard JUDGMENTS.jsonl ...   Arena-Hard score and 95% CI
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EMBEDDED_PREFECT_DEFAULTS = {
    # The ephemeral API server sometimes needs more than Prefect's default 20 s on a cold start.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: the first item is the config unless it is an override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _store_problem(store) -> str | None:
    """Why the run's store cannot be used (unknown scheme, unwritable folder, bucket), checked
    before Prefect starts (a minute or more under load); the flow checks it again for UI runs."""
    from artifacts.store import StoreError, check_store

    try:
        check_store(store.url, store.storage_options)
    except StoreError as e:
        return str(e)
    return None


def _quiet_prefect_console() -> None:
    """The CLI prints one line per stage and a one-paragraph error; Prefect's console output
    (tracebacks included) is for -v. Its API handlers stay, so the UI keeps every log line."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from sgpo.core.logs import warnings_to_console

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, PrefectConsoleHandler):
                h.setLevel(logging.CRITICAL + 1)
    # sgpo's own warnings stay: a stale lease taken over or a damaged artifact recomputed is the
    # only sign of repaid or redone work
    warnings_to_console()


def cmd_run(args: argparse.Namespace) -> int:
    from sgpo.config import ConfigError, load_config
    from sgpo.models.source import resolve_model_source

    source, overrides = _split_args(args.items)
    try:
        cfg = load_config(source, overrides)  # fail fast, before Prefect starts
    except ConfigError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    if problem := _store_problem(cfg.store):
        print(f"sgpo: {problem}", file=sys.stderr)
        return 2
    _threads(cfg.threads)
    _prepare_prefect(args.verbose)
    try:  # a missing / broken GGUF, an uninstalled packaged model, a folder without a model; after
        # the environment defaults: checking a GGUF imports transformers, which reads them once
        resolve_model_source(cfg.model.name_or_path, cfg.model.revision)
    except ValueError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    from flows.pipeline import FORCEABLE, check_force, check_settings_are_read, sgpo_pipeline

    try:
        check_force(args.force, FORCEABLE)
        check_settings_are_read(cfg)  # an override the recipe would ignore: before any work
    except ValueError as e:
        print(f"sgpo: {e}", file=sys.stderr)  # the sentence the flow raises
        return 2
    print(
        f"[sgpo] running {cfg.name} (store {cfg.store.url}, tracking {cfg.tracking.mlflow_uri})",
        flush=True,
    )
    t0 = time.perf_counter()
    report, rc = _call_flow(sgpo_pipeline, config=cfg, force=args.force)
    if report is None:
        return rc
    n_cached = sum(s.status == "cached" for s in report.stages)
    print(
        f"[sgpo] done in {time.perf_counter() - t0:.1f}s: {len(report.stages) - n_cached} ran, {n_cached} cached",
        flush=True,
    )
    print(f"[sgpo] final policy: {report.final_policy}")
    if report.report_uri:
        print(
            f"[sgpo] report: {report.report_uri}/report.html  (copy: sgpo report {report.report_uri} -o report.html)"
        )
    from sgpo.evals.pairwise import label_note

    j = report.judge
    from flows.reporting import eval_rows_note

    # what the judge could not read, and the eval rows prepare dropped: counted on the final line
    notes = label_note(j) + eval_rows_note(report.stages)
    if j.get("win_rate") is not None:
        print(
            f"[sgpo] judge: win rate {j['win_rate']:.2f} (SE {j.get('standard_error') or 0:.2f}) vs the baseline, "
            f"{j['n_labelled']} of {j['n']} prompts judged{notes}"
        )
    elif (j.get("unlabelled_reasons") or {}).get("no_logprobs"):
        print(
            f"[sgpo] judge: no win rate: the judge endpoint returned no logprobs for "
            f"{j['unlabelled_reasons']['no_logprobs']} of {j.get('n', 0)} answers, and no 'm'/'M' "
            f"text label{notes}"
        )
    else:
        print(
            f"[sgpo] judge: no win rate: none of {j.get('n', 0)} judge answers had 'm' or 'M' among its top "
            f"logprobs (the judge did not follow the one-token answer format; a capable judge labels almost "
            f"every row){notes}"
        )
    for line in (report.testbed or {}).get(
        "lines", []
    ):  # report_vs_sft (the testbed): what the numbers mean
        print(line)
    return 0


def _threads(setting) -> None:
    """CPU threads for this process and those it starts, set before anything imports torch (its
    OpenMP pool reads the environment once, when it loads)."""
    from sgpo.core.threads import configure_threads

    configure_threads(setting)


def _prepare_prefect(verbose: bool) -> None:
    import warnings

    for k, v in EMBEDDED_PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)
    # Deprecation notices from inside transformers/TRL are for their maintainers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*|trl\..*")
    from prefect import flow  # noqa: F401  (importing the engine sets up Prefect's logging, adjusted next)

    if not verbose:
        _quiet_prefect_console()


def _call_flow(flow_fn, **params):
    """(report, 0), or (None, exit code) after a one-paragraph message: the flow's error names the
    stage; the traceback is for -v / SGPO_DEBUG."""
    try:
        return flow_fn(**params), 0
    except KeyboardInterrupt:
        print(
            "sgpo: interrupted; finished stages and paid LLM calls are kept, and a new run resumes from them",
            file=sys.stderr,
        )
        return None, 130
    except Exception as e:
        print(f"sgpo: run failed: {e}", file=sys.stderr)
        print(
            "sgpo: finished stages are kept; fix the cause and run the same command again to resume "
            "from the failed stage (-v shows Prefect's logs and the traceback)",
            file=sys.stderr,
        )
        if os.environ.get("SGPO_DEBUG"):
            raise
        return None, 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sgpo.config import ConfigError, load_evaluation_config

    source, overrides = _split_args(args.items)
    try:
        cfg = load_evaluation_config(source, overrides)
    except ConfigError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    if problem := _store_problem(cfg.store):
        print(f"sgpo: {problem}", file=sys.stderr)
        return 2
    _threads(cfg.threads)
    _prepare_prefect(args.verbose)
    from flows.evaluate import EVALUATION_STAGES, evaluate
    from flows.pipeline import check_force
    from sgpo.report.summary import summary_lines

    try:
        check_force(args.force, EVALUATION_STAGES)
    except ValueError as e:
        print(f"sgpo: {e}", file=sys.stderr)  # the sentence the flow raises
        return 2
    report, rc = _call_flow(evaluate, config=cfg, force=args.force)
    if report is None:
        return rc
    for line in summary_lines(report):
        print(line)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """`sgpo stage NAME ...` is `python -m tasks.NAME ...`."""
    from sgpo.core import stage_main
    from tasks import ALL_STAGES, get_stage

    if args.name not in ALL_STAGES:
        print(
            f"sgpo: unknown stage {args.name!r}; stages: {', '.join(ALL_STAGES)}", file=sys.stderr
        )
        return 2
    for k, v in EMBEDDED_PREFECT_DEFAULTS.items():
        os.environ.setdefault(k, v)
    return stage_main(get_stage(args.name), args.rest)


def cmd_compare(args: argparse.Namespace) -> int:
    """`sgpo compare [PRESET] [key=value ...] [--method M ...] [-o DIR]`: recipes beside the papers' numbers."""
    from pathlib import Path

    from sgpo.config import ConfigError, load_config, method_names

    source, overrides = _split_args(args.items)
    methods = args.method or method_names()
    try:
        for m in methods:
            load_config(
                source, [*overrides, f"method={m}"]
            )  # fail fast on a bad preset, key or recipe
    except ConfigError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    _prepare_prefect(args.verbose)
    from flows.compare import compare, markdown, to_csv

    table, rc = _call_flow(compare, preset=source or "tiny", methods=methods, overrides=overrides)
    if table is None:
        return rc
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(table))
    (out / "compare.csv").write_text(to_csv(table))
    print(markdown(table), end="")
    print(f"[sgpo] written {out / 'compare.md'} and {out / 'compare.csv'}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from sgpo.config import ConfigError, load_config

    source, overrides = _split_args(args.items)
    try:
        cfg = load_config(source, overrides)
    except ConfigError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sgpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the SGPO pipeline (default: the tiny CPU preset)")
    run.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value]",
        help="preset name or YAML file, then overrides",
    )
    run.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="recompute this stage (repeatable)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's own log lines and tracebacks"
    )
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser(
        "evaluate", help="AlpacaEval 2.0 / Arena-Hard / pairwise evaluation (default: eval-tiny)"
    )
    ev.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value]",
        help="eval preset or YAML file, then overrides",
    )
    ev.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="recompute this stage (repeatable)",
    )
    ev.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's own log lines and tracebacks"
    )
    ev.set_defaults(func=cmd_evaluate)
    cmp_ = sub.add_parser(
        "compare",
        help="the recipes of one preset from the store, each cell beside the paper's number",
    )
    cmp_.add_argument(
        "items", nargs="*", metavar="[PRESET] [key=value]", help="model preset, then overrides"
    )
    cmp_.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="RECIPE",
        help="a recipe of configs/methods/ (repeatable; default: all)",
    )
    cmp_.add_argument(
        "-o", "--output", default=".sgpo/compare", help="folder for compare.md and compare.csv"
    )
    cmp_.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's own log lines and tracebacks"
    )
    cmp_.set_defaults(func=cmd_compare)
    st = sub.add_parser(
        "stage", help="run one stage alone (`sgpo stage NAME -h` lists its inputs)", add_help=False
    )
    st.add_argument("name", metavar="NAME", help="the stage, e.g. sft, dpo, judge")
    st.add_argument(
        "rest", nargs=argparse.REMAINDER, help="[CONFIG] [key=value ...] --INPUT URI ... (see -h)"
    )
    st.set_defaults(func=cmd_stage)
    cfg = sub.add_parser("config", help="print the resolved configuration")
    cfg.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    cfg.set_defaults(func=cmd_config)
    from sgpo.cli.deploy import add_deploy_parser
    from sgpo.cli.metrics import add_metrics_parser

    add_metrics_parser(sub)
    add_deploy_parser(sub)
    from sgpo.cli.report import add_report_parser

    add_report_parser(sub)
    from sgpo.cli.store import add_store_parsers

    add_store_parsers(sub)
    return p


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def parse_cli(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`argv` parsed with flags anywhere among a command's positional items: `sgpo run tiny -v
    dpo.beta=0.2` and `sgpo run tiny --force annotate k=v` keep every override (argparse's plain
    parsing stops the positional list at the first flag and calls the rest unrecognized)."""
    sub = _subcommands(parser)
    if sub is not None and argv and argv[0] in sub.choices:
        args = parse_cli(sub.choices[argv[0]], argv[1:])
        if sub.dest != argparse.SUPPRESS:
            setattr(args, sub.dest, argv[0])
        for k, v in parser._defaults.items():
            args.__dict__.setdefault(k, v)
        return args
    positionals = [a for a in parser._actions if not a.option_strings]
    if sub is not None or any(a.nargs == argparse.REMAINDER for a in positionals):
        return parser.parse_args(argv)  # `sgpo stage NAME ...` hands the rest to the stage's parser
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(build_parser(), sys.argv[1:] if argv is None else list(argv))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
