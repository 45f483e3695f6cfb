"""The team setup's files as the deployment tests read them: prefect.yaml, the work-pool templates'
defaults, compose.yaml and the Dockerfiles; and the inputs of a GPU stage for the dispatch tests.
Shared by tests/unit/deployments/ (no process, no server) and tests/integration/deployments/."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace

import yaml

from tests.helpers.cluster import REPO

DEPLOYMENTS = REPO / "deployments"
POOLS = DEPLOYMENTS / "pools"
DOCKER = REPO / "docker"


def read_prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())


def read_compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def variable_defaults(template: dict) -> dict:
    """Variable defaults, as a worker fills them in (unset ones drop out of the job configuration)."""
    return {
        k: v["default"]
        for k, v in template["variables"]["properties"].items()
        if v.get("default") is not None
    }


@dataclass
class Image:
    """What a Dockerfile decides about its containers: the environment (ENV, the last value of each
    key), the working directory, the paths its COPY instructions create, and the default command."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    paths: set[str] = field(default_factory=set)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def parse_dockerfile(path) -> Image:
    """ENV, WORKDIR, COPY, ENTRYPOINT and CMD of a Dockerfile (comments dropped, continuation lines
    joined); ENTRYPOINT and CMD must be in exec (JSON) form, the form in which tini gets the signals."""
    image = Image()
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "ENV":
            image.env.update(word.split("=", 1) for word in shlex.split(rest))
        elif keyword == "WORKDIR":
            image.workdir = posixpath.join(image.workdir, rest.strip())
        elif keyword == "COPY":
            *sources, dest = [w for w in shlex.split(rest) if not w.startswith("--")]
            into = posixpath.normpath(posixpath.join(image.workdir, dest))
            if len(sources) > 1 or dest.endswith("/") or dest == ".":  # into a directory
                image.paths.update(posixpath.join(into, src.rstrip("*")) for src in sources)
            else:  # COPY sgpo sgpo: the copy is named by the destination
                image.paths.add(into)
        elif keyword in ("ENTRYPOINT", "CMD"):
            setattr(image, keyword.lower(), json.loads(rest))
    return image


def read_images() -> dict[str, Image]:
    return {name: parse_dockerfile(DOCKER / f"Dockerfile.{name}") for name in ("cpu", "cuda")}


def sft_inputs(tmp_path) -> SimpleNamespace:
    """The GPU stage sft with its two inputs published in a store under tmp_path, its config and key,
    and the context of a parent run."""
    import pyarrow as pa

    from artifacts.store import ArtifactStore
    from sgpo.config import SFTStageConfig, StoreConfig
    from sgpo.core import StageContext
    from tasks import get_stage

    store = ArtifactStore(str(tmp_path / "store"))
    base = store.publish_table("base_model", "b" * 64, pa.table({"x": [1]}), manifest={})
    data = store.publish_table("prepare", "d" * 64, pa.table({"x": [2]}), manifest={})
    ctx = StageContext(store=StoreConfig(url=str(tmp_path / "store")), run_id="parent-run")
    st = get_stage("sft")
    inputs = {"base": base, "data": data}
    cfg = SFTStageConfig()
    return SimpleNamespace(
        store=store, st=st, inputs=inputs, cfg=cfg, key=st.cache_key(cfg, inputs), ctx=ctx
    )


def distributed():
    from sgpo.config import ExecutionConfig

    return ExecutionConfig(mode="distributed")
