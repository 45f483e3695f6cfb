"""The evaluation flow end to end on small slices of the real benchmarks, for real: Prefect
(ephemeral API), the artifact store, MLflow on SQLite, the tiny model answering, and a local
OpenAI-compatible judge server whose answers are scripted (deterministic, order-independent
rules), so every number below is predictable.

* AlpacaEval 2.0: 6 of the 805 instructions vs GPT-4 Turbo's answers; the judge answers one token
  with top logprobs; checks the official prompt/order/parameters, the mapping back to
  output_1 = baseline, a row without a label token, WR / SE / LC (surrogate difficulty).
* Arena-Hard v0.1: 4 questions vs gpt-4-0314, two games each; one question's judge gives no label
  at first (the follow-up turn), one never does, one is a tie; BT score + bootstrap CI.
* pairwise: `imp` vs `policy` / `reference` columns of a table artifact.
* A forced re-run of the judge stages answers every call from the journal: nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import threading
from pathlib import Path

import pytest

from sgpo.data.shared import shared_data_dir
from sgpo.llm.server import ChatResult

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)  # LC GLM on 5 rows

DATA = shared_data_dir()
ALPACA = DATA / "alpaca_eval" / "gpt4_1106_preview_outputs.json"
SURROGATE = DATA / "alpaca_eval" / "instruction_difficulty_surrogate.csv"
QUESTIONS = DATA / "arena_hard" / "question.jsonl"
BASELINE = DATA / "arena_hard" / "answer_gpt-4-0314.jsonl"
N_ALPACA, N_ARENA = 6, 4
NO_LABEL_ROW = 4  # AlpacaEval row whose judge answer has neither "m" nor "M" in its top logprobs
FOLLOW_UP_Q, NEVER_LABEL_Q = 1, 2  # Arena-Hard questions: label only after the follow-up / never
TIE_Q = 3  # Arena-Hard question judged a tie in both games (so the Bradley-Terry fit has a finite optimum)
THINKING = "Let me compare both answers with my own first."
FOLLOW_UP = "continue your judgment and finish by outputting a final verdict label"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def winner_is_first(a: str, b: str) -> bool:
    """The scripted judge's taste: order-independent, so swapping positions must not change the winner."""
    return _h(a) < _h(b)


def arena_verdict(question: str, a: str, b: str, tie: bool = False) -> str:
    if a == b or tie:
        return "A=B"
    strong = int(_h(question)[-1], 16) % 2 == 0
    if winner_is_first(a, b):
        return "A>>B" if strong else "A>B"
    return "B>>A" if strong else "B>A"


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


