"""A stage, declared once: its signature and options; the cache key comes from the declaration.

A stage module in `tasks/` holds one plain, typed function and its declaration:

    @stage("sft", section="sft", gpu=True, description="SFT of the base model on D_sft -> pi_sft")
    def sft(job: Job, base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig) -> ArtifactRef:
        ...  # read inputs, do the work, `return job.publish_model(...)`

The signature is the declaration: parameters typed `ArtifactRef` are the input artifacts (`ArtifactRef
| None`: optional), `cfg` is the stage's own config section (its type is the section's model), any
other parameter is a plain value that changes the output (it goes into the key).

**Cache key** = stage + code version + `cache_payload(cfg)` (no runtime-only fields) + the prompt
versions the stage reads + the inputs' content hashes (+ a source fingerprint, e.g. a local data
file's hash). No run id: any run reuses any finished stage. What is derived from the declaration
lives beside it in this package: running it (`sgpo.core.run`), its Prefect task
(`sgpo.core.prefect_tasks`), its CLI (`sgpo.core.cli`); `flows.stages` derives the CUDA-pool flow.

Hooks keep the framework free of training, LLM and evaluation code: `preflight(stage, cfg)` checks
what must hold before any work (e.g. an LLM endpoint is configured), `launcher` says how the stage
runs on several processes (`sgpo.core.ranks.Launcher`).
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from artifacts.hashing import stage_cache_key
from artifacts.refs import ArtifactRef
from sgpo.config import cache_payload, project
from sgpo.core.ranks import Launcher

FLOWS = ("pipeline", "evaluation")


def _no_prompts(cfg: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[..., ArtifactRef]
    config: type[BaseModel]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    # typed `ArtifactRef | None`: left out of the key when absent
    optional_inputs: tuple[str, ...]
    # computed from other inputs alone (their content follows from what the key already holds): never
    # in the key, so whether one was made beforehand does not change what the stage makes
    derived_inputs: tuple[str, ...]
    code_version: str
    # where the config lives in its recipe, e.g. "sft", "model", "data.<role>", "pairwise.<name>"
    section: str
    # the config that holds the section: "pipeline" (PipelineConfig) or "evaluation" (EvaluationConfig)
    recipe: str
    flows: tuple[str, ...]  # the flows that run it (its name is forceable there)
    description: str
    prompts: Callable[[Any], dict[str, str]]
    fingerprint: Callable[[Any], dict[str, str]] | None
    llm: str | None  # the cfg field holding the endpoint of the LLM it calls (annotation, judging)
    preflight: Callable[[Stage, Any], None] | None
    # raises when a finished artifact fails a check the config asks for that is no part of the key
    # (e.g. a judge's max unlabelled share): a stored artifact must pass it too to be reused
    check_reuse: Callable[[ArtifactRef, Any], None] | None
    launcher: Launcher | None
    gpu: bool
    tracked: bool
    retries: int
    retry_delay_s: float

    @property
    def module(self) -> str:
        """The module that declares it: `python -m <module>` runs the stage alone."""
        name = self.fn.__module__
        if name == "__main__":  # this process is `python -m tasks.<name>`: its module's own name
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            name = spec.name if spec is not None else name
        return name

    def key_payload(
        self, cfg: BaseModel, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config part of the key (and of the manifest): the section without runtime-only
        fields, plus the stage's plain-value parameters."""
        payload = cache_payload(cfg)
        if self.params:
            payload = {**payload, "params": {k: (params or {})[k] for k in self.params}}
        return payload

    def cache_key(
        self,
        cfg: BaseModel,
        inputs: Mapping[str, ArtifactRef | None],
        params: Mapping[str, Any] | None = None,
    ) -> str:
        missing = [
            n for n in self.inputs if inputs.get(n) is None and n not in self.optional_inputs
        ]
        if missing:
            raise ValueError(
                f"stage {self.name}: missing input artifact(s) {missing}; it takes {list(self.inputs)}"
            )
        hashes = {
            n: ref.content_hash
            for n in self.inputs
            if (ref := inputs.get(n)) is not None and n not in self.derived_inputs
        }
        if self.fingerprint is not None:
            hashes.update(self.fingerprint(cfg))
        return stage_cache_key(
            self.name,
            code_version=self.code_version,
            config=self.key_payload(cfg, params),
            inputs=hashes,
            prompts=self.prompts(cfg),
        )

    def reused(self, ref: ArtifactRef, cfg: BaseModel) -> ArtifactRef:
        """`ref`, a finished artifact found for this key, once it passes `check_reuse`."""
        if self.check_reuse is not None:
            self.check_reuse(ref, cfg)
        return ref

    def coerce(self, cfg: Any) -> BaseModel:
        """The section as its model (a dict from JSON, e.g. a deployment's parameters, is validated)."""
        if type(cfg) is self.config:
            return cfg
        if isinstance(cfg, BaseModel):
            # a larger section -> the stage's part (e.g. the alpaca_eval section -> the generate
            # stage's fields; the dpo section -> what the reference log-probs depend on)
            return project(cfg, self.config)
        return self.config.model_validate(cfg)


def stage(
    name: str,
    *,
    section: str,
    description: str,
    code_version: str = "1",
    recipe: str = "pipeline",
    flows: tuple[str, ...] | None = None,
    prompts: Callable[[Any], dict[str, str]] = _no_prompts,
    fingerprint: Callable[[Any], dict[str, str]] | None = None,
    llm: str | None = None,
    preflight: Callable[[Stage, Any], None] | None = None,
    check_reuse: Callable[[ArtifactRef, Any], None] | None = None,
    launcher: Launcher | None = None,
    derived_inputs: tuple[str, ...] = (),
    gpu: bool = False,
    tracked: bool = True,
    retries: int = 0,
    retry_delay_s: float = 30.0,
) -> Callable[[Callable[..., ArtifactRef]], Stage]:
    """Declare a stage from its function's signature (see the module docstring). `flows` defaults
    to the flow of its recipe."""

    def declare(fn: Callable[..., ArtifactRef]) -> Stage:
        hints = typing.get_type_hints(fn)
        names = list(inspect.signature(fn).parameters)
        if names[:1] != ["job"] or "cfg" not in names:
            raise TypeError(
                f"stage {name}: the function must take (job, <inputs...>, cfg, <params...>)"
            )
        optional = tuple(n for n in names if hints.get(n) == (ArtifactRef | None))
        inputs = tuple(n for n in names if hints.get(n) is ArtifactRef or n in optional)
        params = tuple(n for n in names[1:] if n != "cfg" and n not in inputs)
        if not_optional := [n for n in derived_inputs if n not in optional]:
            raise TypeError(
                f"stage {name}: derived inputs {not_optional} must be `ArtifactRef | None`"
            )
        runs_in = flows or (recipe,)
        if unknown := [f for f in runs_in if f not in FLOWS]:
            raise TypeError(f"stage {name}: unknown flows {unknown}; flows: {FLOWS}")
        return Stage(
            name=name,
            fn=fn,
            config=hints["cfg"],
            inputs=inputs,
            params=params,
            optional_inputs=optional,
            derived_inputs=tuple(derived_inputs),
            code_version=code_version,
            section=section,
            recipe=recipe,
            flows=tuple(runs_in),
            description=description,
            prompts=prompts,
            fingerprint=fingerprint,
            llm=llm,
            preflight=preflight,
            check_reuse=check_reuse,
            launcher=launcher,
            gpu=gpu,
            tracked=tracked,
            retries=retries,
            retry_delay_s=retry_delay_s,
        )

    return declare
