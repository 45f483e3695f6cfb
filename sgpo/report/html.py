"""One self-contained HTML report of a run: the figures (sgpo.report.figures), the headline numbers and
the stage table with lineage (artifact URIs, content hashes, code and prompt versions).

    sgpo report RUN_OR_STORE_URI [-o report.html]
    sgpo report RUN_URI RUN_URI ... [-o report.html]     (several runs: comparison table, Fig. 10)

RUN_OR_STORE_URI is a `report` artifact (its HTML is copied out), any other finished artifact
(e.g. a run's judge or final dpo: the report is built from its lineage, walking the manifests'
parents), or a store (its newest report artifact; without one, the newest judge artifact's
lineage). Images are PNG data URIs and the CSS is inline: the file opens without a network.
The `report` stage (tasks/report.py) builds the same page at the end of every pipeline and
evaluation run, from the run's own stage list (so it also knows which stages ran or were cached).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from artifacts.hashing import HASH_PREFIX_LEN
from sgpo.report.figures import Figure, RunArtifacts, StageEntry, make_figures, win_rate_rows

REPORT_FILE = "report.html"


# --------------------------------------------------------------------------------------------------
# Collecting a run's stages
# --------------------------------------------------------------------------------------------------
def store_of(uri: str, storage_options: dict[str, Any] | None):
    from artifacts.store import ArtifactStore, normalize_url

    url = normalize_url(uri).rstrip("/")
    return ArtifactStore(url.rsplit("/", 2)[0], storage_options), url


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    store, url = store_of(uri, storage_options)
    return json.loads(store.read_bytes(f"{url}/manifest.json"))


def table_reader(storage_options: dict[str, Any] | None = None):
    """`read_rows(entry)` for RunArtifacts: the table artifact's rows, its content hash checked."""
    from artifacts.refs import ArtifactRef

    def read_rows(entry: StageEntry) -> list[dict[str, Any]]:
        store, _ = store_of(entry.uri, storage_options)
        ref = (
            ArtifactRef.model_validate(entry.manifest["ref"]) if entry.manifest.get("ref") else None
        )
        if ref is None:
            from artifacts.store import read_ref

            ref = read_ref(entry.uri, storage_options)
        return store.read_table(ref).to_pylist()

    return read_rows


def side_rows_reader(storage_options: dict[str, Any] | None = None):
    """`read_side_rows(entry, name)` for RunArtifacts: the rows of a Parquet file beside the artifact."""

    def read_side_rows(entry: StageEntry, name: str) -> list[dict[str, Any]]:
        import io

        import pyarrow.parquet as pq

        store, url = store_of(entry.uri, storage_options)
        return pq.read_table(io.BytesIO(store.read_bytes(f"{url}/{name}"))).to_pylist()

    return read_side_rows


def has_manifest(uri: str, summary: dict[str, Any] | None = None) -> bool:
    """Whether `uri` can name an artifact with a manifest: not a hub model (hf://ID: nothing to
    read, and asking the hub fails offline), not a local model folder referenced outside the store
    (its summary names `local_dir`), not a bare name."""
    if uri.startswith("hf://") or (summary or {}).get("local_dir"):
        return False
    return "://" in uri or uri.startswith("/")


def entries_from_stages(
    stages: Iterable[dict[str, Any]], storage_options: dict[str, Any] | None = None
) -> list[StageEntry]:
    """StageEntry per {label, status, seconds, uri, content_hash[, summary]} (a flow's stage list)."""
    out = []
    for s in stages:
        try:
            manifest = (
                read_manifest(s["uri"], storage_options)
                if has_manifest(s["uri"], s.get("summary"))
                else {}
            )
        except (OSError, ValueError):
            manifest = {}
        ref = manifest.get("ref") or {}
        out.append(
            StageEntry(
                label=s["label"],
                stage=ref.get("stage") or s["label"].split("[")[0],
                uri=s["uri"],
                content_hash=s.get("content_hash") or ref.get("content_hash", ""),
                status=s.get("status", ""),
                seconds=s.get("seconds"),
                summary=s.get("summary") or ref.get("summary") or {},
                manifest=manifest,
            )
        )
    return out


