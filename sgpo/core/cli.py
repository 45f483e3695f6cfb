"""A stage alone from the command line: `python -m tasks.<stage>` = `sgpo stage <name>`.

    python -m tasks.dpo [CONFIG] [key=value ...] --start URI --pairs URI

The same key and the same artifact as inside a flow; prints the artifact reference as JSON on the
last line. Also the entry of every rank of a launched stage (`--launch-spec`, sgpo.core.launch) and
of a launch started outside sgpo (torchrun / accelerate over several nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from artifacts.refs import ArtifactRef
from artifacts.store import ArtifactStore, StoreError, check_store, local_model_ref, read_ref
from sgpo.config import ConfigError, load_recipe, section_of
from sgpo.core.context import StageContext
from sgpo.core.job import stage_note
from sgpo.core.launch import write_rank_error
from sgpo.core.ranks import is_main_process, rank, world_size
from sgpo.core.run import run_rank, run_stage
from sgpo.core.stage import Stage
from sgpo.core.threads import configure_threads
from sgpo.core.tracking import pipeline_run


def stage_parser(st: Stage) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {st.module}",
        description=f"Run the `{st.name}` stage alone: {st.description}. It publishes to the store "
        "exactly as inside a flow (same cache key, same artifact) and prints the artifact reference as "
        "JSON on the last line.",
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value]",
        help=f"{st.recipe} preset or YAML file, then overrides "
        f"(e.g. {st.section.split('.')[0]}.KEY=VALUE)",
    )
    for name in st.inputs:
        optional = name in st.optional_inputs
        p.add_argument(
            f"--{name}",
            required=not optional,
            metavar="URI",
            help=f"input artifact `{name}` (its folder in the store, or a local checkpoint folder)"
            + (" (optional)" if optional else ""),
        )
    for name in st.params:
        p.add_argument(f"--{name}", required=True, help=f"value of the stage parameter `{name}`")
    default_section = st.section if "<" not in st.section else None
    p.add_argument(
        "--section",
        default=default_section,
        required=default_section is None,
        help=f"config section to use (default: {st.section})",
    )
    p.add_argument(
        "--force", action="store_true", help="recompute even if the store holds the artifact"
    )
    p.add_argument(
        "--run-id", default="cli", help="recorded as produced_by in the artifact (default: cli)"
    )
    # a rank of sgpo's own launch (sgpo.core.launch)
    p.add_argument("--launch-spec", default=None, help=argparse.SUPPRESS)
    return p


def input_ref(uri: str, storage_options: dict[str, Any] | None = None) -> ArtifactRef:
    """An input given by URI: a finished artifact's folder (read from its manifest), or a local
    checkpoint folder (file:///PATH or PATH, config.json in it), which the base_model stage
    references where it is and whose URI it prints: the same reference (by the folder's content)."""
    try:
        return read_ref(uri, storage_options)
    except FileNotFoundError:
        local = Path(uri.removeprefix("file://")).expanduser()
        if ("://" in uri and not uri.startswith("file://")) or not (
            local / "config.json"
        ).is_file():
            raise
        return local_model_ref(local, stage="base_model")


def _inputs(st: Stage, args: argparse.Namespace, storage_options: dict[str, Any]) -> dict[str, Any]:
    return {
        n: input_ref(getattr(args, n), storage_options)
        for n in st.inputs
        if getattr(args, n) is not None
    }


def _launched_rank_main(st: Stage, args: argparse.Namespace) -> int:
    """A rank of sgpo's own launch: config, context and key from the parent's spec."""
    try:
        spec = json.loads(Path(args.launch_spec).read_text())
        ctx = StageContext.model_validate(spec["ctx"])
        inputs = _inputs(st, args, ctx.store.storage_options)
        ref = run_rank(st, spec["cfg"], ctx, inputs, spec.get("params") or {}, spec["key"])
    except BaseException as e:
        write_rank_error(e)
        print(
            f"sgpo: stage '{st.name}' rank {rank()} failed: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 1
    if ref is not None:
        print(json.dumps(ref.model_dump(mode="json")))
    return 0


def _external_rank_main(
    st: Stage,
    cfg: Any,
    recipe: Any,
    inputs: dict,
    params: dict,
    args: argparse.Namespace,
    trust: bool,
) -> int:
    """`accelerate launch ... -m tasks.<stage> CONFIG ...` on several nodes: rank 0 looks the key up and
    every rank follows its decision; then as under sgpo's own launch (rank 0 tracks and publishes)."""
    if st.launcher is None:
        print(
            f"sgpo: stage '{st.name}' does not run on several processes (WORLD_SIZE={world_size()})",
            file=sys.stderr,
        )
        return 2
    key = st.cache_key(cfg, inputs, params)
    store = ArtifactStore(recipe.store.url, recipe.store.storage_options)
    found = store.find(st.name, key) if is_main_process() and not args.force else None
    if st.launcher.main_process_value(found.uri if found is not None else None) is not None:
        if found is not None:
            print(json.dumps(found.model_dump(mode="json")))
        return 0
    with contextlib.ExitStack() as stack:
        tracking = None
        if is_main_process():
            tracking = stack.enter_context(
                pipeline_run(
                    recipe.tracking, f"{recipe.name}:{st.name}", tags={"sgpo.kind": "stage"}
                )
            )
        ctx = StageContext(
            store=recipe.store,
            tracking=tracking,
            run_id=args.run_id,
            trust_remote_code=trust,
            refresh=args.force,
        )
        ref = run_rank(st, cfg, ctx, inputs, params, key)
    if ref is not None:
        print(json.dumps(ref.model_dump(mode="json")))
    return 0


def stage_main(st: Stage, argv: list[str] | None = None) -> int:
    args = stage_parser(st).parse_intermixed_args(argv)
    if args.launch_spec:
        configure_threads(
            "auto"
        )  # the launch gave this rank its share (sgpo.core.threads.thread_env)
        return _launched_rank_main(st, args)
    items = args.items
    source, overrides = (items[0], items[1:]) if items and "=" not in items[0] else (None, items)
    try:
        recipe = load_recipe(st.recipe, source, overrides)
        cfg = st.coerce(section_of(recipe, args.section))
    except (ConfigError, KeyError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    try:  # scheme known, reachable, writable: one line, not a traceback from fsspec
        check_store(recipe.store.url, recipe.store.storage_options)
    except StoreError as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    configure_threads(recipe.threads)
    try:
        inputs = _inputs(st, args, recipe.store.storage_options)
    except (FileNotFoundError, ValueError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    params = {n: getattr(args, n) for n in st.params}
    trust = getattr(getattr(recipe, "model", None), "trust_remote_code", False)
    if world_size() > 1:  # a rank of a launch started outside sgpo (e.g. multi-node)
        return _external_rank_main(st, cfg, recipe, inputs, params, args, trust)
    store = ArtifactStore(recipe.store.url, recipe.store.storage_options)
    try:  # the key's fingerprint checks the stage's source (a data file, a model): its one line
        cached = (
            not args.force and store.find(st.name, st.cache_key(cfg, inputs, params)) is not None
        )
    except ValueError as e:
        print(f"sgpo: stage '{st.name}': {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with pipeline_run(
            recipe.tracking, f"{recipe.name}:{st.name}", tags={"sgpo.kind": "stage"}
        ) as tracking:
            ctx = StageContext(
                store=recipe.store,
                tracking=tracking,
                run_id=args.run_id,
                trust_remote_code=trust,
                refresh=args.force,
            )
            ref = run_stage(st, cfg, ctx, inputs, params)
    except Exception as e:
        print(f"sgpo: stage '{st.name}' failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    status = "cached" if cached else "ran" + stage_note(ref.summary)
    print(f"[sgpo] {st.name} {status} {time.perf_counter() - t0:.1f}s  {ref.uri}", file=sys.stderr)
    print(json.dumps(ref.model_dump(mode="json")))
    return 0
