"""Running a stage, decided without running one: the effective batch kept by gradient accumulation
(or refused), the embedded stand-in LLM started only for an LLM stage that really runs, and which
errors are worth a Prefect retry. Stages run alone, inside flows, and through TRL:
tests/integration/core/test_stage_run.py."""

from __future__ import annotations

import pytest

from artifacts.refs import ArtifactRef
from sgpo.config import StoreConfig, load_config
from sgpo.core import StageContext
from tasks import get_stage


class CountingLLM:
    judge = annotator = "model"  # answered by the model, as the default EmbeddedLLM

    def __init__(self) -> None:
        self.starts = 0

    def base_url(self) -> str:
        self.starts += 1
        return "http://127.0.0.1:9/v1"

    def endpoint(self, ep, model: str):  # EmbeddedLLM.endpoint: the server starts when asked
        return ep.model_copy(update={"base_url": self.base_url(), "model": model})


@pytest.mark.parametrize(
    "world, micro, effective, accumulation",
    [(1, 4, 16, 4), (2, 4, 16, 2), (4, 2, 16, 2), (8, 1, 128, 16)],
)
def test_gradient_accumulation_keeps_the_effective_batch(
    monkeypatch, world, micro, effective, accumulation
):
    from sgpo.train.trainers import common_args

    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = load_config(
        "tiny", [f"sft.per_device_batch_size={micro}", f"sft.effective_batch_size={effective}"]
    ).sft
    args = common_args(cfg, "/tmp/unused")
    assert args["gradient_accumulation_steps"] == accumulation
    assert (
        args["per_device_train_batch_size"] * world * args["gradient_accumulation_steps"]
        == effective
    )


def test_an_effective_batch_that_does_not_divide_is_refused(monkeypatch):
    from sgpo.train.trainers import common_args

    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = load_config("tiny", ["sft.per_device_batch_size=4", "sft.effective_batch_size=16"]).sft
    with pytest.raises(ValueError, match="not a multiple of per_device_batch_size 4 x 3 devices"):
        common_args(cfg, "/tmp/unused")


def test_the_embedded_llm_starts_only_when_an_llm_stage_really_runs(tmp_path):
    import pyarrow as pa

    from artifacts.store import ArtifactStore
    from flows.runner import StageRunner
    from sgpo.llm.embedded import EMBEDDED_MODEL_NAME

    ctx = StageContext(store=StoreConfig(url=str(tmp_path)))
    llm = CountingLLM()
    runner = StageRunner(ctx, [], llm=llm)
    st = get_stage("annotate")
    cfg = load_config("tiny").annotate  # no base_url: the embedded server stands in
    inputs = {
        "samples": ArtifactRef(
            uri="u", kind="table", stage="sample", cache_key="k", content_hash="h"
        )
    }

    pointed = runner._point_at_embedded(st, cfg, inputs, None, forced=False)
    assert llm.starts == 1 and pointed.endpoint.base_url == "http://127.0.0.1:9/v1"
    assert pointed.endpoint.model == EMBEDDED_MODEL_NAME

    key = st.cache_key(pointed, inputs)
    ArtifactStore(str(tmp_path)).publish_table(
        "annotate", key, pa.Table.from_pylist([{"a": 1}]), manifest={}
    )
    cached = runner._point_at_embedded(st, cfg, inputs, None, forced=False)
    assert llm.starts == 1 and cached.endpoint.base_url is None  # finished: nothing started
    runner._point_at_embedded(st, cfg, inputs, None, forced=True)
    assert llm.starts == 2  # --force annotate re-runs it, so it needs the server

    configured = cfg.model_copy(
        update={"endpoint": cfg.endpoint.model_copy(update={"base_url": "http://x/v1"})}
    )
    assert runner._point_at_embedded(st, configured, inputs, None, forced=False) is configured
    assert (
        runner._point_at_embedded(
            get_stage("sft"), load_config("tiny").sft, {}, None, forced=False
        ).epochs
        == 2
    )
    assert llm.starts == 2


def test_only_transient_errors_are_worth_a_retry():
    from sgpo.core.prefect_tasks import error_is_transient
    from sgpo.data.sources import DatasetError
    from sgpo.llm.client import ExternalLLMNotConfigured

    assert error_is_transient(TimeoutError("read timed out")) and error_is_transient(
        ConnectionResetError()
    )
    hub_down = DatasetError("could not load ...")
    hub_down.retriable = True
    assert error_is_transient(hub_down)
    assert not error_is_transient(DatasetError("no column 'prompt'"))
    assert not error_is_transient(ExternalLLMNotConfigured("no base_url"))
    assert not error_is_transient(ValueError("effective_batch_size ... not a multiple"))


def test_llm_errors_say_whether_a_retry_can_help():
    import pickle

    from sgpo.core.prefect_tasks import error_is_transient
    from sgpo.llm.client import LLMCallError

    overloaded = LLMCallError("429 x7", endpoint="http://x", key="k", retriable=True)
    assert error_is_transient(overloaded) and error_is_transient(
        pickle.loads(pickle.dumps(overloaded))
    )
    assert not error_is_transient(LLMCallError("HTTP 401: invalid api key", endpoint="http://x"))
