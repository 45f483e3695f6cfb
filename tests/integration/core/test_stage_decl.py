"""A stage's cache key does not depend on the order of its inputs, and a fresh interpreter (another
hash seed, a bare environment) computes the same key. The declarations themselves:
tests/unit/core/test_stage_decl.py."""

from __future__ import annotations

from pathlib import Path

from artifacts.refs import ArtifactRef
from sgpo.config import load_config
from tasks import get_stage

REPO = Path(__file__).resolve().parents[3]


def _ref(name: str, h: str) -> ArtifactRef:
    return ArtifactRef(
        uri=f"file:///x/{name}", kind="table", stage=name, cache_key="k", content_hash=h
    )


def test_cache_key_is_independent_of_the_input_order_and_fixed_across_processes():
    import subprocess
    import sys

    st = get_stage("sft")
    cfg = load_config("tiny").sft
    a, d = _ref("base", "h1"), _ref("data", "h2")
    key = st.cache_key(cfg, {"base": a, "data": d})
    assert key == st.cache_key(cfg, {"data": d, "base": a})
    code = (
        "from artifacts.refs import ArtifactRef as R; from sgpo.config import load_config; from tasks import get_stage;"
        "r=lambda n,h: R(uri=f'file:///x/{n}', kind='table', stage=n, cache_key='k', content_hash=h);"
        "print(get_stage('sft').cache_key(load_config('tiny').sft, {'base': r('base','h1'), 'data': r('data','h2')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == key