def in_a_store(uri: str, stage: str | None) -> bool:
    """Whether `uri` is laid out as a store artifact, `{store}/{stage}/{key[:16]}` (where the store
    is now or was when the manifest was written), rather than a model referenced outside a store:
    hf://ID, or the real location of a local checkpoint folder."""
    if uri.startswith("hf://"):
        return False
    parts = uri.rstrip("/").split("/")
    key = parts[-1]
    return (
        len(parts) >= 3
        and parts[-2] == stage
        and len(key) == HASH_PREFIX_LEN
        and all(c in "0123456789abcdef" for c in key)
    )


def entries_from_lineage(
    uri: str, storage_options: dict[str, Any] | None = None
) -> list[StageEntry]:
    """The artifact and everything upstream of it (manifest parents), parents first."""
    seen: dict[str, StageEntry] = {}
    order: list[StageEntry] = []

    def visit(u: str) -> None:
        if u in seen:
            return
        manifest = read_manifest(u, storage_options)
        ref = manifest.get("ref") or {}
        entry = StageEntry(
            label=ref.get("stage", "?"),
            stage=ref.get("stage", "?"),
            uri=u,
            content_hash=ref.get("content_hash", ""),
            summary=ref.get("summary") or {},
            manifest=manifest,
        )
        seen[u] = entry
        for parent in (manifest.get("parents") or {}).values():
            p = parent.get("uri") or ""
            if "://" not in p:
                continue
            if not in_a_store(p, parent.get("stage")):
                outside(parent)  # a hub model or a local model folder: no manifest to read
            else:
                try:
                    visit(p)
                except (OSError, ValueError):
                    pass  # an artifact gone from the store: listed by its consumer only
        order.append(entry)

    def outside(parent: dict[str, Any]) -> None:
        """A model referenced outside the store, as its consumer's manifest records it."""
        if parent["uri"] in seen:
            return
        entry = StageEntry(
            label=parent.get("stage") or "?",
            stage=parent.get("stage") or "?",
            uri=parent["uri"],
            content_hash=parent.get("content_hash", ""),
        )
        seen[parent["uri"]] = entry
        order.append(entry)

    from artifacts.store import normalize_url

    visit(normalize_url(uri).rstrip("/"))
    counts: dict[str, int] = {}
    for e in order:
        counts[e.stage] = counts.get(e.stage, 0) + 1
    index: dict[str, int] = {}
    for e in order:  # prepare x4, pairs/dpo per round: a label each
        if counts[e.stage] > 1:
            index[e.stage] = index.get(e.stage, 0) + 1
            e.label = (
                f"{e.stage}[{index[e.stage]}]"
                if e.stage != "prepare"
                else f"prepare[{e.content_hash[:8]}]"
            )
    return order


