"""The team setup where checking it takes a process or a Prefect run: the images hold what a fresh
interpreter imports for the deployments' entrypoints, the doc's retry command is one the installed
Prefect knows, local-mode dispatch runs a stage as a real Prefect task. Without either:
tests/unit/deployments/; for real on loopback: tests/e2e/test_cluster.py (slow)."""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys

import pytest

import tests.helpers.cluster as cluster_helpers
import tests.helpers.deployments as deployment_helpers
from tests.helpers.cluster import REPO
from tests.helpers.deployments import (
    POOLS,
    Image,
    distributed,
    read_compose,
    read_images,
    read_prefect_yaml,
    variable_defaults,
)


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return read_prefect_yaml()


@pytest.fixture(scope="module")
def compose() -> dict:
    return read_compose()


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return read_images()


@pytest.fixture
def sft_inputs(tmp_path):
    return deployment_helpers.sft_inputs(tmp_path)


def test_images_hold_the_checkout_their_workers_are_sent_to(images, prefect_yaml, compose):
    """A worker starts each flow run in `{{ $SGPO_REPO_DIR }}` (prefect.yaml's pull step) and imports
    the deployment's entrypoint there; `sgpo deploy` reads deployments/ from it and the presets are
    read from the checkout. In each image that variable is the working directory, the folders those
    need (found by importing the entrypoints and asking the code where it reads) are copied into it,
    and compose and the Kubernetes job (which runs the CUDA image) set the same value."""
    from sgpo.cli import deploy
    from sgpo.config import CONFIG_DIR

    # What a fresh process loads from this checkout to import the entrypoints, as a flow run does.
    entrypoints = [d["entrypoint"] for d in prefect_yaml["deployments"]]
    probe = (
        "import sys; from pathlib import Path; "
        "from prefect.utilities.importtools import import_object\n"
        "for e in sys.argv[2:]: import_object(e)\n"
        "repo, env = Path(sys.argv[1]), Path(sys.prefix).resolve()\n"
        "for m in list(sys.modules.values()):\n"
        "    f = Path(getattr(m, '__file__', None) or '/').resolve()\n"
        "    if f.is_relative_to(repo) and not f.is_relative_to(env):  # a venv inside the checkout\n"
        "        print(f.relative_to(repo).parts[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO), *entrypoints],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    loaded = set(out.split())
    assert {e.partition(".")[0] for e in entrypoints} <= loaded, f"not imported from {REPO}: {out}"
    needed = loaded | {
        CONFIG_DIR.resolve().relative_to(REPO).parts[0],
        deploy.pools_dir().relative_to(deploy.repo_dir()).parts[0],
    }
    for name, image in images.items():
        repo_dir = image.env["SGPO_REPO_DIR"]
        # the editable install and the COPY destinations resolve against the working directory
        assert image.workdir == repo_dir, name
        missing = {n for n in needed if posixpath.join(repo_dir, n) not in image.paths}
        assert not missing, f"Dockerfile.{name} does not copy {sorted(missing)} into {repo_dir}"
    (repo_dir,) = {image.env["SGPO_REPO_DIR"] for image in images.values()}
    for service in ("worker-cpu", "worker-cuda", "deploy"):
        assert compose["services"][service]["environment"]["SGPO_REPO_DIR"] == repo_dir, service
    kubernetes = json.loads((POOLS / "cuda-kubernetes.json").read_text())
    assert variable_defaults(kubernetes)["env"]["SGPO_REPO_DIR"] == repo_dir


def test_cluster_doc_retry_command_is_a_prefect_command():
    """Section 7's CLI retry, which tests/e2e/test_cluster.py runs on a failed run, is a command of the
    installed Prefect: its `--help` exits 0 (an unknown command exits 2)."""
    prefect, *args = cluster_helpers.doc_retry_command()
    r = subprocess.run(
        [cluster_helpers.venv_bin(prefect), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dispatch_local_mode_runs_the_task_in_process(sft_inputs, monkeypatch, tmp_path):
    """Local mode runs a GPU stage as a task of this process; in distributed mode a CPU stage still
    does: both for real (Prefect task, store), with no server and nothing dispatched."""
    import pyarrow as pa

    import flows.dispatch as d
    from sgpo.config import DatasetSpec, ExecutionConfig
    from tasks import get_stage

    monkeypatch.setattr("flows.dispatch.run_child", lambda **k: pytest.fail("dispatched a stage"))
    monkeypatch.setattr(d, "_check_deployment", lambda *a: pytest.fail("looked for a deployment"))
    # the GPU stage sft, local mode: its task finds the artifact another run published under its key
    done = sft_inputs.store.publish_table(
        "sft", sft_inputs.key, pa.table({"x": [3]}), manifest={}, produced_by="earlier-run"
    )
    ref, cached, _ = d.dispatch_stage(
        "sft",
        sft_inputs.st,
        sft_inputs.cfg,
        sft_inputs.inputs,
        None,
        sft_inputs.ctx,
        ExecutionConfig(),
    )
    assert ref == done and cached is True
    # the CPU stage prepare, distributed mode: it runs here (a real run: no artifact yet) and publishes
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(3))
    )
    prepare = get_stage("prepare")
    spec = DatasetSpec(path=str(rows))
    assert sft_inputs.store.find("prepare", prepare.cache_key(spec, {})) is None
    ref, cached, _ = d.dispatch_stage(
        "prepare[po]", prepare, spec, {}, None, sft_inputs.ctx, distributed()
    )
    assert (
        ref.stage == "prepare"
        and ref.rows == 3
        and ref.produced_by == "parent-run"
        and cached is False
    )
    assert sft_inputs.store.find("prepare", prepare.cache_key(spec, {})) == ref
    assert sft_inputs.store.read_table(ref).column("prompt").to_pylist() == ["q0", "q1", "q2"]
