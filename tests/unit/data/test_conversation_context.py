"""Multi-turn and system context reaches the annotator, the improver and the refiner (issue 21, item 6):
the request about an answer is asked as the final user turn of the conversation the answer was
written for. Rows as `prepare` makes them (messages = the prompt conversation as JSON)."""

from __future__ import annotations

import json

from sgpo.config import AnnotateStageConfig, ImproverSFTStageConfig, PairsStageConfig
from sgpo.data.sources import earlier_turns
from sgpo.prompts import load_prompt

SYSTEM = {"role": "system", "content": "Answer in French."}
TURNS = [
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
]
MULTI = {
    "prompt_id": "m",
    "prompt": "And a vegetable?",
    "messages": json.dumps([*TURNS, {"role": "user", "content": "And a vegetable?"}]),
    "reference": "Carrot.",
    "policy": "Potato.",
}
SYSTEMED = {
    "prompt_id": "s",
    "prompt": "Say hello.",
    "messages": json.dumps([SYSTEM, {"role": "user", "content": "Say hello."}]),
    "reference": "Bonjour.",
    "policy": "Hello.",
}
SINGLE = {"prompt_id": "p", "prompt": "Say hi.", "reference": "Hi.", "policy": "Hey."}  # old tables


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_earlier_turns():
    assert earlier_turns(MULTI) == TURNS
    assert earlier_turns(SYSTEMED) == [SYSTEM]
    assert earlier_turns(SINGLE) == []


def test_the_annotator_gets_the_conversation():
    from tasks.annotate import build_requests

    reqs = {
        r.key: r.messages for r in build_requests([MULTI, SYSTEMED, SINGLE], AnnotateStageConfig())
    }
    improve = load_prompt("annotate_improve_v1")
    assert reqs["0/imp"] == [
        *TURNS,
        _user(
            improve.render(
                instruction="And a vegetable?", response_a="Carrot.", response_b="Potato."
            )
        ),
    ]
    # external_answer_v1 is the instruction itself: y_ext answers the very conversation
    assert reqs["0/ext"] == [*TURNS, _user("And a vegetable?")]
    assert reqs["1/ext"] == [SYSTEM, _user("Say hello.")]
    assert reqs["1/imp"][0] == SYSTEM and len(reqs["1/imp"]) == 2
    assert reqs["2/ext"] == [_user("Say hi.")]  # a single-turn row: as before


def test_the_improver_learns_in_the_conversation():
    from tasks.improver_sft import improver_examples

    rows = [
        {**MULTI, "target": "Broccoli.", "target_type": "imp", "kept": True},
        {**SYSTEMED, "target": "Bonjour !", "target_type": "ext", "kept": True},
    ]
    (multi, t1), (systemed, t2) = improver_examples(rows, ImproverSFTStageConfig())
    prompt = load_prompt("improver_v1")
    assert multi == [
        *TURNS,
        _user(prompt.render(instruction="And a vegetable?", response="Potato.")),
    ]
    assert systemed == [SYSTEM, _user(prompt.render(instruction="Say hello.", response="Hello."))]
    assert (t1, t2) == ("Broccoli.", "Bonjour !")


def test_the_refiner_refines_in_the_conversation():
    from tasks.pairs import refine_messages

    cfg = PairsStageConfig()
    got = refine_messages(cfg, "Say hello.", "Hello.", "Bonjour.", earlier_turns(SYSTEMED))
    text = load_prompt("refine_v1").render(
        instruction="Say hello.", response="Hello.", reference="Bonjour."
    )
    assert got == [SYSTEM, _user(text)]


def test_pairs_keep_the_conversation_for_later_stages():
    from tasks.pairs import build_pairs

    (row,) = build_pairs([MULTI], [["Potato."]], ["Carrots and peas."], PairsStageConfig())
    assert earlier_turns(row) == TURNS and row["rejected"] == "Potato."
