"""Empty answers are caught and counted (issue 20, failure 4): the sample and pairs stages drop
generated answers that are empty or whitespace, say how many in their summary and stage line, and
fail (publishing nothing) when more than `max_empty_fraction` of them are; a pair whose chosen or
rejected answer is empty never reaches DPO. A wrecked real model answers nothing: here a
SmolLM2-like model that ends every answer at once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from artifacts.store import ArtifactStore
from sgpo.config import PairsStageConfig, SampleStageConfig, StoreConfig
from sgpo.core import StageContext, run_stage
from sgpo.core.job import stage_note
from sgpo.data.sources import EmptyAnswersError
from sgpo.generate.contract import Generation
from tasks import get_stage
from tests.helpers.smol import build_smol_like

ROWS = [
    {
        "prompt_id": f"p{i}",
        "prompt": f"Question {i}?",
        "reference": f"Reference answer {i}.",
        "messages": None,
    }
    for i in range(4)
]


class Scripted:
    """A generator answering from a list, in order (a stand-in for a model's generate)."""

    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, conversations, params):
        return [
            [Generation(self.texts.pop(0), "stop", 3) for _ in range(params.n)]
            for _ in conversations
        ]

    def close(self):
        pass


@pytest.fixture
def store(tmp_path, tiny_model_dir):
    s = ArtifactStore(str(tmp_path / "store"))
    data = s.publish_table("prepare", "d" * 64, pa.Table.from_pylist(ROWS), manifest={})
    model = s.publish_model("base_model", "m" * 64, tiny_model_dir, manifest={})
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    return ctx, data, model


def _script(monkeypatch, texts):
    import sgpo.generate

    monkeypatch.setattr(sgpo.generate, "open_generator", lambda *a, **k: Scripted(texts))


def test_sample_drops_and_counts_empty_answers(store, monkeypatch):
    ctx, data, model = store
    _script(monkeypatch, ["Fine.", "", "  \n\t", "Good."])
    ref = run_stage(get_stage("sample"), SampleStageConfig(), ctx, {"policy": model, "data": data})
    table = ArtifactStore(ctx.store.url).read_table(ref).to_pylist()
    assert [r["policy"] for r in table] == ["Fine.", "Good."]
    assert ref.summary["samples"] == 2 and ref.summary["empty_dropped"] == 2
    assert stage_note(ref.summary) == " (2 empty answers dropped)"


def test_sample_fails_when_most_answers_are_empty(store, monkeypatch):
    ctx, data, model = store
    _script(monkeypatch, ["", " ", "Fine.", ""])
    with pytest.raises(EmptyAnswersError, match=r"sample: 3 of 4 generated answers were empty"):
        run_stage(get_stage("sample"), SampleStageConfig(), ctx, {"policy": model, "data": data})
    assert not list(Path(ctx.store.url).glob("sample/*/manifest.json"))  # nothing published
    # a higher bound publishes what is left
    _script(monkeypatch, ["", " ", "Fine.", ""])
    ref = run_stage(
        get_stage("sample"),
        SampleStageConfig(max_empty_fraction=1.0),
        ctx,
        {"policy": model, "data": data},
    )
    assert ref.summary["samples"] == 1 and ref.summary["empty_dropped"] == 3
    # the bound is a runtime setting (one key), so a run at the default finds that artifact: it is
    # not reused, since 3 of 4 empty is more than the default accepts (and nothing is generated)
    st = get_stage("sample")
    inputs = {"policy": model, "data": data}
    assert st.cache_key(SampleStageConfig(), inputs) == st.cache_key(
        SampleStageConfig(max_empty_fraction=1.0), inputs
    )
    _script(monkeypatch, [])
    with pytest.raises(EmptyAnswersError, match=r"dropped 3 of 4 .* so it is not reused"):
        run_stage(st, SampleStageConfig(), ctx, inputs)


def test_pairs_with_an_empty_chosen_or_rejected_answer_never_reach_dpo(store, monkeypatch):
    ctx, data, model = store
    # four policy answers (rejected), then four refinements (chosen)
    _script(
        monkeypatch,
        ["Policy 0.", "", "Policy 2.", "Policy 3.", "Better 0.", "Better 1.", " ", "Better 3."],
    )
    cfg = PairsStageConfig()
    ref = run_stage(
        get_stage("pairs"), cfg, ctx, {"policy": model, "improver": model, "data": data}
    )
    table = ArtifactStore(ctx.store.url).read_table(ref).to_pylist()
    assert [(r["chosen"], r["rejected"]) for r in table] == [
        ("Better 0.", "Policy 0."),
        ("Better 3.", "Policy 3."),
    ]
    s = ref.summary
    assert (s["pairs"], s["empty_dropped"], s["empty_chosen"], s["empty_rejected"]) == (2, 2, 1, 1)
    assert stage_note(s) == " (2 empty answers dropped)"
    # reused at a bound that accepts 2 of 4 empty (the default 0.5), not at a tighter one
    inputs = {"policy": model, "improver": model, "data": data}
    _script(monkeypatch, [])
    assert run_stage(get_stage("pairs"), cfg, ctx, inputs) == ref
    with pytest.raises(EmptyAnswersError, match=r"pairs: the stored artifact .* dropped 2 of 4"):
        run_stage(get_stage("pairs"), PairsStageConfig(max_empty_fraction=0.25), ctx, inputs)


def test_dpo_never_trains_on_an_empty_answer():
    from sgpo.train.reference import preference_pairs

    rows = [
        {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Q?", "chosen": "", "rejected": "No."},
        {"prompt": "Q?", "chosen": "Yes.", "rejected": " \n"},
        {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."},
    ]
    assert [(c, r) for _, c, r in preference_pairs(rows)] == [("Yes.", "No.")]


def test_a_wrecked_real_model_fails_sample_with_the_reason(tmp_path):
    """A SmolLM2-like model that ends every answer at once (as SmolLM2 did after one SFT step at 1e-3):
    the sample stage says so instead of passing empty answers to the external LLM."""
    model_dir = build_smol_like(tmp_path / "mute", script={"\n": "<|im_end|>"})
    s = ArtifactStore(str(tmp_path / "store"))
    data = s.publish_table("prepare", "d" * 64, pa.Table.from_pylist(ROWS), manifest={})
    model = s.publish_model("sft", "m" * 64, model_dir, manifest={})
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")))
    with pytest.raises(
        EmptyAnswersError, match=r"4 of 4 generated answers were empty.*learning rate"
    ):
        run_stage(get_stage("sample"), SampleStageConfig(), ctx, {"policy": model, "data": data})
