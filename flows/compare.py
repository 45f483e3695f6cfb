"""`sgpo compare`: the recipes of one preset side by side, ours beside the paper's numbers, from the store.

Each column group comes from artifacts in the store, found by content, never re-run here:

* **pipeline judge** (the `judge` stage of the recipe's DAG): win rate and SE of the final
  policy against the eval set's baselines, judged with AlpacaEval's protocol;
* **AlpacaEval 2.0 LC / WR** and **Arena-Hard WR (95% CI)**: the `alpaca_eval_judge` and
  `arena_hard_judge` artifacts of `sgpo evaluate` runs whose model is that final policy (found
  through the manifests' lineage: judge <- generate <- model content hash).

On the SAPO presets the layout is the SAPO paper's (Open LLM Leaderboard tasks and IFEval from
`lm_eval`, MT-Bench turns from `mt_bench_judge`, AlpacaEval 2.0 LC / WR / length).

A recipe is resolved without running anything: `resolve_plan` walks its DAG (flows.pipeline.plan)
and looks every step up in the store by its cache key. A recipe with a missing step is reported
as not run (with the first missing stage), not silently left out. Beside every benchmark cell of
ours stands the paper's number for that preset and recipe, with the table it comes from
(`sgpo.report.paper_numbers`, from the shipped copy sgpo/data/papers/paper_results.json): "not
reported" where the paper has none, "n/a (not a paper setting)" on a preset that is no paper's.

Only comparable cells side by side: every AE2 / Arena-Hard cell comes from a judge report that
records what it was measured with (benchmark version, judge model, prompt version, decoding, and for
LC the sources of the instruction-difficulty and gamed-baseline files). A cell whose setting differs
from its column's majority, or, on the paper's presets, from the paper's setting (`PAPER_SETTINGS`),
is marked ` *` and its row's status names each differing field (`comparability`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from artifacts.refs import ArtifactRef
from sgpo.report.comparison import (  # noqa: F401 (re-exported: the table's parts live in the library)
    CELL_FIELDS,
    COLUMNS,
    PAPER_PRESETS,
    PAPER_SETTINGS,
    SAPO_COLUMNS,
    Row,
    add_evaluations,
    comparability,
    evaluations_of,
    markdown,
    settings_of,
    table_rows,
    to_csv,
)


def resolve_plan(cfg: Any, store: Any) -> tuple[dict[str, ArtifactRef], str | None]:
    """(the finished artifact of every step found in the store, the first missing step or None).

    Endpoints without base_url get the model name the flow would give them (the embedded stand-in,
    as `cfg.embedded_llm` configures it), since the model name is part of an LLM stage's key."""
    from flows.pipeline import plan, recipe_section
    from flows.runner import with_endpoint
    from sgpo.llm.embedded import embedded_model_name
    from tasks import get_stage

    steps, _ = plan(cfg)
    refs: dict[str, ArtifactRef] = {}
    for step in steps:
        st = get_stage(step.stage)
        section = st.coerce(recipe_section(cfg, step.section))
        if st.llm and not getattr(section, st.llm).base_url:
            name = embedded_model_name(
                section, judge=cfg.embedded_llm.judge, annotator=cfg.embedded_llm.annotator
            )
            section = with_endpoint(section, st.llm, None, name)
        inputs = {n: refs[label] for n, label in step.inputs.items()}
        if st.name == "base_model":  # a hub id or local folder is referenced, not stored
            from sgpo.models.source import referenced_model, resolve_model_source

            source = resolve_model_source(cfg.model.name_or_path, cfg.model.revision)
            if (ref := referenced_model(source, cfg.model.revision)) is not None:
                refs[step.label] = ref
                continue
        ref = store.find(st.name, st.cache_key(section, inputs))
        if ref is None:
            return refs, step.label
        refs[step.label] = ref
    return refs, None


def compare_row(method: str, preset: str, cfg: Any, store: Any) -> Row:
    from flows.pipeline import plan

    refs, missing = resolve_plan(cfg, store)
    if missing is not None:
        return Row(
            method=method,
            preset=preset,
            status=f"not run ({missing} missing): sgpo run {preset} method={method}",
        )
    _, final = plan(cfg)
    policy, judge = refs[final], refs["judge"].summary
    row = Row(
        method=method,
        preset=preset,
        status="done",
        final_policy=policy.uri,
        judge_win_rate=judge.get("win_rate"),
        judge_se=judge.get("standard_error"),
        judge_n=judge.get("n_labelled"),
    )
    return add_evaluations(row, store, policy.content_hash, policy.uri)


@flow(
    name="sgpo-compare",
    description="The Table-3 comparison of recipes from their judged artifacts",
    result_serializer="json",
)
def compare(
    preset: str = "tiny", methods: list[str] | None = None, overrides: list[str] | None = None
) -> list[dict[str, str]]:
    """One row per recipe (`methods`, default every recipe) on `preset`; also a Prefect table artifact."""
    from prefect.artifacts import create_table_artifact

    from sgpo.config import load_config, method_names

    rows = []
    for method in methods or method_names():
        cfg = load_config(preset, [*(overrides or []), f"method={method}"])
        rows.append(compare_row(method, preset, cfg, _store(cfg)))
    table = table_rows(rows)
    create_table_artifact(
        key="sgpo-compare",
        table=table,
        description=f"Recipes on preset {preset}: ours beside the paper's numbers (with their tables)",
    )
    return table


def _store(cfg: Any) -> Any:
    from artifacts.store import ArtifactStore

    return ArtifactStore(cfg.store.url, cfg.store.storage_options)
