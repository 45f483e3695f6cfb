"""The pipeline flow: the DAG of a recipe (SGPO and its ablations, the DPO baseline, SPIN).

    sgpo:  base_model -> sft -> sample -> annotate -> ppl_filter -> improver_sft -> (pairs -> [ref_logps] -> dpo) x rounds -> judge
    dpo:   base_model -> [sft] -> dpo(prepare[prefs]) -> judge
    orpo:  base_model -> [sft] -> orpo(prepare[prefs]) -> judge
    spin:  base_model -> [sft] -> (pairs(chosen y_sft) -> dpo from pi_t) x iterations -> judge
    spin_orpo: base_model -> [sft] -> (pairs(chosen y_sft) -> orpo from pi_t) x iterations -> judge
    sapo:  base_model -> [sft] -> sapo(prepare[sapo]) -> judge
    ([sft]: not with `start: base`, where pi_sft is the base model itself)
    checks (opt-in): pairwise[imp_vs_*](annotate), refine[initial] + pairwise[refined_vs_*](pairs of
    each round), after the judge
    prepare[sft|improver|po|prefs|sapo|eval] feed the stages that read data

`plan(cfg)` builds the DAG from the recipe as data (steps, their config sections, which step
feeds which input), so a recipe runs only the stages it needs: an SGPO variant whose policy and
chosen answers need no improver (e.g. shared_improver=false pairs.chosen=sft) never samples or
annotates. The flow runs the plan: every stage is a cached Prefect task returning an ArtifactRef
(flows.runner); recipes on the same model and data share every common stage (SFT at least) from
the cache, a changed stage re-runs with everything downstream, and a failed run resumes at the
stage that failed. `force` names stages to recompute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow
from prefect.context import get_run_context
from pydantic import BaseModel

from artifacts.store import check_store
from flows.reporting import flow_run_namer
from flows.runner import StageFailed, StageReport, StageRunner  # noqa: F401 (re-exported)
from sgpo.config import ConfigError, PipelineConfig, load_config, section_of
from sgpo.config.pipeline import keys_set_by_the_user, settle_config
from sgpo.core import StageContext
from sgpo.core.threads import configure_threads
from sgpo.llm.embedded import EmbeddedLLM
from sgpo.models.source import resolve_model_source
from tasks import PIPELINE_STAGES, get_stage

FORCEABLE = PIPELINE_STAGES  # every stage a recipe of this flow can run (the registry's list)
# The data checks (`checks`), each a pairwise[NAME] stage: NAME -> (the column judged as the model, the
# column it is judged against). Table 1 reads annotate's table. The refinement checks (Fig. 8/10,
# Sec. 4.4.2) compare the self-improver's refinement y+ (each round's pairs: `chosen`) with the
# initial policy's refinement of the same answer y (the refine stage: `refinement`) and with y_sft;
# round r > 1 adds `.rR`.
CHECKS = {
    "imp_vs_policy": ("imp", "policy"),
    "imp_vs_reference": ("imp", "reference"),
    "refined_vs_initial": ("chosen", "refinement"),
    "refined_vs_reference": ("chosen", "reference"),
}


class PipelineReport(BaseModel):
    flow_run_id: str | None
    stages: list[StageReport]
    final_policy: str
    judge: dict[str, Any]
    testbed: dict[str, Any] | None = None  # the testbed_report stage's summary (report_vs_sft)
    checks: dict[str, dict[str, Any]] = {}  # data check name -> its pairwise summary (`checks`)
    mlflow_run_id: str | None = None
    report_uri: str | None = (
        None  # the `report` stage's artifact (report.html inside; `sgpo report URI`)
    )


def check_force(force: list[str] | None, known: tuple[str, ...]) -> list[str]:
    """`force` as given, or a ValueError naming the unknown stages.

    The one check and the one sentence for every way in: `sgpo run/evaluate --force` prints it
    before starting Prefect, and the flows raise it for a `force` typed in the UI's Custom-run form."""
    unknown = [s for s in force or [] if s.split("[")[0] not in known]
    if unknown:
        raise ValueError(f"force: unknown stage(s) {unknown}; stages: {', '.join(known)}")
    return list(force or [])


