"""A flag between the preset and the overrides keeps every override (issue 24, item 4): `sgpo run tiny
-v dpo.beta=0.2` once said "unrecognized arguments: dpo.beta=0.2"."""

from __future__ import annotations

import pytest

from sgpo.cli.main import build_parser, main, parse_cli


@pytest.mark.parametrize(
    "argv, items, flags",
    [
        (["run", "tiny", "-v", "dpo.beta=0.2"], ["tiny", "dpo.beta=0.2"], {"verbose": True}),
        (
            ["run", "tiny", "--force", "annotate", "k=v", "j=w"],
            ["tiny", "k=v", "j=w"],
            {"force": ["annotate"]},
        ),
        (["run", "-v", "tiny", "k=v"], ["tiny", "k=v"], {"verbose": True}),
        (
            ["evaluate", "eval-tiny", "--force", "judge", "x=1"],
            ["eval-tiny", "x=1"],
            {"force": ["judge"]},
        ),
        (
            ["compare", "tiny", "--method", "dpo", "a=b", "-o", "out", "c=d"],
            ["tiny", "a=b", "c=d"],
            {"method": ["dpo"], "output": "out"},
        ),
    ],
)
def test_flags_anywhere_among_the_overrides(argv, items, flags):
    args = parse_cli(build_parser(), argv)
    assert args.command == argv[0]
    assert args.items == items
    for name, value in flags.items():
        assert getattr(args, name) == value


def test_the_other_commands_take_flags_anywhere_too():
    args = parse_cli(build_parser(), ["report", "a", "-o", "out.html", "b"])
    assert args.uri == ["a", "b"] and args.output == "out.html"
    args = parse_cli(build_parser(), ["metrics", "arena-hard", "a.jsonl", "--seed", "7", "b.jsonl"])
    assert args.judgments == ["a.jsonl", "b.jsonl"] and args.seed == 7
    # `sgpo stage NAME` hands everything after NAME to the stage's own parser, unparsed
    args = parse_cli(build_parser(), ["stage", "sft", "tiny", "--force", "k=v"])
    assert args.name == "sft" and args.rest == ["tiny", "--force", "k=v"]


def test_an_unknown_flag_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(build_parser(), ["run", "tiny", "--bogus", "k=v"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_override_after_a_flag_reaches_the_config(capsys):
    # the override is read (and rejected, so nothing starts): it was not dropped as unrecognized
    assert main(["run", "tiny", "-v", "dpo.beta=not-a-number"]) == 2
    err = capsys.readouterr().err
    assert "dpo.beta" in err and "unrecognized" not in err
