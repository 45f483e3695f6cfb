"""The stages: one module per stage, `tasks/<name>.py`, declaring the Stage `<name>` (sgpo.core.stage),
and the one registry of them, from which every list of stage names derives:

    STAGES             name -> Stage, every module of this package
    PIPELINE_STAGES    what the pipeline flow can run (its forceable names)
    EVALUATION_STAGES  what the evaluation flow can run (its forceable names)
    GPU_STAGES         what the CUDA pool runs (one deployment each)

No stage imports another; what two stages share lives in `sgpo/`. Each module runs alone:
`python -m tasks.<name> [CONFIG] [key=value ...] --<input> URI ...`. The registry is built on first
use, so running one stage imports no other.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from sgpo.core.stage import Stage


@functools.cache
def _registry() -> dict[str, Any]:
    stages: dict[str, Stage] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        st = getattr(importlib.import_module(f"{__name__}.{info.name}"), info.name, None)
        if not isinstance(st, Stage) or st.name != info.name:
            raise TypeError(
                f"tasks/{info.name}.py must declare the stage `{info.name}` (sgpo.core.stage)"
            )
        stages[info.name] = st
    return {
        "STAGES": stages,
        "ALL_STAGES": tuple(stages),
        "PIPELINE_STAGES": tuple(n for n, st in stages.items() if "pipeline" in st.flows),
        "EVALUATION_STAGES": tuple(n for n, st in stages.items() if "evaluation" in st.flows),
        "GPU_STAGES": tuple(n for n, st in stages.items() if st.gpu),
    }


def __getattr__(name: str) -> Any:
    if name in ("STAGES", "ALL_STAGES", "PIPELINE_STAGES", "EVALUATION_STAGES", "GPU_STAGES"):
        return _registry()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_stage(name: str) -> Stage:
    """The declared stage `name`."""
    stages = _registry()["STAGES"]
    if name not in stages:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    return stages[name]
