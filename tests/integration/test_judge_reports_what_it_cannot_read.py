"""The judge reports what it could not read (issue 22, item 5).

Before: with 6 of 16 judge answers in another language (no 'm'/'M' token) the stage published
"10 of 16 prompts judged" and no warning, and at exactly 50% it still published; an endpoint that
returns the label as text but no logprobs was told "the judge did not follow the answer format".
Now the unlabelled share is in the summary and the stage line, the stage fails above 10% (the
default) and does not reuse a result made under a looser threshold, and an endpoint without
logprobs gets its own message (its text labels are used, unweighted, and counted).

A fake judge behind the real OpenAI-compatible server: rows whose instruction says FOREIGN are
answered "Le" (neither label); with `logprobs=False` the server returns no logprobs at all.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from sgpo.config import EndpointConfig, PairwiseConfig, StoreConfig
from sgpo.core import StageContext, resolve_stage
from sgpo.evals.pairwise import JudgeOutputError, label_note
from sgpo.llm.server import ChatResult, build_app, running_server
from tasks import get_stage

PAIRWISE = get_stage("pairwise")


class FakeJudge:
    def __init__(self, *, logprobs: bool = True, text: str | None = None) -> None:
        self.logprobs, self.text = logprobs, text

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        token = "Le" if "FOREIGN" in messages[-1]["content"] else "m"
        token = self.text or token
        top = [{"token": token, "logprob": -0.1}, {"token": "x", "logprob": -3.0}]
        lp = [{"token": token, "logprob": -0.1, "top_logprobs": top}] if self.logprobs else None
        return ChatResult(token, "length", 10, 1, logprobs=lp)


def _table(store, n_foreign: int, tag: str):
    rows = [
        {
            "prompt": f"Question {tag}{i}{' FOREIGN' if i < n_foreign else ''}",
            "model": f"model answer {i}",
            "base": f"baseline answer {i}",
        }
        for i in range(16)
    ]
    return store.publish_table("annotate", tag * 64, pa.Table.from_pylist(rows), manifest={})


def _cfg(url: str, **kw) -> PairwiseConfig:
    endpoint = EndpointConfig(
        base_url=url, model="fake-judge", api_key_env="SGPO_TEST_NO_SUCH_KEY", backoff_base_s=0.01
    )
    return PairwiseConfig(
        name="t", model_column="model", baseline_column="base", endpoint=endpoint, **kw
    )


@pytest.fixture
def ctx(tmp_path) -> StageContext:
    return StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="r")


def test_an_unreadable_share_above_the_default_fails_and_below_it_is_reported(ctx):
    store = ctx.open_store()
    with running_server(build_app(FakeJudge(), model_name="fake-judge")) as url:
        with pytest.raises(JudgeOutputError) as e:  # 2 of 16 (12.5%) > 10%
            resolve_stage(PAIRWISE, _cfg(url), ctx, {"table": _table(store, 2, "a")})
        assert "14 of 16 judge answers had a label" in str(e.value)
        assert "max_unlabelled_fraction=0.1" in str(e.value)

        one = resolve_stage(PAIRWISE, _cfg(url), ctx, {"table": _table(store, 1, "b")}).ref
        s = one.summary
        assert (s["n_asked"], s["n_unlabelled"], s["unlabelled_fraction"]) == (16, 1, 0.0625)
        assert s["unlabelled_reasons"] == {"no_label_token": 1} and s["n_labelled"] == 15
        assert label_note(s) == " (1 of 16 without a label: 6%)"

        # 6 of 16 accepted under a looser threshold, and reported
        six = _table(store, 6, "c")
        loose = resolve_stage(PAIRWISE, _cfg(url, max_unlabelled_fraction=0.5), ctx, {"table": six})
        assert loose.ref.summary["n_unlabelled"] == 6 and not loose.cached
        # the same key under the default threshold: the stored result is refused, not reused
        with pytest.raises(JudgeOutputError, match="10 of 16 judge answers had a label"):
            resolve_stage(PAIRWISE, _cfg(url), ctx, {"table": six})


def test_an_endpoint_without_logprobs_gets_its_own_message_and_its_text_labels_count(ctx):
    store = ctx.open_store()
    with running_server(build_app(FakeJudge(logprobs=False), model_name="fake-judge")) as url:
        ref = resolve_stage(PAIRWISE, _cfg(url), ctx, {"table": _table(store, 0, "d")}).ref
    s = ref.summary
    assert s["n_text_labelled"] == 16 and s["n_unlabelled"] == 0 and s["n_labelled"] == 16
    assert "16 labelled by their text only (no logprobs: unweighted 1/2 preferences)" in label_note(
        s
    )
    rows = store.read_table(ref).to_pylist()
    assert {r["judge_status"] for r in rows} == {"text_label"}
    assert {r["preference"] for r in rows} <= {1.0, 2.0}  # no weighting: a side, not a share

    with running_server(
        build_app(FakeJudge(logprobs=False, text="The first"), model_name="fake-judge")
    ) as url:
        with pytest.raises(JudgeOutputError) as e:
            resolve_stage(PAIRWISE, _cfg(url), ctx, {"table": _table(store, 0, "e")})
    assert "returned no logprobs for 16 answers" in str(e.value)
    assert "did not follow the answer format" not in str(e.value)


def test_rows_dropped_at_prepare_are_counted(ctx, tmp_path):
    from flows.pipeline import PipelineReport
    from flows.reporting import eval_rows_note
    from sgpo.config import DatasetSpec
    from sgpo.report.summary import StageReport

    path = tmp_path / "eval.jsonl"
    lines = [f'{{"prompt": "q{i}", "response": "a{i}"}}' for i in range(15)]
    path.write_text("\n".join([*lines, '{"prompt": "q15", "response": ""}']) + "\n")
    ref = resolve_stage(get_stage("prepare"), DatasetSpec(path=str(path)), ctx, {}).ref
    assert (ref.rows, ref.summary["rows_read"], ref.summary["rows_dropped"]) == (15, 16, 1)
    report = PipelineReport(
        flow_run_id=None,
        stages=[
            StageReport(
                stage="prepare[eval]",
                status="ran",
                seconds=0.1,
                uri=ref.uri,
                content_hash=ref.content_hash,
                summary=ref.summary,
            )
        ],
        final_policy="x",
        judge={},
    )
    note = eval_rows_note(report.stages)
    assert (
        note
        == " (1 of 16 rows of the eval data dropped: no prompt, or an empty response / reference)"
    )
