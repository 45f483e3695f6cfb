"""`sgpo deploy`: register the work pools and deployments of a team setup on a Prefect server.

    sgpo deploy [--config PRESET] [--set key=value ...] [--eval-config PRESET] [--eval-set key=value ...]
                [--store-url s3://bucket/prefix]
                [--mlflow-uri http://mlflow:5000] [--cuda-pool-type process|kubernetes]
                [--update-pools] [--name DEPLOYMENT ...] [--dry-run]

1. Work pools: `cpu` (process) and `cuda` (process, or kubernetes with `--cuda-pool-type
   kubernetes`) are created from the base job templates in deployments/pools/ if missing
   (`--update-pools` rewrites the templates of existing pools).
2. Default configuration: the preset (configs/PRESET.yaml) with `execution.mode=distributed`,
   the store and the MLflow server, plus `--set` overrides, is written to the Prefect Variables
   `sgpo_pipeline_config` and `sgpo_nightly_config` (the same with rounds=2), and the evaluation
   preset (`--eval-config`, configs/eval-*.yaml) to `sgpo_evaluate_config`; prefect.yaml uses
   them as the deployments' default `config` parameter. Only non-default fields are
   kept (the flow fills in the rest), so the UI's "Custom run" form shows what the preset sets.
3. Deployments: `prefect deploy --all --prefect-file deployments/prefect.yaml`, run from the
   repository root: prefect.yaml is the one description of the deployments.

Everything goes to the server of the current Prefect settings (PREFECT_API_URL or profile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CPU_POOL = "cpu"
CUDA_POOL = "cuda"
DEFAULT_STORE_URL = "s3://sgpo/store"
DEFAULT_MLFLOW_URI = "http://mlflow:5000"
PIPELINE_CONFIG_VARIABLE = "sgpo_pipeline_config"
NIGHTLY_CONFIG_VARIABLE = "sgpo_nightly_config"
NIGHTLY_OVERRIDES = ["rounds=2"]  # SGPO + Step 2
EVALUATE_CONFIG_VARIABLE = "sgpo_evaluate_config"
MAX_VARIABLE_CHARS = 5000  # prefect.types.MAX_VARIABLE_VALUE_LENGTH


class DeployError(RuntimeError):
    pass


def repo_dir() -> Path:
    """The checkout holding deployments/ (SGPO_REPO_DIR in the images, else this file's repository)."""
    env = os.environ.get("SGPO_REPO_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def pools_dir() -> Path:
    return repo_dir() / "deployments" / "pools"


def pool_specs(cuda_pool_type: str = "process") -> list[dict[str, Any]]:
    """Name, worker type and base job template of each pool."""
    if cuda_pool_type not in ("process", "kubernetes"):
        raise DeployError(f"--cuda-pool-type must be process or kubernetes, not {cuda_pool_type!r}")
    specs = [
        {
            "name": CPU_POOL,
            "type": "process",
            "template": pools_dir() / "cpu-process.json",
            "description": "SGPO pipeline flows: orchestration and CPU stages (prepare, base_model, annotate)",
        },
        {
            "name": CUDA_POOL,
            "type": cuda_pool_type,
            "template": pools_dir() / f"cuda-{cuda_pool_type}.json",
            "description": "SGPO GPU stages: sft, sample, ppl_filter, improver_sft, pairs, dpo, sapo, judge, the "
            "evaluation's generate stages and lm_eval (flows/stages.py); the evaluation flow",
        },
    ]
    for s in specs:
        s["base_job_template"] = json.loads(Path(s["template"]).read_text())
    return specs


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def ensure_pools(
    cuda_pool_type: str = "process", *, update: bool = False, dry_run: bool = False
) -> dict[str, str]:
    """Create the pools that are missing; returns {pool: created | exists | updated | would create ...}."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for spec in pool_specs(cuda_pool_type):
            name = spec["name"]
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                pool = None
            if pool is None:
                if dry_run:
                    out[name] = f"would create ({spec['type']}, {spec['template'].name})"
                    continue
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type=spec["type"],
                        description=spec["description"],
                        base_job_template=spec["base_job_template"],
                    )
                )
                out[name] = f"created ({spec['type']}, {spec['template'].name})"
            elif pool.type != spec["type"]:
                raise DeployError(
                    f"work pool {name!r} exists with type {pool.type!r}, not {spec['type']!r}; delete it "
                    f"(`prefect work-pool delete {name}`) or deploy with --cuda-pool-type {pool.type}"
                )
            elif update:
                if dry_run:
                    out[name] = f"would update its base job template from {spec['template'].name}"
                    continue
                client.update_work_pool(
                    name,
                    WorkPoolUpdate(
                        base_job_template=spec["base_job_template"], description=spec["description"]
                    ),
                )
                out[name] = f"updated ({spec['template'].name})"
            else:
                out[name] = f"exists ({pool.type}; --update-pools to rewrite its template)"
    return out


def prefect_deploy_command(prefect_file: Path, names: list[str] | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        "--prefect-file",
        str(prefect_file),
    ]
    if names:
        for n in names:
            cmd += ["--name", n]
    else:
        cmd.append("--all")
    return cmd


def deploy_env() -> dict[str, str]:
    """The environment of `prefect deploy`."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The pull step's `{{ $SGPO_REPO_DIR }}` must reach the deployment unresolved (prefect deploy
    # would fill it from this environment): each worker resolves it to its own checkout.
    env.pop("SGPO_REPO_DIR", None)
    return env


def _fits(name: str, value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value))
    if size > MAX_VARIABLE_CHARS:
        raise DeployError(
            f"the {name} configuration is {size} characters of JSON; a Prefect Variable holds "
            f"at most {MAX_VARIABLE_CHARS}"
        )
    return value


def _team_overrides(store_url: str | None, mlflow_uri: str | None) -> list[str]:
    store_url = store_url or os.environ.get("SGPO_STORE_URL") or DEFAULT_STORE_URL
    mlflow_uri = mlflow_uri or os.environ.get("SGPO_MLFLOW_URI") or DEFAULT_MLFLOW_URI
    team = [f"store.url={store_url}", f"tracking.mlflow_uri={mlflow_uri}"]
    if ui_url := os.environ.get(
        "SGPO_MLFLOW_UI_URL"
    ):  # where browsers reach MLflow (summary links)
        team.append(f"tracking.ui_url={ui_url}")
    return team


def default_configs(
    preset: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    store_url: str | None = None,
    mlflow_uri: str | None = None,
    *,
    eval_preset: str | None = "eval-tiny",
    eval_overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """{variable name: config} for the deployments: the presets, distributed, on the team's store.

    Only fields that differ from the defaults are kept (the flow fills in the rest), so the values
    stay small and the UI's "Custom run" form shows what the preset sets.
    """
    from sgpo.config import ConfigError, load_config

    team = _team_overrides(store_url, mlflow_uri)
    out: dict[str, dict[str, Any]] = {}
    for var, extra in (
        (PIPELINE_CONFIG_VARIABLE, []),
        (NIGHTLY_CONFIG_VARIABLE, NIGHTLY_OVERRIDES),
    ):
        try:
            cfg = load_config(preset, ["execution.mode=distributed", *team, *overrides, *extra])
        except ConfigError as e:
            raise DeployError(str(e)) from None
        out[var] = _fits(preset, cfg.model_dump(mode="json", exclude_defaults=True))
    if eval_preset:
        from sgpo.config import load_evaluation_config

        try:
            # keep the preset's experiment: a `tracking.*` override rebuilds the section from its field defaults
            experiment = load_evaluation_config(eval_preset, eval_overrides).tracking.experiment
            ecfg = load_evaluation_config(
                eval_preset, [*team, f"tracking.experiment={experiment}", *eval_overrides]
            )
        except ConfigError as e:
            raise DeployError(str(e)) from None
        out[EVALUATE_CONFIG_VARIABLE] = _fits(
            eval_preset, ecfg.model_dump(mode="json", exclude_defaults=True)
        )
    return out


def set_config_variables(configs: dict[str, dict[str, Any]]) -> None:
    from prefect.variables import Variable

    for name, value in configs.items():
        Variable.set(name, value, tags=["sgpo"], overwrite=True)


def deploy(
    *,
    prefect_file: Path | None = None,
    names: list[str] | None = None,
    preset: str = "tiny",
    overrides: list[str] | None = None,
    eval_preset: str = "eval-tiny",
    eval_overrides: list[str] | None = None,
    cuda_pool_type: str = "process",
    update_pools: bool = False,
    skip_pools: bool = False,
    store_url: str | None = None,
    mlflow_uri: str | None = None,
    dry_run: bool = False,
) -> int:
    """Pools, default-config variables, then `prefect deploy`; returns prefect's exit status."""
    url = api_url()
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: `sgpo deploy` registers pools and deployments on a Prefect server "
            "(e.g. `export PREFECT_API_URL=http://127.0.0.1:4200/api` after `prefect server start`)"
        )
    prefect_file = (prefect_file or repo_dir() / "deployments" / "prefect.yaml").resolve()
    if not prefect_file.exists():
        raise DeployError(f"{prefect_file} not found (set SGPO_REPO_DIR to the sgpo checkout)")
    configs = default_configs(
        preset,
        overrides or [],
        store_url,
        mlflow_uri,  # fail fast on a bad config
        eval_preset=eval_preset,
        eval_overrides=eval_overrides or [],
    )
    doing = "dry run: would deploy" if dry_run else "deploying"
    print(f"[sgpo] {doing} to {url} from {prefect_file}", flush=True)
    if not skip_pools:
        for pool, what in ensure_pools(
            cuda_pool_type, update=update_pools, dry_run=dry_run
        ).items():
            print(f"[sgpo] work pool {pool}: {what}", flush=True)
    cfg = configs[PIPELINE_CONFIG_VARIABLE]
    print(
        f"[sgpo] default config: preset {preset}, store {cfg['store']['url']}, tracking "
        f"{cfg.get('tracking', {}).get('mlflow_uri')} -> variables {', '.join(configs)}",
        flush=True,
    )
    cmd = prefect_deploy_command(prefect_file, names)
    print(f"[sgpo] $ prefect {' '.join(cmd[3:])}", flush=True)
    if dry_run:
        print(
            "[sgpo] dry run: nothing registered (no pool created or updated, no variable written, "
            "prefect deploy not run)",
            flush=True,
        )
        return 0
    set_config_variables(configs)
    return subprocess.run(cmd, cwd=repo_dir(), env=deploy_env()).returncode


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        rc = deploy(
            prefect_file=Path(args.prefect_file) if args.prefect_file else None,
            names=args.name or None,
            preset=args.config,
            overrides=args.set,
            eval_preset=args.eval_config,
            eval_overrides=args.eval_set,
            cuda_pool_type=args.cuda_pool_type,
            update_pools=args.update_pools,
            skip_pools=args.skip_pools,
            store_url=args.store_url,
            mlflow_uri=args.mlflow_uri,
            dry_run=args.dry_run,
        )
    except DeployError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    if rc:
        print(f"sgpo: prefect deploy failed (exit {rc})", file=sys.stderr)
    elif not args.dry_run:
        print(
            "[sgpo] deployed; start workers with `prefect worker start --pool cpu --type process` and "
            "`prefect worker start --pool cuda --type process` (see docs/cluster.md)",
            flush=True,
        )
    return rc


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `sgpo deploy` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "deploy",
        help="register the cpu/cuda work pools and the deployments (deployments/prefect.yaml) on a Prefect server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--prefect-file",
        default=None,
        help="prefect.yaml to deploy (default: deployments/prefect.yaml)",
    )
    p.add_argument(
        "--config",
        default="tiny",
        metavar="PRESET",
        help="preset or YAML file of the pipeline deployments' default config (default: tiny)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in that config, e.g. --set rounds=2 (repeatable)",
    )
    p.add_argument(
        "--eval-config",
        default="eval-tiny",
        metavar="PRESET",
        help="evaluation preset (configs/eval-*.yaml) of the sgpo-evaluate deployment (default: eval-tiny)",
    )
    p.add_argument(
        "--eval-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in the evaluation config (repeatable)",
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="DEPLOYMENT",
        help="deploy only this one, e.g. sgpo/sgpo-pipeline or 'sft/*' (repeatable; default: all)",
    )
    p.add_argument(
        "--cuda-pool-type",
        choices=("process", "kubernetes"),
        default="process",
        help="worker type of the cuda pool when it is created (default: process)",
    )
    p.add_argument(
        "--update-pools",
        action="store_true",
        help="rewrite the base job templates of existing pools",
    )
    p.add_argument("--skip-pools", action="store_true", help="only the deployments")
    p.add_argument(
        "--store-url",
        default=None,
        help=f"artifact store in that config (env SGPO_STORE_URL; default {DEFAULT_STORE_URL})",
    )
    p.add_argument(
        "--mlflow-uri",
        default=None,
        help=f"MLflow tracking URI in that config (env SGPO_MLFLOW_URI; default {DEFAULT_MLFLOW_URI})",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be done")
    p.set_defaults(func=cmd_deploy)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgpo")
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
