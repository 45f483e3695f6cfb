"""Which flow-run names Prefect made up (renamed after the recipe) and which a person typed (kept):
checked against Prefect's own generators, the server's (coolname) and the UI form's (its bundle)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from flows.run_names import UI_GREEK, UI_SUFFIXES, UI_WORDS, is_generated_name

TYPED = [
    "beta-sweep",
    "dpo-beta-0.2",
    "nightly-run",
    "alpha-test",
    "beta2-sweep",
    "sgpo-tiny-1a2b3c4d",
    "spin",
    "baseline run",
    "Qwen 7B, beta=0.05",
]


def _ui_generator() -> tuple[list[str], list[str], list[str]]:
    """The lists the UI's Custom-run form draws its "Run Name" from, read from Prefect's bundled UI."""
    import prefect

    assets = Path(prefect.__file__).parent / "server" / "ui" / "assets"
    call = re.compile(
        r"=>\[\w+\((\w+)\)\.replace\(`RANDOM`,\w+\(\)\.toString\(\)\),\w+\((\w+)\),"
        r"\w+\([.\d]+\)\?\w+\((\w+)\):``\]\.join\(`-`\)"
    )
    for js in sorted(assets.glob("index-*.js")):
        src = js.read_text(errors="replace")
        if m := call.search(src):
            greek, middle, suffix = (
                re.search(rf"\b{name}=`([^`]*)`", src).group(1).split(".") for name in m.groups()
            )
            return greek, middle, suffix
    raise AssertionError(
        f"the UI's run-name generator was not found in {assets}: Prefect changed how its form names "
        "runs; update flows/run_names.py"
    )


def test_the_ui_word_lists_are_the_installed_uis():
    greek, middle, suffix = _ui_generator()
    assert {re.sub(r"(\d+|RANDOM)$", "", g) for g in greek} == UI_GREEK
    assert {w for w in middle if w} == UI_WORDS
    assert set(suffix) == UI_SUFFIXES


def test_names_the_ui_form_makes_up_are_recognised():
    greek, middle, suffix = _ui_generator()
    rnd = random.Random(0)
    for _ in range(2000):  # as the form does: GREEK[n]-WORD, and a suffix 60% of the time
        name = "-".join(
            [
                rnd.choice(greek).replace("RANDOM", str(rnd.randint(10, 1000))),
                rnd.choice(middle),
                rnd.choice(suffix) if rnd.random() < 0.6 else "",
            ]
        ).rstrip("-")
        assert is_generated_name(name), name


def test_names_prefect_makes_up_are_recognised():
    from prefect.utilities.names import generate_slug

    for _ in range(2000):
        name = generate_slug(2)
        assert is_generated_name(name), name
    assert is_generated_name(None) and is_generated_name("")


@pytest.mark.parametrize("name", TYPED)
def test_typed_names_are_kept(name):
    assert not is_generated_name(name)
