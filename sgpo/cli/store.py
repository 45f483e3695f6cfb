"""`sgpo verify` and `sgpo show`: what the store holds, checked and explained.

sgpo verify STORE            every artifact's files against its manifest's sha256 (exit 1 if any is damaged)
sgpo show ARTIFACT_URI       an artifact's settings (its section as the stage used it) and lineage
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    return json.loads(args.storage_options) if args.storage_options else None


def cmd_verify(args: argparse.Namespace) -> int:
    from artifacts.audit import audit_store
    from artifacts.store import ArtifactStore

    store = ArtifactStore(args.store, _storage_options(args))
    n = damaged = unfinished = 0
    for audit in audit_store(store):
        if not audit.finished:
            unfinished += 1
            if args.verbose:
                print(f"[sgpo] unfinished (no manifest; nothing reads it): {audit.url}")
            continue
        n += 1
        if audit.problems:
            damaged += 1
            print(f"[sgpo] DAMAGED {audit.url}: {'; '.join(audit.problems)}")
        elif args.verbose:
            print(f"[sgpo] ok      {audit.url}")
    if n == 0 and unfinished == 0:
        print(f"sgpo: {store.url} holds no artifacts", file=sys.stderr)
        return 2
    print(
        f"[sgpo] {n} artifacts checked in {store.url}: {n - damaged} match their manifests, "
        f"{damaged} damaged" + (f", {unfinished} unfinished folders ignored" if unfinished else "")
    )
    if damaged:
        print(
            "[sgpo] a run recomputes a damaged artifact (it is treated as absent); delete its folder "
            "to drop it now"
        )
    return 1 if damaged else 0


def _read_manifest(uri: str, so: dict[str, Any] | None) -> dict[str, Any]:
    import fsspec

    from artifacts.store import MANIFEST, normalize_url

    fs, root = fsspec.core.url_to_fs(normalize_url(uri), **(so or {}))
    try:
        with fs.open(f"{root.rstrip('/')}/{MANIFEST}", "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is not a finished artifact (no {MANIFEST})") from None


def _lineage(uri: str, so: dict[str, Any] | None, depth: int, seen: set[str]) -> list[str]:
    """One line per parent, indented by generation (each artifact once)."""
    try:
        manifest = _read_manifest(uri, so)
    except (OSError, ValueError) as e:
        return [f"{'  ' * depth}(cannot read {uri}: {e})"]
    lines = []
    for name, parent in sorted((manifest.get("parents") or {}).items()):
        p_uri = parent.get("uri", "")
        head = f"{'  ' * depth}{name}: {parent.get('stage')} {p_uri} (content {str(parent.get('content_hash'))[:12]})"
        if p_uri in seen:
            lines.append(head + " (above)")
            continue
        seen.add(p_uri)
        lines.append(head)
        if "://" in p_uri and not p_uri.startswith("hf://"):
            lines += _lineage(p_uri, so, depth + 1, seen)
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    so = _storage_options(args)
    try:
        manifest = _read_manifest(args.uri, so)
    except (OSError, ValueError) as e:
        print(f"sgpo: {e}", file=sys.stderr)
        return 2
    ref = manifest.get("ref") or {}
    libs = manifest.get("library_versions") or {}
    print(
        f"{manifest.get('stage')} artifact {args.uri}\n"
        f"  kind {ref.get('kind')}, content {str(ref.get('content_hash'))[:16]}"
        + (f", {ref.get('rows')} rows" if ref.get("rows") is not None else "")
        + f"\n  key {manifest.get('cache_key')} (code version {manifest.get('code_version')})"
        f"\n  made {manifest.get('created_at')} by run {ref.get('produced_by')} in "
        f"{manifest.get('seconds')} s; " + ", ".join(f"{k} {v}" for k, v in libs.items())
    )
    section = manifest.get("section")
    blocks = [
        (
            "settings (the section as the stage used it)",
            section if section is not None else manifest.get("config"),
        ),
        ("in the cache key", manifest.get("config") if section is not None else None),
        ("prompts", manifest.get("prompts")),
        ("seeds", manifest.get("seeds")),
        ("summary", ref.get("summary")),
    ]
    for title, value in blocks:
        if value:
            text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip()
            print(f"{title}:\n" + "\n".join(f"  {line}" for line in text.splitlines()))
    lineage = _lineage(args.uri, so, 1, set())
    print("lineage (inputs, then theirs):" if lineage else "lineage: no inputs")
    for line in lineage:
        print(line)
    return 0


def add_store_parsers(subparsers: Any) -> None:
    """Register `sgpo verify` and `sgpo show` on the CLI's subparsers."""
    v = subparsers.add_parser(
        "verify", help="check every artifact of a store against its manifest (sha256 of each file)"
    )
    v.add_argument("store", metavar="STORE", help="the store: a folder, file:// or s3:// URL")
    v.add_argument("-v", "--verbose", action="store_true", help="list every artifact checked")
    v.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec options")
    v.set_defaults(func=cmd_verify)
    s = subparsers.add_parser(
        "show", help="an artifact's settings (as the stage used them) and its lineage"
    )
    s.add_argument("uri", metavar="ARTIFACT_URI", help="an artifact's folder (file://, s3://)")
    s.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec options")
    s.set_defaults(func=cmd_show)