def newest(store_url: str, stage: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """URI of the newest finished `stage` artifact in a store (by the manifest's created_at)."""
    from artifacts.store import ArtifactStore

    store = ArtifactStore(store_url, storage_options)
    best: tuple[str, str] | None = None
    for path in store.fs.glob(f"{store.root.rstrip('/')}/{stage}/*/manifest.json"):
        try:
            with store.fs.open(path, "rb") as f:
                m = json.loads(f.read())
        except (OSError, ValueError):
            continue
        uri = m.get("ref", {}).get("uri")
        if uri and (best is None or m.get("created_at", "") > best[0]):
            best = (m.get("created_at", ""), uri)
    return best[1] if best else None


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------
def lineage_rows(entries: list[StageEntry]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        m = e.manifest or {}
        rows.append(
            {
                "label": e.label,
                "status": e.status or "",
                "seconds": "" if e.seconds is None else f"{e.seconds:.1f}",
                "compute_seconds": "" if m.get("seconds") is None else f"{float(m['seconds']):.1f}",
                "uri": e.uri,
                "content_hash": e.content_hash[:16],
                "code_version": str(m.get("code_version", "")),
                "prompts": ", ".join(
                    f"{k}={v}" for k, v in sorted((m.get("prompts") or {}).items())
                ),
                "parents": ", ".join(
                    f"{k}: {v.get('stage', '?')} {str(v.get('content_hash', ''))[:8]}"
                    for k, v in sorted((m.get("parents") or {}).items())
                ),
                "produced_by": str(e.manifest.get("ref", {}).get("produced_by") or ""),
                "created_at": str(m.get("created_at", "")),
            }
        )
    return rows


def headline_rows(run: RunArtifacts) -> list[dict[str, str]]:
    out = []
    for r in win_rate_rows(run):
        if r.get("ci") and None not in r["ci"]:
            err = f"95% CI {r['ci'][0]:.1f} to {r['ci'][1]:.1f}"
        else:
            err = f"SE {r['se']:.1f}" if r["se"] is not None else "SE n/a"
        out.append(
            {
                "what": r["label"],
                "value": f"{r['value']:.1f}",
                "error": err,
                "n": f"{r['n']} of {r['of']}" if r.get("of") not in (None, r["n"]) else str(r["n"]),
                "stage": r["stage"],
            }
        )
    return out


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.uri { font-family: monospace; font-size: 12px; word-break: break-all; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.missing { color: #a00; } .meta { color: #555; } section.run { border-top: 2px solid #ccc; margin-top: 2em; }
</style></head>
<body>
{% macro run_body(r, p, h) %}
<p class="meta">{% for k, v in r.meta.items() %}<b>{{ k }}</b>: {{ v }}{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>
{% if r.headline %}
<{{ h }}>Judged numbers</{{ h }}>
<table id="{{ p }}headline"><thead><tr><th>what</th><th>win rate / score (%)</th><th>uncertainty</th><th>n judged</th><th>stage</th></tr></thead>
<tbody>{% for x in r.headline %}<tr><td>{{ x.what }}</td><td>{{ x.value }}</td><td>{{ x.error }}</td><td>{{ x.n }}</td><td>{{ x.stage }}</td></tr>{% endfor %}</tbody></table>
{% endif %}
<{{ h }}>Figures</{{ h }}>
{% for f in r.figures if f.png %}
<figure id="{{ p }}fig-{{ f.id }}"><img alt="{{ f.title }}" src="data:image/png;base64,{{ f.b64 }}">
<figcaption>{{ f.title }} &mdash; from {{ f.source }}{% if f.source_uri %} (<code>{{ f.source_uri }}</code>){% endif %}</figcaption></figure>
{% endfor %}
{% if r.missing %}
<h3>Figures that could not be made</h3>
<ul id="{{ p }}missing">{% for f in r.missing %}<li class="missing"><b>{{ f.title }}</b> ({{ f.source }}): {{ f.missing }}</li>{% endfor %}</ul>
{% endif %}
<{{ h }}>Stages and lineage</{{ h }}>
<table id="{{ p }}stages"><thead><tr><th>stage</th><th>this run</th><th>s (this run)</th><th>s (when made)</th><th>artifact</th>
<th>content hash</th><th>code</th><th>prompts</th><th>inputs</th><th>produced by</th><th>created</th></tr></thead>
<tbody>{% for x in r.stages %}<tr><td>{{ x.label }}</td><td>{{ x.status }}</td><td>{{ x.seconds }}</td><td>{{ x.compute_seconds }}</td>
<td class="uri">{{ x.uri }}</td><td class="uri">{{ x.content_hash }}</td><td>{{ x.code_version }}</td><td>{{ x.prompts }}</td>
<td>{{ x.parents }}</td><td class="uri">{{ x.produced_by }}</td><td>{{ x.created_at }}</td></tr>{% endfor %}</tbody></table>
{% endmacro %}
<h1>{{ title }}</h1>
{% if comparison %}
<h2>Comparison of the runs</h2>
<table id="comparison"><thead><tr>{% for c in comparison_columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in comparison %}<tr>{% for c in comparison_columns %}<td>{{ row[c] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% for f in across if f.png %}
<figure id="fig-{{ f.id }}"><img alt="{{ f.title }}" src="data:image/png;base64,{{ f.b64 }}"><figcaption>{{ f.title }}</figcaption></figure>
{% endfor %}
{% for f in across if not f.png %}<p class="missing"><b>{{ f.title }}</b>: {{ f.missing }}</p>{% endfor %}
{% for r in runs %}<section class="run" id="run{{ loop.index }}"><h2>Run {{ loop.index }}: {{ r.title }}</h2>
{{ run_body(r, "run" ~ loop.index ~ "-", "h3") }}</section>{% endfor %}
{% else %}
{{ run_body(runs[0], "", "h2") }}
{% endif %}
</body></html>
"""


def _figs(figures: list[Figure]) -> list[dict[str, Any]]:
    return [
        {
            "id": f.id,
            "title": f.title,
            "source": f.source,
            "source_uri": f.source_uri,
            "missing": f.missing,
            "png": f.png,
            "b64": base64.b64encode(f.png).decode() if f.png else "",
        }
        for f in figures
    ]


def _run_view(
    run: RunArtifacts, figures: list[Figure], meta: dict[str, str] | None
) -> dict[str, Any]:
    figs = _figs(figures)
    return {
        "title": run.title or "sgpo run",
        "meta": meta or {},
        "headline": headline_rows(run),
        "figures": figs,
        "missing": [f for f in figs if not f["png"]],
        "stages": lineage_rows(run.stages),
    }


def render_html(
    run: RunArtifacts, figures: list[Figure], meta: dict[str, str] | None = None
) -> str:
    from jinja2 import Environment

    return (
        Environment(autoescape=True)
        .from_string(TEMPLATE)
        .render(
            title=run.title or "sgpo run", runs=[_run_view(run, figures, meta)], comparison=None
        )
    )


def build(
    entries: list[StageEntry],
    storage_options: dict[str, Any] | None = None,
    *,
    title: str = "",
    meta: dict[str, str] | None = None,
    edit_bins: int = 20,
    ppl_bins: int = 30,
) -> tuple[str, list[Figure], RunArtifacts]:
    run = RunArtifacts(
        stages=entries,
        read_rows=table_reader(storage_options),
        title=title,
        read_side_rows=side_rows_reader(storage_options),
    )
    figures = make_figures(run, edit_bins=edit_bins, ppl_bins=ppl_bins)
    return render_html(run, figures, meta), figures, run


# --------------------------------------------------------------------------------------------------
# Several runs on one page: the comparison table and Fig. 10
# --------------------------------------------------------------------------------------------------
def run_of(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[str, list[StageEntry]]:
    """(title, stages) of the run a URI names: a report artifact's own stage list (with ran / cached),
    or, for any other artifact or a store, the lineage of it (or of the store's newest report / judge)."""
    kind, url = resolve(uri, storage_options)
    if kind == "report":
        params = (read_manifest(url, storage_options).get("config") or {}).get("params") or {}
        stages = params.get("stages")
        if stages:
            stages = json.loads(stages) if isinstance(stages, str) else stages
            return str(params.get("title") or url), entries_from_stages(stages, storage_options)
    return f"lineage of {url}", entries_from_lineage(url, storage_options)


def comparison_rows(
    runs: list[RunArtifacts], storage_options: dict[str, Any] | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """The methods comparison (sgpo.report.comparison: `sgpo compare`'s columns, ours only: a run names no preset) of the
    runs, with `sgpo evaluate` results of each run's final policy where the store holds them."""
    from sgpo.report.comparison import COLUMNS, Row, add_evaluations, table_rows

    rows = []
    for run in runs:
        judge = run.one("judge")
        if judge is None:
            rows.append(Row(method=run.title, preset="", status="no judge stage in this run"))
            continue
        sm, policy = (
            judge.summary or {},
            ((judge.manifest or {}).get("parents") or {}).get("policy") or {},
        )
        row = Row(
            method=run.title,
            preset="",
            status="done",
            final_policy=policy.get("uri"),
            judge_win_rate=sm.get("win_rate"),
            judge_se=sm.get("standard_error"),
            judge_n=sm.get("n_labelled"),
        )
        if policy.get("content_hash"):
            add_evaluations(
                row,
                store_of(judge.uri, storage_options)[0],
                policy["content_hash"],
                policy.get("uri"),
            )
        rows.append(row)
    columns = [c for c in COLUMNS if not c.endswith("(paper)")]
    return columns, [{c: r[c] for c in columns} for r in table_rows(rows, layout="sgpo")]


def refinement_by_run(runs: list[RunArtifacts]) -> Figure:
    """Fig. 10: each run's round-1 refinement win rate over the initial policy's refinement of the
    same answers (e.g. SGPO, All-Ref, No-Ref; Sec. 4.4.3); a run made before those refinements
    existed shows its win rate over the unrefined answer y, and says so."""
    from sgpo.report.figures import _attempt, draw_win_rates, refinement_rows

    title = "Fig. 10: refinement win rate of y+ over the initial policy's refinement, by run"
    rows = []
    for run in runs:
        got = {r["versus"]: r for r in refinement_rows(win_rate_rows(run)) if r["round"] == 1}
        if "initial" in got:
            rows.append({**got["initial"], "label": run.title})
        elif "y" in got:
            rows.append({**got["y"], "label": f"{run.title} (vs the unrefined y)"})
    fig = Figure("fig10_refinement_by_run", title, "runs")
    if len(rows) < 2:
        fig.missing = (
            f"{len(rows)} of {len(runs)} runs have the refinement check (checks.refinement=true); "
            "Fig. 10 compares two or more"
        )
        return fig
    return _attempt(
        fig,
        lambda: (
            draw_win_rates(
                rows,
                title,
                xlabel="win rate of the refinement y+ over the initial policy's refinement (%)",
                legend="win rate of y+ (error bar: SE)",
            ),
            {r["label"]: r["value"] for r in rows},
        ),
    )


def build_several(uris: list[str], storage_options: dict[str, Any] | None = None) -> str:
    """One page for several runs: the comparison table, Fig. 10, then each run's own report."""
    from jinja2 import Environment

    runs, views = [], []
    for uri in uris:
        title, entries = run_of(uri, storage_options)
        run = RunArtifacts(
            stages=entries,
            read_rows=table_reader(storage_options),
            title=title,
            read_side_rows=side_rows_reader(storage_options),
        )
        runs.append(run)
        views.append(
            _run_view(run, make_figures(run), {"built from": uri, "stages": str(len(entries))})
        )
    columns, rows = comparison_rows(runs, storage_options)
    return (
        Environment(autoescape=True)
        .from_string(TEMPLATE)
        .render(
            title=f"sgpo: {len(runs)} runs compared",
            runs=views,
            comparison=rows,
            comparison_columns=columns,
            across=_figs([refinement_by_run(runs)]),
        )
    )


def log_figures(
    tracking: Any, figures: list[Figure], entries: list[StageEntry], *, own_run_id: str | None
) -> int:
    """Each figure to the MLflow run of the stage it is drawn from (a nested run of this parent
    whose `sgpo.artifact_uri` is the figure's artifact) and all of them to `own_run_id`; returns
    how many were logged. Tracking errors are logged, never raised."""
    import logging
    import tempfile

    if tracking is None:
        return 0
    from sgpo.core.tracking import _client

    log = logging.getLogger(__name__)
    client = _client(tracking.uri)
    n = 0
    try:
        runs = client.search_runs(
            [tracking.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'",
            max_results=500,
        )
        by_uri = {
            r.data.tags.get("sgpo.artifact_uri"): r.info.run_id
            for r in runs
            if r.data.tags.get("sgpo.artifact_uri")
        }
        with tempfile.TemporaryDirectory(prefix="sgpo-fig-") as tmp:
            for f in figures:
                if not f.png:
                    continue
                path = Path(tmp) / f"{f.id}.png"
                path.write_bytes(f.png)
                targets = {by_uri.get(f.source_uri or ""), own_run_id} - {None}
                for run_id in targets:
                    client.log_artifact(run_id, str(path), artifact_path="figures")
                    n += 1
    except Exception as e:  # noqa: BLE001 - the report never fails the run
        log.warning("figures not logged to MLflow: %s", e)
    return n


def resolve(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[str, str]:
    """(kind, artifact uri): kind 'report' (copy its HTML) or 'lineage' (build from this artifact)."""
    from artifacts.store import normalize_url

    url = normalize_url(uri).rstrip("/")
    try:
        manifest = read_manifest(url, storage_options)
    except (OSError, ValueError):
        manifest = None
    if manifest is not None:
        return ("report" if manifest.get("stage") == "report" else "lineage"), url
    if found := newest(url, "report", storage_options):
        return "report", found
    if found := newest(url, "judge", storage_options):
        return "lineage", found
    raise FileNotFoundError(
        f"{uri}: neither a finished artifact nor a store holding a report or judge artifact"
    )
