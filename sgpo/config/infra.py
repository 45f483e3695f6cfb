"""Where things run and are kept: LLM endpoints, the store, tracking, the embedded stand-in LLM,
where stages execute and how training stages are launched. Runtime settings, almost all of them:
they change how a run goes, not what it makes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from sgpo.config.sections import Checked, Section, form_layout, runtime_field

# CPU threads of every process a run starts (sgpo.core.threads): 'auto' or a whole number >= 1
Threads = Literal["auto"] | Annotated[int, Field(ge=1)]


def threads_field() -> Any:
    return runtime_field(
        "auto",
        "CPU threads (torch / OpenMP) of every process the run starts: 'auto' = OMP_NUM_THREADS if set, else the "
        "cores this process may use; N = N threads. Launched CPU ranks share them; with more than one, waiting "
        "threads sleep (OMP_WAIT_POLICY=PASSIVE) instead of spinning on a shared core",
    )


class EndpointConfig(Checked):
    """An OpenAI-compatible endpoint and how hard to try it. The API key itself is never stored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=form_layout)

    base_url: str | None = runtime_field(
        None, "OpenAI-compatible base URL; None = the pipeline starts the embedded server"
    )
    model: str = Field("gpt-4-turbo", description="Model id sent with every request")
    api_key_env: str = runtime_field(
        "OPENAI_API_KEY",
        "NAME of the env var holding the key; unset is allowed only for a loopback base_url",
    )
    timeout_s: float = runtime_field(60.0, "Per-attempt HTTP timeout", gt=0)
    max_concurrency: int = runtime_field(8, "Requests in flight at once", ge=1)
    max_retries: int = runtime_field(
        6, "Retries per request for transport errors, 429 and 5xx", ge=0
    )
    max_invalid_retries: int = Field(
        2,
        ge=0,
        description="Re-asks for empty/truncated/refused/unparseable answers before keeping it as invalid",
    )
    backoff_base_s: float = runtime_field(
        1.0, "First retry delay; doubles each retry, with jitter", ge=0
    )
    backoff_max_s: float = runtime_field(60.0, "Cap on one retry delay", ge=0)
    price_per_1m_prompt_tokens: float | None = runtime_field(
        None, "USD per 1M prompt tokens, for cost reports", ge=0
    )
    price_per_1m_completion_tokens: float | None = runtime_field(
        None, "USD per 1M completion tokens", ge=0
    )
    mode: Literal["sync", "batch"] = runtime_field(
        "sync",
        "sync: one HTTP request per call; batch: OpenAI's Batch API (half price, answers within 24 h)",
    )
    batch_poll_s: float = runtime_field(
        10.0, "Batch mode: first wait between status checks; doubles while nothing ends", gt=0
    )
    batch_poll_max_s: float = runtime_field(
        300.0, "Batch mode: longest wait between status checks", gt=0
    )
    batch_max_requests: int = runtime_field(
        50_000, "Batch mode: requests per batch (OpenAI's limit: 50,000)", ge=1
    )
    batch_discount: float = runtime_field(
        0.5, "Batch mode: price factor of batch tokens (OpenAI: half price)", gt=0, le=1
    )


class LaunchConfig(Section):
    """Hardware of a training stage (how it is launched), never its hyper-parameters: runtime only.

    One process and no accelerate config: the stage trains in its own process. Otherwise it runs under
    `accelerate launch --config_file ACCELERATE_CONFIG --num_processes N -m tasks.STAGE` (sgpo.core.launch)."""

    accelerate_config: str | None = Field(
        None,
        description="accelerate config: a file, or a name in configs/accelerate (ddp, fsdp, zero3, ...)",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Processes (one per GPU); None: the visible GPUs when an accelerate config is named, else 1",
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Rendezvous port (None: a free one)"
    )


class StoreConfig(Section):
    url: str = runtime_field(
        "./.sgpo/store", "Artifact store: a folder, file://, or s3://bucket/prefix"
    )
    storage_options: dict[str, Any] = runtime_field(
        default_factory=dict,
        description="fsspec options without secrets, e.g. {client_kwargs: {endpoint_url: ...}}; "
        "credentials come from the environment (AWS_ACCESS_KEY_ID, ...)",
    )
    on_busy: Literal["wait", "fail"] = runtime_field(
        "wait",
        "Another run is computing the same stage and key: wait for it and reuse its artifact, or fail at once",
    )
    lease_timeout_s: float = runtime_field(
        300.0,
        "A stage lease whose heartbeat is older than this is stale (its holder died) and is taken over",
        gt=0,
    )
    lease_poll_s: float = runtime_field(
        2.0, "How often a waiting run checks a busy stage's lease", gt=0
    )


class TrackingConfig(Section):
    mlflow_uri: str = runtime_field(
        "sqlite:///./.sgpo/mlflow.db", "MLflow tracking URI (an http:// server in a team)"
    )
    experiment: str = runtime_field("sgpo", "MLflow experiment name")
    enabled: bool = runtime_field(True, "Log to MLflow")
    ui_url: str | None = runtime_field(
        None,
        "The MLflow server as people's browsers reach it, for the links in a run's summary (the run, "
        "its report): e.g. http://localhost:5000 where the workers use http://mlflow:5000. Default: "
        "mlflow_uri",
    )


class EmbeddedLLMConfig(Section):
    """The stand-in for the external LLM when an endpoint has no base_url."""

    model: str = runtime_field("base", "'base' = the pipeline's base model, or a local model dir")
    max_new_tokens_cap: int = runtime_field(
        256, "Cap on generated tokens (tiny models ramble)", ge=1
    )
    timeout_s: float = runtime_field(
        600.0,
        "Per-attempt timeout of a request to the stand-in, at least (a stage's shorter endpoint.timeout_s is "
        "raised to it): the stand-in generates one answer at a time and the client sends one at a time, so "
        "this bounds one generation on a CPU",
        gt=0,
    )
    judge: Literal["model", "rule", "testbed"] = runtime_field(
        "model",
        "Judge prompts answered by the model, or by sgpo.llm.rule_judge's documented quality rule (the tiny "
        "preset: a tiny model cannot judge), or by the testbed's verifier (sgpo.llm.oracle); the judge's model name, "
        "in its cache key, says which",
    )
    annotator: Literal["model", "oracle"] = runtime_field(
        "model",
        "Annotation prompts answered by the model, or by the testbed's oracle (sgpo.llm.oracle: y_imp a "
        "minimal fix of B no better than A, y_ext the correct answer); the annotator's model name says which",
    )


class ExecutionConfig(Section):
    mode: Literal["local", "distributed"] = runtime_field(
        "local", "local: every stage in this process; distributed: GPU stages via run_deployment"
    )
    cuda_work_pool: str = runtime_field("cuda", "Work pool for GPU stages in distributed mode")
    deployment_prefix: str = runtime_field(
        "sgpo-stage", "GPU-stage deployments are named STAGE/PREFIX-STAGE (e.g. dpo/sgpo-stage-dpo)"
    )
