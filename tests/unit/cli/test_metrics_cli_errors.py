"""`sgpo metrics` on files it cannot score: one line on stderr naming the file, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from sgpo.cli.main import main


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _judgment(model="m", qid="q1", g1="A>B", g2="B>A"):
    return {
        "question_id": qid,
        "model": model,
        "judge": "j",
        "games": [{"score": g1}, {"score": g2}],
    }


ARENA_CASES = {
    "missing": (None, "no such file"),
    "empty": ("", "is empty"),
    "blank-lines": ("\n\n  \n", "is empty"),
    "not-json": ('{"question_id": "q1", "model": \n', "line 1 is not JSON"),
    "a-list": ("[1, 2]\n", "line 1 is a JSON list, not an object"),
    "wrong-keys": (
        json.dumps({"id": 1, "answer": "x"}) + "\n",
        "record 1 is not an Arena-Hard judgment (missing question_id, model, games",
    ),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not UTF-8 text"),
    "no-verdicts": (json.dumps(_judgment(g1=None, g2=None)) + "\n", "no usable battles"),
}


@pytest.mark.parametrize("case", sorted(ARENA_CASES))
def test_arena_hard_bad_input(tmp_path, capsys, case):
    content, expected = ARENA_CASES[case]
    path = tmp_path / "judgments.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, out, err = _run(capsys, ["metrics", "arena-hard", str(path), "--rounds", "2"])
    assert code == 2 and out == ""
    assert err.startswith("sgpo metrics arena-hard: error: ") and err.count("\n") == 1, err
    assert expected in err and "Traceback" not in err
    if case != "no-verdicts":
        assert str(path) in err


def test_arena_hard_empty_folder_and_good_file(tmp_path, capsys):
    code, _, err = _run(capsys, ["metrics", "arena-hard", str(tmp_path)])
    assert code == 2 and "folder with no .jsonl files" in err and str(tmp_path) in err
    good = tmp_path / "j.jsonl"
    lines = [
        _judgment(qid=f"q{i}", g1=g, g2=h)
        for i, (g, h) in enumerate([("A>B", "B>A"), ("B>A", "A>B"), ("A=B", "A=B")] * 3)
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, out, err = _run(capsys, ["metrics", "arena-hard", str(good), "--rounds", "3"])
    assert code == 0 and err == "" and "m" in json.loads(out)["models"]


ALPACA_CASES = {
    "missing": (None, "no such file"),
    "empty": ("", "is empty"),
    "not-json": ('[{"preference": 1,', "is not JSON"),
    "a-number": ("42", "holds a JSON int, not a list of objects"),
    "empty-list": ("[]", "holds no annotations"),
    "wrong-keys": (
        json.dumps([{"instruction": "x", "output": "y"}]),
        "no annotation has output_2, preference",
    ),
    "no-numbers": (
        json.dumps([{"output_1": "a", "output_2": "b", "preference": None}]),
        "no annotation has a numeric preference",
    ),
}


@pytest.mark.parametrize("case", sorted(ALPACA_CASES))
def test_alpaca_eval_bad_input(tmp_path, capsys, case):
    content, expected = ALPACA_CASES[case]
    path = tmp_path / "annotations.json"
    if content is not None:
        path.write_text(content)
    code, out, err = _run(
        capsys, ["metrics", "alpaca-eval", str(path), "--instruction-difficulty", "none"]
    )
    assert code == 2 and out == ""
    assert err.startswith("sgpo metrics alpaca-eval: error: ") and err.count("\n") == 1, err
    assert expected in err and str(path) in err and "Traceback" not in err


def test_alpaca_eval_missing_difficulty_csv_is_one_line(tmp_path, capsys):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([{"output_1": "a", "output_2": "bb", "preference": 2.0}] * 3))
    # --gamed-annotations none: this is about the difficulty file, whether or not ../shared (the offline
    # fallback of 'auto') sits beside the checkout
    code, _, err = _run(
        capsys,
        [
            "metrics",
            "alpaca-eval",
            str(path),
            "--instruction-difficulty",
            str(tmp_path / "no.csv"),
            "--gamed-annotations",
            "none",
        ],
    )
    assert code == 2 and err.count("\n") == 1 and "no.csv" in err
    code, out, err = _run(
        capsys,
        [
            "metrics",
            "alpaca-eval",
            str(path),
            "--instruction-difficulty",
            "none",
            "--gamed-annotations",
            "none",
        ],
    )
    assert code == 0 and json.loads(out)["win_rate"] == pytest.approx(100.0)