class ScriptedJudge:
    """A ChatBackend playing both official judges, recording every call it answers."""

    def __init__(
        self,
        no_label_instructions: set[str],
        follow_up_questions: set[str],
        never_label_questions: set[str],
        tie_questions: set[str],
    ):
        self.no_label_instructions = no_label_instructions
        self.follow_up_questions = follow_up_questions
        self.never_label_questions = never_label_questions
        self.tie_questions = tie_questions
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def chat(
        self, messages, *, max_tokens, temperature, top_p, seed, top_logprobs, stop
    ) -> ChatResult:
        with self._lock:
            self.calls.append(
                {
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "top_p": top_p,
                    "top_logprobs": top_logprobs,
                }
            )
        user = messages[1]["content"] if len(messages) > 1 else messages[0]["content"]
        if '"model_identifier": "m"' in user:
            return self._alpaca(user)
        return self._arena(messages)

    def _alpaca(self, user: str) -> ChatResult:
        instruction = _between(user, '"instruction": """', '""",\n}\n\n## Model Outputs')
        first = _between(user, '"model_identifier": "m",\n        "output": """', '"""\n    },')
        second = _between(user, '"model_identifier": "M",\n        "output": """', '"""\n    }\n}')
        if instruction in self.no_label_instructions:
            tops = [
                {"token": "The", "logprob": math.log(0.6)},
                {"token": "Both", "logprob": math.log(0.3)},
            ]
        else:
            p_m = 0.8 if winner_is_first(first, second) else 0.2
            tops = sorted(
                [
                    {"token": "m", "logprob": math.log(p_m)},
                    {"token": "M", "logprob": math.log(1 - p_m)},
                    {"token": "The", "logprob": math.log(0.001)},
                ],
                key=lambda t: -t["logprob"],
            )
        return ChatResult(
            text=tops[0]["token"],
            finish_reason="length",
            prompt_tokens=len(user.split()),
            completion_tokens=1,
            logprobs=[{**tops[0], "top_logprobs": tops}],
        )

    def _arena(self, messages) -> ChatResult:
        user = messages[1]["content"]
        question = _between(user, "<|User Prompt|>\n", "\n\n<|The Start of Assistant A's Answer|>")
        a = _between(
            user, "<|The Start of Assistant A's Answer|>\n", "\n<|The End of Assistant A's Answer|>"
        )
        b = _between(
            user, "<|The Start of Assistant B's Answer|>\n", "\n<|The End of Assistant B's Answer|>"
        )
        follow_up = messages[-1]["role"] == "user" and messages[-1]["content"] == FOLLOW_UP
        if question in self.never_label_questions or (
            question in self.follow_up_questions and not follow_up
        ):
            text = THINKING
        else:
            verdict = arena_verdict(question, a, b, tie=question in self.tie_questions)
            text = f"Both answers address the prompt.\n\nMy final verdict is: [[{verdict}]]"
        return ChatResult(
            text=text,
            finish_reason="stop",
            prompt_tokens=len(user.split()),
            completion_tokens=len(text.split()),
        )


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bench():
    missing = [str(p) for p in (ALPACA, SURROGATE, QUESTIONS, BASELINE) if not p.is_file()]
    if missing:
        pytest.skip(
            f"offline benchmark files absent: {missing} (set SGPO_SHARED_DATA to the shared/data folder)"
        )
    alpaca = json.loads(ALPACA.read_text())[:N_ALPACA]
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines()[:N_ARENA]]
    return {"alpaca": alpaca, "questions": questions}


@pytest.fixture(scope="module")
def judge(bench):
    return ScriptedJudge(
        no_label_instructions={bench["alpaca"][NO_LABEL_ROW]["instruction"]},
        follow_up_questions={bench["questions"][FOLLOW_UP_Q]["turns"][0]["content"]},
        never_label_questions={bench["questions"][NEVER_LABEL_Q]["turns"][0]["content"]},
        tie_questions={bench["questions"][TIE_Q]["turns"][0]["content"]},
    )


@pytest.fixture(scope="module")
def judge_url(judge, tmp_path_factory):
    from sgpo.llm.server import build_app, running_server

    log = tmp_path_factory.mktemp("judge") / "requests.jsonl"
    with running_server(build_app(judge, model_name="scripted-judge", request_log=log)) as url:
        yield url, log


