"""`sgpo report`: a run's self-contained HTML report, or several runs on one page (sgpo.report.html).

    sgpo report RUN_OR_STORE_URI [-o report.html]
    sgpo report RUN_URI RUN_URI ... [-o report.html]     (several runs: comparison table, Fig. 10)

RUN_OR_STORE_URI is a `report` artifact (its HTML is copied out), any other finished artifact
(e.g. a run's judge or final dpo: the report is built from its lineage, walking the manifests'
parents), or a store (its newest report artifact; without one, the newest judge artifact's
lineage). Images are PNG data URIs and the CSS is inline: the file opens without a network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sgpo.report.html import (
    REPORT_FILE,
    build,
    build_several,
    entries_from_lineage,
    resolve,
    store_of,
)


def cmd_report(args: argparse.Namespace) -> int:
    so = json.loads(args.storage_options) if args.storage_options else None
    uris = list(args.uri)
    try:
        if len(uris) > 1:
            html = build_several(uris, so)
            what = f"of {len(uris)} runs (comparison table, Fig. 10, each run's figures)"
        else:
            kind, uri = resolve(uris[0], so)
            if kind == "report":
                store, url = store_of(uri, so)
                html = store.read_bytes(f"{url}/{REPORT_FILE}").decode()
            else:
                entries = entries_from_lineage(uri, so)
                html, figures, _ = build(
                    entries,
                    so,
                    title=f"sgpo report of {uri}",
                    meta={"built from": uri, "stages": str(len(entries))},
                )
            what = f"({'copied from ' if kind == 'report' else 'built from the lineage of '}{uri})"
    except (OSError, ValueError, KeyError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.write_text(html, encoding="utf-8")
    print(f"[sgpo] report {what} -> {out.resolve()}")
    print(f"[sgpo] open it with: xdg-open {out.resolve()}  (self-contained: no network needed)")
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `sgpo report` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "report",
        help="write a run's self-contained HTML report (figures, stage table, lineage)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "uri",
        metavar="RUN_OR_STORE_URI",
        nargs="+",
        help="a report artifact, any finished artifact of the run (e.g. its judge), or a store; "
        "several: one page with their comparison table, Fig. 10 and each run's report",
    )
    p.add_argument(
        "-o",
        "--output",
        default="report.html",
        help="where to write the HTML (default: report.html)",
    )
    p.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help='fsspec options of the store, e.g. \'{"endpoint_url": "http://minio:9000"}\'',
    )
    p.set_defaults(func=cmd_report)
    return p
