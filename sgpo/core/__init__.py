"""The stage framework: a stage declared once (`stage`), its cache key, running it (`run_stage`), what
its function gets (`Job`), its Prefect task, its CLI (`stage_main`), launching it on several
processes, MLflow tracking and progress. It knows no ML: training, LLM and evaluation code reach it
as hooks of a stage's declaration (`preflight=`, `launcher=`).

    stage.py         the declaration (Stage, @stage) and the cache key
    context.py       StageContext: store, tracking, run id, force
    job.py           Job (read inputs, publish, track), scratch_dir, stage_logger
    run.py           run_stage: store lookup (checked), preflight, lease, launch or call
    launch.py        several processes: the spec, the ranks, their errors
    ranks.py         rank / world size, LaunchPlan, Launcher (the hooks' types)
    prefect_tasks.py the stage as a Prefect task (the store decides "cached"; Prefect shows it)
    cli.py           python -m tasks.<stage> = sgpo stage <name>
    tracking.py      MLflow with explicit run ids
    progress.py      progress of long stages
    logs.py          where sgpo's warnings go (console and Prefect run logs, without -v)
"""

from sgpo.core.cli import stage_main
from sgpo.core.context import StageContext
from sgpo.core.job import Job, scratch_dir, stage_logger
from sgpo.core.run import StageOutcome, resolve_stage, run_stage
from sgpo.core.stage import Stage, stage

__all__ = [
    "Job",
    "Stage",
    "StageContext",
    "StageOutcome",
    "resolve_stage",
    "run_stage",
    "scratch_dir",
    "stage",
    "stage_logger",
    "stage_main",
]
