"""One loaded model for every benchmark's generation of one checkpoint (issue 15, performance).

The evaluation flow opens `sgpo.generate.shared_generators()`: AlpacaEval's and MT-Bench's generate
stages and lm-eval's HF back-end use the one model loaded first, instead of one load per stage, and
every artifact is byte-identical to the one a load per stage makes (same cache keys, same content
hashes). Outside the flow (`python -m tasks.<stage>`) each call still loads its own.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from sgpo.llm.server import ChatResult

GENERATE = ("alpaca_eval_generate", "mt_bench_generate", "lm_eval")


class Judge:
    """AlpacaEval's one-token m/M with logprobs, and MT-Bench's [[rating]]."""

    def chat(self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop):
        if top_logprobs:
            from sgpo.llm.rule_judge import judge_answer

            return judge_answer(0.6, top_logprobs=top_logprobs, prompt_tokens=10)
        return ChatResult(
            text="Rating: [[5]]", finish_reason="stop", prompt_tokens=10, completion_tokens=4
        )


def _data(folder: Path) -> tuple[Path, Path]:
    """(lm-eval task folder, MT-Bench questions), shared by both runs (their paths are in the cache keys)."""
    tasks = folder / "lm_tasks"
    tasks.mkdir(parents=True)
    docs = [{"q": f"Item {i} is", "choices": ["red", "blue"], "gold": i % 2} for i in range(4)]
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "shared_mc.yaml").write_text(
        f"task: shared_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    questions = folder / "mt.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": i, "category": c, "turns": [f"Write line {i}.", "Shorter."]})
            + "\n"
            for i, c in ((1, "writing"), (2, "math"))
        )
    )
    return tasks, questions


def _config(workdir: Path, url: str, model_dir: Path, tasks: Path, questions: Path):
    from sgpo.config import EvaluationConfig

    endpoint = {
        "base_url": url,
        "model": "scripted-judge",
        "max_retries": 1,
        "backoff_base_s": 0.05,
        "max_concurrency": 4,
    }
    sampling = {"max_new_tokens": 10, "batch_size": 8, "backend": "transformers"}
    return EvaluationConfig.model_validate(
        {
            "name": "eval-shared-test",
            "model": {"path": str(model_dir), "name": "tiny-policy"},
            "alpaca_eval": {
                "enabled": True,
                "data": {"path": "bundled:tiny/eval.jsonl", "split": "eval"},
                "max_rows": 4,
                "sampling": sampling,
                "endpoint": endpoint,
                "top_logprobs": 5,
                "instruction_difficulty": "none",
                "gamed_annotations": "none",
            },
            "arena_hard": {"enabled": False},
            "mt_bench": {
                "enabled": True,
                "questions": str(questions),
                "reference_answers": None,
                "sampling": sampling,
                "endpoint": endpoint,
            },
            "lm_eval": {
                "enabled": True,
                "backend": "hf",
                "include_paths": [str(tasks)],
                "limit": 4,
                "batch_size": 4,
                "tasks": [{"name": "shared_mc", "num_fewshot": 0, "metric": "acc"}],
            },
            "store": {"url": str(workdir / "store")},
            "tracking": {"mlflow_uri": f"sqlite:///{workdir}/mlflow.db"},
        }
    )


# two evaluations of every benchmark (46 s); the generator contract: tests/integration/generate/
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    """The same evaluation twice, into two stores: with the flow's shared generators, and with one load per stage."""
    import transformers

    import flows.evaluate as fe
    from flows.evaluate import evaluate
    from sgpo.generate import hf
    from sgpo.llm.server import build_app, running_server

    real_load = transformers.AutoModelForCausalLM.from_pretrained.__func__
    real_init = hf.TransformersGenerator.__init__
    counts: dict[str, dict[str, int]] = {}
    out = {}
    data = _data(tmp_path_factory.mktemp("data"))
    mp = pytest.MonkeyPatch()
    try:
        for mode in ("shared", "per_stage"):
            c = counts[mode] = {"from_pretrained": 0, "TransformersGenerator": 0}

            def load(cls, path, *a, _c=c, **k):
                _c["from_pretrained"] += (
                    Path(str(path)).resolve() == Path(tiny_model_dir).resolve()
                    or Path(str(path)).name == "model"
                )
                return real_load(cls, path, *a, **k)

            def init(self, *a, _c=c, **k):
                _c["TransformersGenerator"] += 1
                real_init(self, *a, **k)

            mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(load))
            mp.setattr(hf.TransformersGenerator, "__init__", init)
            if mode == "per_stage":
                mp.setattr(fe, "shared_generators", contextlib.nullcontext)
            workdir = tmp_path_factory.mktemp(mode)
            with running_server(build_app(Judge(), model_name="scripted-judge")) as url:
                out[mode] = evaluate(config=_config(workdir, url, tiny_model_dir, *data))
    finally:
        mp.undo()
    return out, counts


def test_one_model_load_for_every_benchmark_of_the_checkpoint(two_runs):
    reports, counts = two_runs
    assert [s.status for s in reports["shared"].stages if s.stage in GENERATE] == ["ran"] * 3
    assert counts["per_stage"] == {
        "from_pretrained": 3,
        "TransformersGenerator": 2,
    }  # AE2, MT-Bench, lm-eval
    assert counts["shared"] == {"from_pretrained": 1, "TransformersGenerator": 1}


def test_shared_generator_leaves_every_artifact_and_cache_key_unchanged(two_runs):
    reports, _ = two_runs

    def keys(report):  # the store differs: compare what follows it (stage/cache key)
        return {s.stage: s.uri.split("/store/", 1)[1] for s in report.stages}

    def hashes(report):
        return {s.stage: s.content_hash for s in report.stages if s.stage in GENERATE}

    assert keys(reports["shared"]) == keys(reports["per_stage"])  # every stage, judges included
    # byte-identical answers and lm-eval metrics (the judge tables also keep the server's raw responses,
    # whose ids and timestamps differ between any two runs)
    assert len(hashes(reports["shared"])) == 3 and hashes(reports["shared"]) == hashes(
        reports["per_stage"]
    )
