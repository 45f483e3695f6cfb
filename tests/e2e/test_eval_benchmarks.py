"""MT-Bench and lm-eval as stages of the evaluation flow on the tiny model, MT-Bench judged by a
local OpenAI-compatible server with scripted ratings: two turns with the official prompts and
scores, a local lm-eval task and IFEval, a judge that never rates, an unknown lm-eval task found
before the model loads. The pure checks: tests/unit/evals/test_eval_benchmarks.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sgpo.data.shared import shared_data_dir
from sgpo.llm.server import ChatResult
from tests.helpers.data import need

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DATA = shared_data_dir()

IFEVAL = DATA / "ifeval"
MTB = DATA / "mt_bench"


# IFEval paper, GPT-4 (data/ifeval/README.md)
PAPER_IFEVAL = {
    "prompt_level_strict_acc": 76.89,
    "prompt_level_loose_acc": 79.30,
    "inst_level_strict_acc": 83.57,
    "inst_level_loose_acc": 85.37,
}


MT_QUESTIONS = (81, 111, 131)  # writing (no reference), math and extraction
NO_RATING_TURN = (131, 2)  # the judge answers this one without a rating


class ScriptedMTJudge:
    """Rates by the question it sees: rating = question_id % 9 + 1 for turn 1, + 0.5 for turn 2."""

    def __init__(self, questions: dict[int, dict], all_fail: bool = False):
        self.questions, self.all_fail = questions, all_fail
        self.calls: list[list[dict]] = []
        self._lock = threading.Lock()

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        with self._lock:
            self.calls.append(messages)
        user = messages[-1]["content"]
        turn = 2 if "Conversation with User|>" in user else 1
        qid = next(q for q, rec in self.questions.items() if rec["turns"][0] in user)
        if self.all_fail or (qid, turn) == NO_RATING_TURN:
            text = "The answer is fine overall."
        else:
            text = f"Explanation. Rating: [[{qid % 9 + 1 + (0.5 if turn == 2 else 0)}]]"
        return ChatResult(
            text=text, finish_reason="stop", prompt_tokens=len(user.split()), completion_tokens=5
        )


@pytest.fixture(scope="module")
def mt_questions():
    need(MTB / "question.jsonl", MTB / "reference_answer_gpt-4.jsonl")
    qs = {
        json.loads(line)["question_id"]: json.loads(line)
        for line in (MTB / "question.jsonl").read_text().splitlines()
    }
    return {q: qs[q] for q in MT_QUESTIONS}


def _local_task(folder: Path) -> Path:
    """A 4-document multiple-choice task over a local jsonl (lm-eval task YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        {"q": "The sky is", "choices": ["blue", "green"], "gold": 0},
        {"q": "Two plus two is", "choices": ["five", "four"], "gold": 1},
        {"q": "Water is", "choices": ["wet", "dry"], "gold": 0},
        {"q": "Fire is", "choices": ["cold", "hot"], "gold": 1},
    ]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "sgpo_local_mc.yaml").write_text(
        "task: sgpo_local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'docs.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    return folder


def _flow_config(workdir: Path, url: str, model_dir: Path, tasks_dir: Path, **over):
    from sgpo.config import EvaluationConfig

    endpoint = {
        "base_url": url,
        "model": "scripted-judge",
        "max_retries": 1,
        "backoff_base_s": 0.05,
        "max_concurrency": 4,
    }
    tree = {
        "name": "eval-bench-test",
        "model": {"path": str(model_dir), "name": "tiny-policy"},
        "alpaca_eval": {"enabled": False},
        "arena_hard": {"enabled": False},
        "mt_bench": {
            "enabled": True,
            "questions": str(MTB / "question.jsonl"),
            "reference_answers": str(MTB / "reference_answer_gpt-4.jsonl"),
            "sampling": {"max_new_tokens": 12, "batch_size": 8},
            "endpoint": endpoint,
        },
        "lm_eval": {
            "enabled": True,
            "include_paths": [str(tasks_dir)],
            "limit": 3,
            "max_gen_toks": 8,
            "batch_size": 4,
            "tasks": [
                {"name": "sgpo_local_mc", "num_fewshot": 0, "metric": "acc"},
                {
                    "name": "ifeval",
                    "metric": "prompt_level_strict_acc",
                    "dataset_path": "json",
                    "data_files": {"train": str(IFEVAL / "input_data.jsonl")},
                },
            ],
        },
        "store": {"url": str(workdir / "store")},
        "tracking": {"mlflow_uri": f"sqlite:///{workdir}/mlflow.db"},
    }
    for key, value in over.items():
        tree[key] = {**tree[key], **value}
    return EvaluationConfig.model_validate(tree)


@pytest.fixture(scope="module")
def flow_run(mt_questions, tiny_model_dir, tmp_path_factory):
    need(IFEVAL / "input_data.jsonl")
    from flows.evaluate import evaluate
    from sgpo.llm.server import build_app, running_server

    workdir = tmp_path_factory.mktemp("bench")
    tasks_dir = _local_task(workdir / "lm_tasks")
    judge = ScriptedMTJudge(mt_questions)
    with running_server(build_app(judge, model_name="scripted-judge")) as url:
        cfg = _flow_config(workdir, url, tiny_model_dir, tasks_dir)
        qfile = workdir / "questions.jsonl"
        qfile.write_text("".join(json.dumps(mt_questions[q]) + "\n" for q in MT_QUESTIONS))
        cfg.mt_bench.questions = str(qfile)
        report = evaluate(config=cfg)
    return cfg, report, judge, workdir


def _table(uri: str):
    import pyarrow.parquet as pq

    return pq.read_table(Path(uri.removeprefix("file://")) / "data.parquet").to_pylist()


def test_mt_bench_two_turns_official_prompts_and_scores(flow_run, mt_questions):
    cfg, report, judge, _ = flow_run
    official = {
        json.loads(line)["name"]: json.loads(line)
        for line in (MTB / "judge_prompts.jsonl").read_text().splitlines()
    }
    refs = {
        json.loads(line)["question_id"]: json.loads(line)["choices"][0]["turns"]
        for line in (MTB / "reference_answer_gpt-4.jsonl").read_text().splitlines()
    }
    m = report.mt_bench
    rows = _table(m["judgments_uri"])
    assert len(rows) == 6 and len(judge.calls) == 6
    answers_rows = {
        r["question_id"]: r
        for r in _table(
            report.stages[[s.stage for s in report.stages].index("mt_bench_generate")].uri
        )
    }
    for r in rows:
        q = mt_questions[int(r["question_id"])]
        ref = q["category"] in ("math", "reasoning", "coding")
        name = ("single-math-v1" if ref else "single-v1") + (
            "-multi-turn" if r["turn"] == 2 else ""
        )
        assert r["judge_prompt"] == name
        a = answers_rows[r["question_id"]]["answers"]
        if r["turn"] == 1:
            kw = {"question": q["turns"][0], "answer": a[0]} | (
                {"ref_answer_1": refs[q["question_id"]][0]} if ref else {}
            )
        else:
            kw = {
                "question_1": q["turns"][0],
                "question_2": q["turns"][1],
                "answer_1": a[0],
                "answer_2": a[1],
            }
            kw |= (
                {
                    "ref_answer_1": refs[q["question_id"]][0],
                    "ref_answer_2": refs[q["question_id"]][1],
                }
                if ref
                else {}
            )
        assert r["user_prompt"] == official[name]["prompt_template"].format(**kw)
    for messages in judge.calls:  # the official system prompt of the prompt used
        assert messages[0]["role"] == "system" and messages[0]["content"] in {
            p["system_prompt"] for p in official.values()
        }
    # the second turn is generated after the policy's own first answer: the turn-2 prompt shows both
    turn2 = [
        c[-1]["content"] for c in judge.calls if "Conversation with User|>" in c[-1]["content"]
    ]
    for qid in MT_QUESTIONS:
        a = answers_rows[str(qid)]["answers"]
        assert any(
            f"### Assistant A:\n{a[0]}\n\n### User:\n{mt_questions[qid]['turns'][1]}" in t
            for t in turn2
        )
    # scores by hand from the scripted ratings (131 turn 2 has none: counted, left out)
    t1 = [q % 9 + 1 for q in MT_QUESTIONS]
    t2 = [q % 9 + 1.5 for q in MT_QUESTIONS if (q, 2) != NO_RATING_TURN]
    assert m["n_no_rating"] == 1 and m["n_no_rating_turn_2"] == 1 and m["n_rated"] == 5
    assert m["score_turn_1"] == pytest.approx(sum(t1) / 3)
    assert m["score_turn_2"] == pytest.approx(sum(t2) / 2)
    assert m["score"] == pytest.approx((sum(t1) + sum(t2)) / 5)
    cats = {c["category"]: c for c in m["categories"]}
    assert cats["math"]["score"] == pytest.approx((111 % 9 + 1 + 111 % 9 + 1.5) / 2)
    assert cats["extraction"]["n_no_rating"] == 1 and cats["extraction"]["turn_2"] is None
    # one comparable number: what it was measured with
    assert m["judge_model"] == "scripted-judge" and m["prompt_version"].startswith(
        "mt_bench_judge_single_v1@"
    )
    assert (
        m["decoding"]["category_temperature"]["writing"] == 0.7
        and m["decoding"]["max_new_tokens"] == 12
    )
    assert m["reference_answers"].endswith("reference_answer_gpt-4.jsonl")


def test_lm_eval_stage_local_task_and_ifeval(flow_run):
    import pyarrow.parquet as pq

    _, report, _, _ = flow_run
    e = report.lm_eval
    rows = _table(e["metrics_uri"])
    metrics = {(r["task"], r["metric"]): r for r in rows}
    assert {("ifeval", m) for m in PAPER_IFEVAL} <= set(metrics)
    assert metrics[("ifeval", "prompt_level_strict_acc")]["chat_template"] is True
    assert metrics[("sgpo_local_mc", "acc")]["chat_template"] is False
    assert (
        metrics[("sgpo_local_mc", "acc")]["num_fewshot"] == 0
        and metrics[("sgpo_local_mc", "acc")]["headline"]
    )
    samples = pq.read_table(e["samples_uri"].removeprefix("file://")).to_pylist()
    assert sorted((s["task"], s["doc_id"]) for s in samples) == [
        (t, i) for t in ("ifeval", "sgpo_local_mc") for i in range(3)
    ]
    # accuracy by hand from the logged per-choice log-likelihoods: argmax == gold
    mc = [s for s in samples if s["task"] == "sgpo_local_mc"]
    hits = []
    for s in mc:
        lls = [r[0][0] for r in json.loads(s["resps"])]
        hits.append(
            float(max(range(len(lls)), key=lambda i: lls[i]) == json.loads(s["doc"])["gold"])
        )
    assert metrics[("sgpo_local_mc", "acc")]["value"] == pytest.approx(sum(hits) / len(hits))
    ife = [s for s in samples if s["task"] == "ifeval"]
    assert all("<|im_start|>user" in s["arguments"] for s in ife)  # the chat template was applied
    assert e["comparable"] is False and e["limit"] == 3  # a limit is recorded as not comparable
    assert e["task_versions"]["ifeval"] == 4.0 and e["decoding"]["ifeval"]["max_gen_toks"] == 8


def test_all_judge_answers_without_rating_fail_the_stage(mt_questions, tiny_model_dir, tmp_path):
    from flows.evaluate import evaluate
    from sgpo.llm.server import build_app, running_server

    judge = ScriptedMTJudge(mt_questions, all_fail=True)
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(mt_questions[q]) + "\n" for q in MT_QUESTIONS[:2]))
    with running_server(build_app(judge, model_name="scripted-judge")) as url:
        cfg = _flow_config(tmp_path, url, tiny_model_dir, tmp_path, lm_eval={"enabled": False})
        cfg.mt_bench.questions = str(qfile)
        with pytest.raises(Exception, match=r"none of the 4 judgments has a \[\[rating\]\]"):
            evaluate(config=cfg)


def test_unknown_lm_eval_task_fails_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    from flows.evaluate import evaluate
    from sgpo.evals import lm_harness

    monkeypatch.setattr(
        lm_harness, "load_lm", lambda *a, **k: pytest.fail("model loaded for an unknown task")
    )
    cfg = _flow_config(
        tmp_path,
        "http://127.0.0.1:9",
        tiny_model_dir,
        tmp_path,
        mt_bench={"enabled": False},
        lm_eval={"tasks": [{"name": "no_such_task_xyz"}], "include_paths": []},
    )
    with pytest.raises(Exception, match="unknown lm-eval task.*no_such_task_xyz"):
        evaluate(config=cfg)
