"""The UI form runs recipes (issue 23, item 2): on a real Prefect server, a run of the pipeline's
deployment submitted through the API with the form's values and `method: spin` runs SPIN's DAG
(before the fix it ran SGPO: only the CLI applied a recipe); `--params` without the deployment's
`source` gets the same recipe; an unknown recipe is refused at once with the list of recipes.

The deployment is served by `prefect.serve` in a subprocess (the runner polls the server and runs each
flow run in a child process), so parameters travel as JSON through the server as from the UI.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from sgpo.config import load_config, method_names
from tests.helpers.cluster import REPO, SERVER, Procs, fill, http_ok, wait_for
from tests.helpers.net import free_port

pytestmark = pytest.mark.slow

# entrypoint by module path, as deployments/prefect.yaml names it (`flows.pipeline:sgpo_pipeline`)
SERVE = """
import json, sys
from prefect import serve
from prefect.deployments.runner import EntrypointType
from flows.pipeline import sgpo_pipeline
if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    serve(sgpo_pipeline.to_deployment(
        name="form", parameters={"config": config}, entrypoint_type=EntrypointType.MODULE_PATH
    ))
"""
FAST = ["data.po.max_rows=4", "data.eval.max_rows=4", "sft.max_steps=1", "spin.max_steps=1"]
SPIN_DAG = {
    "base_model",
    "prepare[sft]",
    "sft",
    "prepare[po]",
    "pairs",
    "ref_logps",
    "dpo",
    "prepare[eval]",
    "judge",
}


def test_the_form_and_params_run_the_recipe_they_name(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    # what `sgpo deploy` stores as the deployment's config, and the UI form shows
    shown = load_config(
        "tiny", [f"store.url={tmp_path / 'store'}", "tracking.enabled=false", *FAST]
    ).model_dump(mode="json", exclude_defaults=True)
    procs = Procs(tmp_path)
    try:
        procs.start(
            "server",
            fill(SERVER, "127.0.0.1", str(port)),
            {**env, "PREFECT_HOME": str(tmp_path / "server-home")},
        )
        wait_for(lambda: http_ok(f"{api}/health"), 180, "the Prefect server")
        client_env = {**env, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO)}
        client_env["PREFECT_HOME"] = str(tmp_path / "client-home")
        serve = tmp_path / "serve.py"
        serve.write_text(SERVE)
        procs.start("serve", [sys.executable, str(serve), json.dumps(shown)], client_env, REPO)

        with (
            temporary_settings(updates={PREFECT_API_URL: api}),
            get_client(sync_client=True) as client,
        ):
            dep = wait_for(
                lambda: client.read_deployment_by_name("sgpo/form"), 120, "the deployment"
            )

            def run(config: dict) -> tuple[object, set[str]]:
                fr = client.create_flow_run_from_deployment(dep.id, parameters={"config": config})
                done = wait_for(
                    lambda: (r := client.read_flow_run(fr.id)).state.is_final() and r,
                    900,
                    "the flow run",
                    interval=2,
                )
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id]))
                )
                return done, {t.name for t in tasks}

            # the form: the shown config, with the recipe changed
            form, dag = run({**shown, "method": "spin"})
            assert form.state.is_completed(), (form.state.message, procs.log("serve")[-3000:])
            assert SPIN_DAG <= dag and not {"sample", "annotate", "improver_sft"} & dag, dag

            # --params: a config given without the deployment's source (the recipe goes under it)
            # (only what SPIN reads: data.prefs given here would fail the run, as ignored)
            given = {k: shown[k] for k in ("store", "tracking", "sft")}
            given["data"] = {r: shown["data"][r] for r in ("sft", "improver", "po", "eval")}
            params, dag = run({**given, "method": "spin", "spin": {"max_steps": 1}})
            assert params.state.is_completed(), params.state.message
            assert SPIN_DAG <= dag and "annotate" not in dag, dag

            # an unknown recipe: refused when the run is created, or failed before any stage
            try:
                bad, dag = run({**shown, "method": "spinn"})
            except Exception as e:  # the server validates the parameters against the schema
                text = str(e)
            else:
                assert bad.state.is_failed() and dag == set(), dag
                text = bad.state.message or ""
            assert all(f"'{m}'" in text for m in method_names()), text
    finally:
        procs.stop_all()