@flow(
    name="sgpo",
    description="A recipe's DAG: SGPO and its ablations, the DPO baseline, SPIN; then the judge",
    result_serializer="json",
    flow_run_name=flow_run_namer(lambda: load_config("tiny")),
)
def sgpo_pipeline(
    config: PipelineConfig | None = None, force: list[str] | None = None
) -> PipelineReport:
    """Run `config`'s recipe (`config.method`) end to end; `force` lists stages to recompute.

    Args:
        config: The whole run: recipe (method), base model, data, every stage's settings, store and tracking (default: the tiny preset)
        force: Stages to recompute even when cached, e.g. ["dpo"] or ["pairs[2]"]; an unknown name fails the run at once
    """
    from sgpo.core.tracking import pipeline_run

    # the form's (or --params') edits applied over the config's source, as overrides: an edited
    # `method` runs its recipe; a setting no step of the recipe reads fails here, before any work
    cfg = settle_config(config or load_config("tiny"))
    check_settings_are_read(cfg)
    configure_threads(cfg.threads)  # a run from the UI or a deployment did not pass through the CLI
    force = check_force(force, FORCEABLE)
    check_store(
        cfg.store.url, cfg.store.storage_options
    )  # scheme known, reachable, writable: before any work
    # a GGUF / packaged / local model that cannot work: its one-line error, before any stage
    resolve_model_source(cfg.model.name_or_path, cfg.model.revision)
    run_ctx = get_run_context()
    run_id = str(run_ctx.flow_run.id) if getattr(run_ctx, "flow_run", None) else None
    from flows.reporting import finish_pipeline, run_name

    with pipeline_run(
        cfg.tracking, run_name(cfg), tags={"prefect.flow_run_id": str(run_id)}
    ) as tracking:
        ctx = StageContext(
            store=cfg.store,
            tracking=tracking,
            run_id=run_id,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        report = _pipeline(cfg, ctx, force)
        report.report_uri = finish_pipeline(
            cfg, ctx, report, force
        )  # report stage, UI summary; never raises
    report.flow_run_id, report.mlflow_run_id = run_id, tracking.parent_run_id if tracking else None
    return report


@dataclass(frozen=True)
class Step:
    """One stage call of a recipe: its label, the stage, its config section, and for each input the
    label of the step that makes it."""

    label: str
    stage: str
    section: str
    inputs: dict[str, str] = field(default_factory=dict)


def plan(cfg: PipelineConfig) -> tuple[list[Step], str]:
    """(the recipe's steps in run order, the label of the step that makes the final policy)."""
    steps: list[Step] = []

    def add(label: str, stage: str, section: str, **inputs: str) -> str:
        steps.append(Step(label, stage, section, inputs))
        return label

    def data(role: str) -> str:
        label = f"prepare[{role}]"
        if all(s.label != label for s in steps):
            if getattr(cfg.data, role) is None:
                raise ConfigError(
                    f"method {cfg.method} (algorithm {cfg.algorithm}) needs data.{role}"
                )
            add(label, "prepare", f"data.{role}")
        return label

    def suffix(i: int, n: int) -> str:
        return "" if n == 1 else f"[{i}]"

    def dpo(suffix: str, section: str, start: str, pairs: str) -> str:
        """A DPO step; with cached reference log-probs, the ref_logps step before it."""
        inputs = {"start": start, "pairs": pairs}
        if recipe_section(cfg, section).reference_logps == "cached":
            inputs["ref_logps"] = add(
                f"ref_logps{suffix}", "ref_logps", section, reference=start, pairs=pairs
            )
        return add(f"dpo{suffix}", "dpo", section, **inputs)

    base = add("base_model", "base_model", "model")
    if cfg.start == "base":  # an SFT-ed base, or the raw base the ORPO-based methods start from
        pi_sft = base
    else:
        pi_sft = add("sft", "sft", "sft", base=base, data=data("sft"))
    if cfg.algorithm == "sft":  # pi_sft itself (the testbed's first row)
        policy = pi_sft
    elif (
        cfg.algorithm == "sft_continued"
    ):  # the control: as much more SFT as PO gets, on D_po's references
        policy = add("sft_continued", "sft", "sft_continued", base=pi_sft, data=data("po"))
    elif cfg.algorithm == "dpo":  # DPO on the published preference pairs, reference pi_sft
        policy = dpo("", "dpo_baseline", pi_sft, data("prefs"))
    elif cfg.algorithm == "orpo":  # ORPO on the published preference pairs, no reference
        policy = add("orpo", "orpo", "orpo", start=pi_sft, pairs=data("prefs"))
    elif (
        cfg.algorithm == "sapo"
    ):  # one long stage: EMA-regenerated segments, replay buffer, DPO/ORPO steps
        policy = add("sapo", "sapo", "sapo", policy=pi_sft, data=data("sapo"))
    elif cfg.algorithm in ("spin", "spin_orpo"):  # chosen y_sft, rejected pi_t's answer
        if cfg.pairs.chosen != "sft":
            raise ConfigError(
                f"algorithm {cfg.algorithm} takes chosen = y_sft: pairs.chosen must be 'sft' "
                f"(method={cfg.algorithm.replace('_', '-')} sets it)"
            )
        section = cfg.algorithm  # spin: DPO steps, reference pi_t; spin_orpo: ORPO steps
        policy, k = pi_sft, getattr(cfg, section).iterations
        for t in range(1, k + 1):
            pairs = add(f"pairs{suffix(t, k)}", "pairs", "pairs", policy=policy, data=data("po"))
            if section == "spin":
                policy = dpo(suffix(t, k), f"spin[{t}]", policy, pairs)
            else:
                policy = add(
                    f"orpo{suffix(t, k)}", "orpo", f"spin_orpo[{t}]", start=policy, pairs=pairs
                )
    else:
        refined = cfg.pairs.chosen == "refined"
        pi_imp = None
        if cfg.shared_improver or refined:  # the improver is the policy, or it refines: train it
            samples = add("sample", "sample", "sample", policy=pi_sft, data=data("improver"))
            annotations = add("annotate", "annotate", "annotate", samples=samples)
            filtered = add(
                "ppl_filter", "ppl_filter", "ppl_filter", policy=pi_sft, annotations=annotations
            )
            pi_imp = add(
                "improver_sft", "improver_sft", "improver_sft", start=pi_sft, filtered=filtered
            )
        # SGPO: one model is policy and improver. SGPO-dagger: the policy starts from pi_sft.
        policy = pi_imp if cfg.shared_improver else pi_sft
        for r in range(1, cfg.rounds + 1):
            inputs = {"policy": policy, "data": data("po")}
            if (
                refined
            ):  # shared: the refiner of round r is the policy of round r (pi_SGPO in Step 2)
                inputs["improver"] = policy if cfg.shared_improver else pi_imp
            pairs = add(f"pairs{suffix(r, cfg.rounds)}", "pairs", "pairs", **inputs)
            policy = dpo(suffix(r, cfg.rounds), "dpo", policy, pairs)
    judged = add("judge", "judge", "judge", policy=policy, data=data("eval"))
    labels = {s.label for s in steps}
    if cfg.checks.improved_data:
        if "annotate" not in labels:
            raise ConfigError(
                f"checks.improved_data: method {cfg.method} does not annotate (no improved answers to judge)"
            )
        for name in ("imp_vs_policy", "imp_vs_reference"):
            add(f"pairwise[{name}]", "pairwise", f"checks[{name}]", table="annotate")
    if cfg.checks.refinement:
        rounds = [s.label for s in steps if s.stage == "pairs"]
        if cfg.algorithm != "sgpo" or cfg.pairs.chosen != "refined" or not rounds:
            raise ConfigError(
                f"checks.refinement: method {cfg.method} has no refined pairs (needs algorithm sgpo "
                "with pairs.chosen=refined)"
            )
        for r, label in enumerate(rounds, 1):
            tag = "" if r == 1 else f".r{r}"
            # the initial policy (pi_sft) refines the same answers y with the same prompt
            initial = add(f"refine[initial{tag}]", "refine", "pairs", refiner=pi_sft, pairs=label)
            add(
                f"pairwise[refined_vs_initial{tag}]",
                "pairwise",
                f"checks[refined_vs_initial{tag}]",
                table=initial,
            )
            add(
                f"pairwise[refined_vs_reference{tag}]",
                "pairwise",
                f"checks[refined_vs_reference{tag}]",
                table=label,
            )
    if (
        cfg.report_vs_sft
    ):  # the testbed: verifier scores of pi_sft and the final policy, final vs pi_sft
        judged_sft = (
            judged
            if policy == pi_sft
            else add("judge[sft]", "judge", "judge", policy=pi_sft, data=data("eval"))
        )
        add("testbed_report", "testbed_report", "judge", final=judged, sft=judged_sft)
    return steps, policy


# Settings the flow reads whatever the recipe; every other section is read by the plan's steps
# (`Step.section`) or by the algorithms named here.
FLOW_SETTINGS = (
    "name",
    "method",
    "algorithm",
    "seed",
    "model",
    "start",
    "report_vs_sft",
    "checks",
    "judge",
    "store",
    "tracking",
    "embedded_llm",
    "execution",
    "hardware",
    "threads",
    "source",
)
ALGORITHM_SETTINGS = {"shared_improver": "sgpo", "rounds": "sgpo"}
# where each preference-optimisation DAG reads its DPO settings (one of these per recipe)
PO_SECTIONS = ("dpo", "dpo_baseline", "spin", "orpo", "spin_orpo", "sapo")


def settings_read(cfg: PipelineConfig, steps: list[Step]) -> set[str]:
    """The top-level settings (and `data.ROLE`, `sapo.dpo|orpo`) that running `steps` reads."""
    read = set(FLOW_SETTINGS)
    for step in steps:
        read.add(step.section.split("[")[0])  # spin[2] -> spin, checks[NAME] -> checks
    read |= {k for k, algorithm in ALGORITHM_SETTINGS.items() if cfg.algorithm == algorithm}
    if "sapo" in read:
        read.add(f"sapo.{cfg.sapo.loss}")
    return read


def _why_unread(key: str, cfg: PipelineConfig, steps: list[Step], read: set[str]) -> str:
    parts = key.split(".")
    top, rest = parts[0], ".".join(parts[1:])
    recipe = f"method {cfg.method} (algorithm {cfg.algorithm})"
    if top == "sapo" and parts[1:2] and parts[1] in ("dpo", "orpo"):
        return f"sapo.loss is {cfg.sapo.loss}: the sapo stage reads sapo.{cfg.sapo.loss}, not sapo.{parts[1]}"
    if top in PO_SECTIONS:
        used = [s for s in PO_SECTIONS if s in read]
        if not used:
            return f"{recipe} trains no preference-optimisation step"
        where = used[0]
        target = section_of(cfg, where)
        if where == "sapo" and parts[1:2] and parts[1] in type(cfg.sapo.dpo).model_fields:
            target, where = getattr(cfg.sapo, cfg.sapo.loss), f"sapo.{cfg.sapo.loss}"
        hint = f": set {where}.{rest}" if rest and parts[1] in type(target).model_fields else ""
        return f"{recipe} reads its preference-optimisation settings from {where}, not {top}{hint}"
    if top in ALGORITHM_SETTINGS:
        return f"only algorithm {ALGORITHM_SETTINGS[top]} reads {top}; {recipe} does not"
    if top == "data" and parts[1:2]:
        roles = sorted(r.split(".", 1)[1] for r in read if r.startswith("data."))
        return f"{recipe} reads no data.{parts[1]} (it reads data.{', data.'.join(roles)})"
    return (
        f"{recipe} runs no step that reads {top} (its steps: {', '.join(s.label for s in steps)})"
    )


def unread_settings(cfg: PipelineConfig) -> list[str]:
    """One line per key the user set (overrides, the form, `--params`, a recipe-bound YAML file)
    that no step of the recipe reads, saying which section the recipe reads instead."""
    steps, _ = plan(cfg)
    read = settings_read(cfg, steps)
    out = []
    for key in dict.fromkeys(keys_set_by_the_user(cfg)):
        parts = key.split(".")
        if parts[0] == "data" and len(parts) > 1:
            known = f"data.{parts[1]}" in read
        elif parts[0] == "sapo" and len(parts) > 1 and parts[1] in ("dpo", "orpo"):
            known = f"sapo.{parts[1]}" in read
        else:
            known = parts[0] in read
        if not known:
            out.append(f"{key}: {_why_unread(key, cfg, steps, read)}")
    return out


def check_settings_are_read(cfg: PipelineConfig) -> None:
    """A ConfigError naming every setting the user set that the recipe would ignore."""
    if problems := unread_settings(cfg):
        raise ConfigError(
            "settings that this recipe never reads (they would be ignored):\n  "
            + "\n  ".join(problems)
        )


def recipe_section(cfg: PipelineConfig, path: str) -> Any:
    """A step's config section: a dotted path, or `spin[t]` / `spin_orpo[t]` (the section as
    iteration t trains)."""
    for name in ("spin", "spin_orpo"):
        if path.startswith(f"{name}[") and path.endswith("]"):
            return getattr(cfg, name).for_iteration(int(path[len(name) + 1 : -1]))
    if path.startswith("checks[") and path.endswith("]"):
        return check_section(cfg, path[7:-1])
    return section_of(cfg, path)


def check_section(cfg: PipelineConfig, name: str) -> Any:
    """The pairwise section of data check `name`: the pipeline judge's endpoint and protocol (one
    judge for the run), the check's two columns, `checks.max_rows`."""
    from sgpo.config import PairwiseConfig

    model_column, baseline_column = CHECKS[name.split(".")[0]]
    return PairwiseConfig(
        **cfg.judge.model_dump(exclude={"sampling"}),
        name=name,
        instruction_column="prompt",
        model_column=model_column,
        baseline_column=baseline_column,
        max_rows=cfg.checks.max_rows,
    )


def _pipeline(cfg: PipelineConfig, ctx: StageContext, force: list[str]) -> PipelineReport:
    from flows.dispatch import check_not_on_the_cuda_pool

    check_not_on_the_cuda_pool(cfg.execution)
    steps, final = plan(cfg)
    refs: dict[str, Any] = {}
    # The stand-in LLM (for endpoints without base_url) serves the base model, or a configured dir;
    # it starts only if annotate or judge really runs.
    llm = EmbeddedLLM.from_config(
        cfg.embedded_llm, lambda: ctx.open_store().model_dir(refs["base_model"])
    )
    with llm:
        run = StageRunner(ctx, force, cfg.execution, llm=llm)
        for step in steps:
            refs[step.label] = run(
                step.label,
                get_stage(step.stage),
                recipe_section(cfg, step.section),
                **{name: refs[label] for name, label in step.inputs.items()},
            )
    _publish_ui_artifacts(run.reports, refs["judge"])
    return PipelineReport(
        flow_run_id=None,
        stages=run.reports,
        final_policy=refs[final].uri,
        judge=refs["judge"].summary,
        testbed=refs["testbed_report"].summary if "testbed_report" in refs else None,
        checks={s.label[9:-1]: refs[s.label].summary for s in steps if s.stage == "pairwise"},
    )


def _publish_ui_artifacts(reports: list[StageReport], judged: Any) -> None:
    """A stage table and the judge result in the Prefect UI's Artifacts tab."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key="sgpo-stages",
        table=[
            {"stage": r.stage, "status": r.status, "seconds": r.seconds, "uri": r.uri}
            for r in reports
        ],
        description="Stages of this SGPO run: ran or cached, duration, artifact",
    )
    create_table_artifact(
        key="sgpo-judge",
        table=[{k: v for k, v in judged.summary.items() if not isinstance(v, (dict, list))}],
        description=f"Pairwise win rate of the final policy vs the baseline ({judged.uri})",
    )