PAIR_ROWS = [
    {
        "prompt": "Name a colour.",
        "reference": "Blue.",
        "policy": "Red",
        "imp": "Red is a warm colour.",
    },
    {"prompt": "Add 2 and 3.", "reference": "2 + 3 = 5.", "policy": "6", "imp": "2 + 3 = 5"},
    {
        "prompt": "Say hello in French.",
        "reference": "Bonjour !",
        "policy": "Hola",
        "imp": "Bonjour",
    },
    {
        "prompt": "Spell cat.",
        "reference": "C-A-T",
        "policy": "cat",
        "imp": "cat",
    },  # imp == policy: 1.5, no call
    {"prompt": "Unannotated.", "reference": "A", "policy": "B", "imp": None},  # skipped
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def table_uri(workdir) -> str:
    """A table artifact shaped like the pipeline's `annotate` output (prompt, reference, policy, imp)."""
    import pyarrow as pa

    from artifacts.store import ArtifactStore

    store = ArtifactStore(str(workdir / "store"))
    ref = store.publish_table(
        "annotate",
        _h("test-annotate"),
        pa.Table.from_pylist(PAIR_ROWS),
        manifest={"stage": "annotate", "test": True},
    )
    return ref.uri


def _config(workdir: Path, url: str, model_dir: Path, table: str):
    from sgpo.config import EvaluationConfig

    endpoint = {
        "base_url": url,
        "model": "scripted-judge",
        "max_retries": 1,
        "backoff_base_s": 0.05,
        "max_concurrency": 4,
    }
    sampling = {"max_new_tokens": 24, "batch_size": 8}
    return EvaluationConfig.model_validate(
        {
            "name": "eval-test",
            "model": {"path": str(model_dir), "name": "tiny-policy"},
            "alpaca_eval": {
                "data": {"path": str(ALPACA), "split": "eval"},
                "max_rows": N_ALPACA,
                "sampling": sampling,
                "instruction_difficulty": str(SURROGATE),
                "gamed_annotations": "none",
                "endpoint": endpoint,
                "max_unlabelled_fraction": 0.5,  # the scripted judge leaves one row in 6 unlabelled
            },
            "arena_hard": {
                "questions": str(QUESTIONS),
                "baseline_answers": str(BASELINE),
                "max_rows": N_ARENA,
                "sampling": sampling,
                "bootstrap_rounds": 20,
                "endpoint": endpoint,
                "max_unlabelled_fraction": 0.5,  # and one question never labelled
            },
            "pairwise": [
                {
                    "name": "imp_vs_policy",
                    "table": table,
                    "model_column": "imp",
                    "baseline_column": "policy",
                    "endpoint": endpoint,
                },
                {
                    "name": "imp_vs_reference",
                    "table": table,
                    "model_column": "imp",
                    "baseline_column": "reference",
                    "endpoint": endpoint,
                },
            ],
            "store": {"url": str(workdir / "store")},
            "tracking": {"mlflow_uri": f"sqlite:///{workdir}/mlflow.db"},
        }
    )


@pytest.fixture(scope="module")
def first_run(bench, judge, judge_url, workdir, table_uri, tiny_model_dir):
    from flows.evaluate import evaluate

    cfg = _config(workdir, judge_url[0], tiny_model_dir, table_uri)
    report = evaluate(config=cfg)
    return cfg, report, len(judge.calls)


def hand_win_rates(preferences: list[float]) -> dict[str, float]:
    """AlpacaEval's head-to-head numbers written out by hand (not the stage's metric code), from the
    published definition (alpaca_eval `get_winrate`): over labelled rows, win rate = 100 * mean(p - 1),
    SE = 100 * sample standard deviation (ddof 1) of (p - 1) / sqrt(n), discrete win rate = 100 *
    (wins + draws / 2) / n with a win p > 1.5, a draw p = 1.5."""
    x = [p - 1 for p in preferences]
    n = len(x)
    return {
        "win_rate": 100 * sum(x) / n,
        "standard_error": 100 * statistics.stdev(x) / math.sqrt(n),
        "discrete_win_rate": 100 * (sum(v > 0.5 for v in x) + sum(v == 0.5 for v in x) / 2) / n,
    }


# Tolerance for numbers the test computes by hand in floating point (pandas vs plain Python sums).
EXACT = dict(rel=1e-9, abs=1e-9)


def _read_table(uri: str):
    import pyarrow.parquet as pq

    return pq.read_table(Path(uri.removeprefix("file://")) / "data.parquet").to_pylist()


# ------------------------------------------------------------------------------------------ AlpacaEval
def test_alpaca_eval_annotations_follow_the_official_protocol(bench, judge, first_run):
    from sgpo.evals.alpaca_eval.preference import official_model_first

    _, report, _ = first_run
    rows = _read_table(report.alpaca_eval["annotations_uri"])
    assert [r["index"] for r in rows] == list(range(N_ALPACA))
    assert list(rows[0])[:10] == [
        "instruction",
        "output_1",
        "generator_1",
        "dataset",
        "output_2",
        "generator_2",
        "annotator",
        "preference",
        "price_per_example",
        "raw_completion",
    ]
    instructions = {b["instruction"] for b in bench["alpaca"]}
    calls = [
        c
        for c in judge.calls
        if '"model_identifier"' in c["messages"][-1]["content"]
        and _between(
            c["messages"][1]["content"], '"instruction": """', '""",\n}\n\n## Model Outputs'
        )
        in instructions
    ]
    assert len(calls) == N_ALPACA
    switched = [r["is_switched_outputs"] for r in rows]
    assert (
        switched == [official_model_first(b["instruction"]) for b in bench["alpaca"]]
        and len(set(switched)) == 2
    )
    for row, ref in zip(rows, bench["alpaca"]):
        assert (row["instruction"], row["output_1"], row["generator_1"], row["dataset"]) == (
            ref["instruction"],
            ref["output"],
            "gpt4_1106_preview",
            ref["dataset"],
        )
        assert (
            row["generator_2"] == "tiny-policy"
            and row["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
        )
        # what the judge saw: the model's answer first ("m") exactly when upstream switches this instruction
        call = next(
            c
            for c in calls
            if f'"instruction": """{row["instruction"]}"""' in c["messages"][1]["content"]
        )
        shown_first = _between(
            call["messages"][1]["content"],
            '"model_identifier": "m",\n        "output": """',
            '"""\n    },',
        )
        assert shown_first == (row["output_2"] if row["is_switched_outputs"] else row["output_1"])
        assert (call["max_tokens"], call["temperature"], call["top_p"], call["top_logprobs"]) == (
            1,
            1.0,
            1.0,
            5,
        )
        assert json.loads(row["raw_completion"])["logprobs"]["content"][0]["top_logprobs"]
        if row["index"] == NO_LABEL_ROW:
            assert row["preference"] is None and row["judge_status"] == "no_label_token"
        else:  # mapped back to output_1 = baseline, output_2 = model, whatever the display order
            model_wins = winner_is_first(row["output_2"], row["output_1"])
            assert row["preference"] == pytest.approx(1.8 if model_wins else 1.2)
            assert row["judge_status"] == "ok"


def test_alpaca_eval_report(first_run):
    _, report, _ = first_run
    rep = report.alpaca_eval
    rows = _read_table(rep["annotations_uri"])
    # what the scripted judge prefers (0.8 / 0.2 on the shown-first token "m", mapped back to the
    # model as output_2): 1.8 when the model's answer wins, 1.2 when the baseline's; the no-label row is left out
    expected = hand_win_rates(
        [
            1.8 if winner_is_first(r["output_2"], r["output_1"]) else 1.2
            for r in rows
            if r["index"] != NO_LABEL_ROW
        ]
    )
    assert rep["n"] == N_ALPACA and rep["n_labelled"] == N_ALPACA - 1
    assert rep["win_rate"] == pytest.approx(expected["win_rate"], **EXACT)
    assert rep["standard_error"] == pytest.approx(expected["standard_error"], **EXACT)
    assert rep["discrete_win_rate"] == pytest.approx(expected["discrete_win_rate"], **EXACT)
    assert rep["avg_length"] == int(sum(len(r["output_2"]) for r in rows) / len(rows))
    assert rep["difficulty_source"] == f"file:{SURROGATE}" and rep["gamed_source"] is None
    assert isinstance(rep["lc_win_rate"], float) and 0 <= rep["lc_win_rate"] <= 100
    assert rep["lc_regularized"] is False and "unregularised" in rep["lc_note"]
    assert rep["sent"] == N_ALPACA and rep["from_journal"] == 0
    on_disk = json.loads(Path(rep["report_uri"].removeprefix("file://")).read_text())
    assert on_disk["win_rate"] == rep["win_rate"] and on_disk["lc_win_rate"] == rep["lc_win_rate"]


# ------------------------------------------------------------------------------------------ Arena-Hard
def test_arena_hard_games_follow_up_and_score(bench, judge, first_run):
    _, report, _ = first_run
    rep = report.arena_hard
    records = _read_table(rep["judgments_uri"])
    assert [r["question_id"] for r in records] == [q["question_id"] for q in bench["questions"]]
    baseline = {
        json.loads(line)["question_id"]: json.loads(line)["choices"][0]["turns"][0]["content"]
        for line in BASELINE.read_text().splitlines()
    }
    answers = {
        r["question_id"]: r
        for r in _read_table(
            report.stages[[s.stage for s in report.stages].index("arena_hard_generate")].uri
        )
    }
    battles = {
        "model": 0,
        "baseline": 0,
        "tie": 0,
    }  # weighted battle rows, counted by hand from the verdicts
    for qi, (rec, q) in enumerate(zip(records, bench["questions"])):
        question, qid = q["turns"][0]["content"], q["question_id"]
        assert (rec["model"], rec["judge"], rec["baseline"]) == (
            "tiny-policy",
            "scripted-judge",
            "gpt-4-0314",
        )
        assert len(rec["games"]) == 2
        model_answer = answers[qid]["answer"]
        for g, (a, b) in enumerate(((baseline[qid], model_answer), (model_answer, baseline[qid]))):
            game = rec["games"][g]
            assert (
                f"<|The Start of Assistant A's Answer|>\n{a}\n<|The End of Assistant A's Answer|>"
                in game["user_prompt"]
            )
            verdict = arena_verdict(question, a, b, tie=qi == TIE_Q)
            final = f"Both answers address the prompt.\n\nMy final verdict is: [[{verdict}]]"
            if (
                qi == FOLLOW_UP_Q
            ):  # no label at first: the follow-up turn asks for it (upstream gen_judgment.py)
                assert game["judgment"] == f"\n{THINKING}\n{final}" and game["turns"] == 2
                assert game["score"] == verdict and game["status"] == "ok"
            elif (
                qi == NEVER_LABEL_Q
            ):  # still none after the 2 allowed turns: no score, no third turn
                assert game["judgment"] == f"\n{THINKING}\n{THINKING}" and game["turns"] == 2
                assert game["score"] is None and game["status"] == "no_label"
            else:
                assert (
                    game["judgment"] == f"\n{final}"
                    and game["turns"] == 1
                    and game["score"] == verdict
                )
                assert (verdict == "A=B") == (qi == TIE_Q)
            assert len(game["raw_responses"]) == game["turns"]
            if (
                qi != NEVER_LABEL_Q
            ):  # upstream: A>B one battle, A>>B `weight` (3), A=B one tie; no label, none
                model_is_a = g == 1
                winner = (
                    "tie"
                    if verdict == "A=B"
                    else "model"
                    if (verdict.startswith("A>") == model_is_a)
                    else "baseline"
                )
                battles[winner] += 3 if ">>" in verdict else 1
    follow_ups = [c for c in judge.calls if c["messages"][-1]["content"] == FOLLOW_UP]
    assert len(follow_ups) == 4  # 2 games x (FOLLOW_UP_Q, NEVER_LABEL_Q)
    for c in follow_ups:
        assert [m["role"] for m in c["messages"]] == ["system", "user", "assistant", "user"]
        assert c["messages"][2]["content"] == THINKING
        assert c["messages"][0]["content"].startswith("Please act as an impartial judge")
        assert (c["temperature"], c["max_tokens"], c["top_p"]) == (0.0, 4096, 1.0)
    assert rep["n_follow_up_turns"] == 4 and rep["n_games_without_label"] == 2
    # Bradley-Terry with two players (model, baseline): the MLE's predicted win rate of the model is its
    # empirical share of the weighted battles, a tie counting half (upstream: each tie one win each side of
    # the duplicated battles); the tie question keeps both outcomes present, so the optimum is finite.
    # Tolerance 1e-3 points: the fit is sklearn's lbfgs at tol 1e-8.
    n_battles = sum(battles.values())
    assert battles["tie"] == 2 and rep["n_battles"] == n_battles
    assert rep["score"] == pytest.approx(
        100 * (battles["model"] + battles["tie"] / 2) / n_battles, abs=1e-3
    )
    assert rep["ci_low"] <= rep["score"] <= rep["ci_high"] and rep["ci"].startswith("(-")


# ------------------------------------------------------------------------------------------ pairwise
def test_pairwise_win_rates(first_run):
    _, report, _ = first_run
    for name, other in (("imp_vs_policy", "policy"), ("imp_vs_reference", "reference")):
        rep = report.pairwise[name]
        rows = _read_table(rep["annotations_uri"])
        assert [r["index"] for r in rows] == [0, 1, 2, 3] and rep["n_skipped"] == 1
        expected = []
        for r in rows:
            src = PAIR_ROWS[r["index"]]
            assert (r["output_2"], r["output_1"]) == (src["imp"], src[other])
            if src["imp"] == src[other]:
                expected.append(1.5)  # identical outputs: a draw, never sent (upstream)
                assert r["judge_status"] == "identical_outputs"
            else:
                expected.append(1.8 if winner_is_first(src["imp"], src[other]) else 1.2)
        assert [r["preference"] for r in rows] == pytest.approx(expected)
        wr = hand_win_rates(expected)
        assert rep["win_rate"] == pytest.approx(wr["win_rate"], **EXACT)
        assert rep["standard_error"] == pytest.approx(wr["standard_error"], **EXACT)
        assert rep["discrete_win_rate"] == pytest.approx(wr["discrete_win_rate"], **EXACT)
    assert report.pairwise["imp_vs_policy"]["sent"] == 3  # the identical pair was not sent


# ------------------------------------------------------------------------------------------ flow
def test_flow_report_tracking_and_stages(first_run):
    from mlflow.tracking import MlflowClient

    from sgpo.report.summary import result_rows, summary_lines

    cfg, report, _ = first_run
    assert [s.stage for s in report.stages] == [
        "alpaca_eval_generate",
        "alpaca_eval_judge",
        "arena_hard_generate",
        "arena_hard_judge",
        "pairwise[imp_vs_policy]",
        "pairwise[imp_vs_reference]",
    ]
    assert {s.status for s in report.stages} == {"ran"}
    assert report.model_name == "tiny-policy" and report.model.startswith("file://")
    metrics = (
        MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
        .get_run(report.mlflow_run_id)
        .data.metrics
    )
    assert metrics["alpaca_eval.win_rate"] == pytest.approx(report.alpaca_eval["win_rate"])
    assert metrics["arena_hard.score"] == pytest.approx(report.arena_hard["score"])
    assert metrics["pairwise.imp_vs_policy.win_rate"] == pytest.approx(
        report.pairwise["imp_vs_policy"]["win_rate"]
    )
    lines = summary_lines(report)
    assert (
        len(lines) == 4
        and lines[0].startswith("[sgpo] AlpacaEval 2.0: WR ")
        and "difficulty file:" in lines[0]
    )
    assert lines[1].startswith("[sgpo] Arena-Hard v0.1: score ") and "95% CI" in lines[1]
    assert [r["benchmark"] for r in result_rows(report)] == [
        "AlpacaEval 2.0",
        "Arena-Hard v0.1",
        "pairwise imp_vs_policy",
        "pairwise imp_vs_reference",
    ]


def test_forced_rerun_of_the_judges_sends_nothing(
    judge, judge_url, workdir, table_uri, tiny_model_dir, first_run
):
    """Recomputing every judge stage (force) answers each call from the journal: no request reaches the server."""
    from flows.evaluate import evaluate
    from sgpo.llm.server import read_request_log

    cfg, first, n_calls = first_run
    n_logged = len(read_request_log(judge_url[1]))
    again = evaluate(config=cfg, force=["alpaca_eval_judge", "arena_hard_judge", "pairwise"])
    assert len(judge.calls) == n_calls and len(read_request_log(judge_url[1])) == n_logged
    status = {s.stage: s.status for s in again.stages}
    assert status["alpaca_eval_generate"] == status["arena_hard_generate"] == "cached"
    assert (
        status["alpaca_eval_judge"]
        == status["arena_hard_judge"]
        == status["pairwise[imp_vs_policy]"]
        == "ran"
    )
    assert (again.alpaca_eval["sent"], again.alpaca_eval["from_journal"]) == (0, N_ALPACA)
    assert (
        again.arena_hard["sent"] == 0
        and again.arena_hard["from_journal"] == again.arena_hard["judge_calls"] == 2 * N_ARENA + 4
    )
    assert again.pairwise["imp_vs_reference"]["sent"] == 0
    for key in ("win_rate", "standard_error", "lc_win_rate"):
        assert again.alpaca_eval[key] == first.alpaca_eval[key]
    assert again.arena_hard["score"] == first.arena_hard["score"]
