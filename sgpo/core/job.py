"""What a stage's function gets: a `Job` (where to read and publish, the key, the tracker), and
the small helpers every stage uses (its logger, a scratch folder)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.refs import ArtifactRef
from artifacts.store import ArtifactStore
from sgpo.core.context import StageContext
from sgpo.core.logs import STAGE_MARK
from sgpo.core.stage import Stage
from sgpo.core.tracking import StageTracker, stage_run


def stage_logger(stage: str) -> logging.Logger:
    """Prefect's run logger inside a run (shows in the UI), a plain logger outside one."""
    if "prefect" not in sys.modules:  # no run without it (and no second of importing it)
        return logging.getLogger(f"sgpo.{stage}")
    try:
        from prefect import get_run_logger

        # marked: its warnings are sgpo's, shown on the quiet console (sgpo.core.logs)
        return get_run_logger(**{STAGE_MARK: stage})  # type: ignore[return-value]
    except Exception:
        return logging.getLogger(f"sgpo.{stage}")


def journal_note(summary: Mapping[str, Any] | None) -> str:
    """' (48 answers from the journal, 0 sent)' for a stage that made paid calls, else ''.

    A forced LLM stage reruns but re-sends nothing its journal holds; this says so on its line
    (set the stage's `journal_namespace` to really re-ask)."""
    if (
        not summary
        or not isinstance(summary.get("from_journal"), int)
        or not isinstance(summary.get("sent"), int)
    ):
        return ""
    return f" ({summary['from_journal']} answers from the journal, {summary['sent']} sent)"


# A stage that drops unusable generated answers (empty or whitespace) says how many in its summary
# under this key; its stage line says it too.
EMPTY_DROPPED = "empty_dropped"
# A pairs table counts its rows whose chosen and rejected answers are the same text (a refiner that
# returned the answer unchanged): preference training skips them, so the line says how many.
IDENTICAL_PAIRS = "chosen_equals_rejected"


def stage_note(summary: Mapping[str, Any] | None) -> str:
    """What a stage line adds after a stage ran: its journal use (`journal_note`), the empty answers
    it dropped and the identical pairs it holds, e.g. ' (48 answers from the journal, 0 sent)',
    ' (3 empty answers dropped)', ' (84 of 100 pairs have chosen = rejected: DPO / ORPO skip them)'."""
    summary = summary or {}
    note = journal_note(summary)
    dropped = summary.get(EMPTY_DROPPED)
    if isinstance(dropped, int) and dropped:
        note += f" ({dropped} empty answer{'s' if dropped != 1 else ''} dropped)"
    same, pairs = summary.get(IDENTICAL_PAIRS), summary.get("pairs")
    if isinstance(same, int) and same and isinstance(pairs, int):
        note += f" ({same} of {pairs} pairs have chosen = rejected: DPO / ORPO skip them)"
    return note


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"sgpo-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Job:
    """One execution of a stage: where to read and publish, the key, the tracker."""

    stage: Stage
    key: str
    ctx: StageContext
    store: ArtifactStore
    cfg: Any
    inputs: dict[str, ArtifactRef]
    params: dict[str, Any]
    tracker: StageTracker | None = None
    # False on ranks > 0 of a launched stage: they neither track nor publish
    is_main_process: bool = True
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def log(self) -> logging.Logger:
        return stage_logger(self.stage.name)

    @property
    def work_url(self) -> str:
        """Scratch space of this key (e.g. the paid-call journal); kept after publishing, for audit."""
        return self.store.work_url(self.stage.name, self.key)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        if not self.stage.tracked:
            yield
            return
        with stage_run(
            self.ctx.tracking, self.stage.name, tags={"sgpo.cached": "false"}
        ) as tracker:
            tracker.log_params(self.stage.key_payload(self.cfg, self.params))
            self.tracker = tracker
            yield

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric entries only (bools and None are left out) to the stage's MLflow run."""
        if self.tracker is None:
            return
        nums = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if step is None:
            self.tracker.log_metrics(nums)
        else:
            self.tracker.log_metrics(nums, step=step)

    def model_dir(self, ref: ArtifactRef) -> str:
        return self.store.model_dir(ref)

    def read_rows(self, ref: ArtifactRef) -> list[dict[str, Any]]:
        return self.store.read_table(ref).to_pylist()

    def manifest(
        self, *, seeds: dict[str, int] | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The lineage written beside the artifact: enough to trace and reproduce it."""
        return {
            "stage": self.stage.name,
            "code_version": self.stage.code_version,
            # what the key holds, and the section exactly as the stage ran with it (runtime fields
            # and every rewrite on its way here included: endpoint, projection, iteration override)
            "config": self.stage.key_payload(self.cfg, self.params),
            "section": self.cfg.model_dump(mode="json"),
            "prompts": self.stage.prompts(self.cfg),
            "seeds": seeds or {},
            "parents": {
                k: {"uri": v.uri, "content_hash": v.content_hash, "stage": v.stage}
                for k, v in self.inputs.items()
            },
            "seconds": round(time.perf_counter() - self._t0, 3),
            # per-step training logs (loss, reward margin/accuracy, lr), for the report's curves
            **(
                {"train_history": self.tracker.history}
                if self.tracker is not None and self.tracker.history
                else {}
            ),
            **(extra or {}),
        }

    def publish_table(
        self,
        table: Any,
        *,
        summary: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        if not self.is_main_process:
            return None  # type: ignore[return-value]  # rank 0 publishes
        return self.store.publish_table(
            self.stage.name,
            self.key,
            table,
            manifest=self.manifest(seeds=seeds, extra=extra),
            summary=summary,
            produced_by=self.ctx.run_id,
        )

    def publish_model(
        self,
        local_dir: str | Path,
        *,
        summary: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        if not self.is_main_process:
            return None  # type: ignore[return-value]  # rank 0 publishes
        return self.store.publish_model(
            self.stage.name,
            self.key,
            local_dir,
            manifest=self.manifest(seeds=seeds, extra=extra),
            summary=summary,
            produced_by=self.ctx.run_id,
        )

    def publish_bytes(self, name: str, data: bytes) -> str:
        """A side file beside the artifact (e.g. a Parquet snapshot); publish it before the data."""
        return self.store.publish_bytes(self.stage.name, self.key, name, data)

    def publish_json(self, name: str, obj: Any) -> str:
        """A side file (e.g. a report) beside the artifact; publish it before the data (manifest last)."""
        if not self.is_main_process:
            return ""
        return self.store.publish_json(self.stage.name, self.key, name, obj)
