"""What a user of the Prefect UI sees of a flow run, checked on real (ephemeral API) flow runs:
a misspelt `force` refused with the CLI's sentence, and runs named recipe + short config hash."""
from __future__ import annotations

import pytest

from flows.pipeline import FORCEABLE, check_force
from sgpo import cli


def _expected(known: tuple[str, ...]) -> str:
    with pytest.raises(ValueError) as e:
        check_force(["dop"], known)
    return str(e.value)


def _flow_run(state):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def test_force_typo_same_sentence_from_cli_and_flows(tmp_path, monkeypatch, capsys):
    from flows.evaluate import evaluate
    from flows.pipeline import sgpo_pipeline
    from flows.reporting import run_name
    from sgpo.config import load_config
    from sgpo.eval_config import load_evaluation_config
    from tasks import EVALUATION_STAGES

    monkeypatch.chdir(tmp_path)
    msg = _expected(FORCEABLE)
    assert "'dop'" in msg and "dpo" in msg
    assert cli.main(["run", "tiny", "--force", "dop"]) == 2
    assert capsys.readouterr().err.strip() == f"sgpo: {msg}"  # the CLI prints the flow's sentence, nothing more

    cfg = load_config("tiny", [f"store.url=file://{tmp_path}/store"])
    state = sgpo_pipeline(config=cfg, force=["dop"], return_state=True)  # as the UI's Custom-run form sends it
    assert state.is_failed()
    with pytest.raises(ValueError) as e:
        state.result()
    assert str(e.value) == msg
    run = _flow_run(state)
    assert run.name == run_name(cfg) and run.name.startswith("sgpo-tiny-") and len(run.name.split("-")[-1]) == 8

    emsg = _expected(EVALUATION_STAGES + ("report",))
    assert cli.main(["evaluate", "--force", "dop"]) == 2
    assert capsys.readouterr().err.strip() == f"sgpo: {emsg}"
    ecfg = load_evaluation_config(None, [f"store.url=file://{tmp_path}/store"])
    state = evaluate(config=ecfg, force=["dop"], return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError) as e:
        state.result()
    assert str(e.value) == emsg
    assert _flow_run(state).name == run_name(ecfg)


def test_flow_run_name_without_config_parameter_is_the_default_recipe():
    from flows.pipeline import sgpo_pipeline
    from flows.reporting import run_name
    from sgpo.config import load_config

    state = sgpo_pipeline(force=["nope"], return_state=True)  # fails at once, after the run is named
    assert _flow_run(state).name == run_name(load_config("tiny"))


def test_flow_run_name_differs_with_the_config():
    from flows.reporting import run_name
    from sgpo.config import load_config

    a, b = load_config("tiny"), load_config("tiny", ["dpo.beta=0.2"])
    assert run_name(a) != run_name(b) and run_name(a) == run_name(load_config("tiny"))
