"""The team's Prefect server keeps its database in PostgreSQL, in the compose stack and in
docs/cluster.md (whose walk, tests/test_cluster.py, creates the database with the doc's own psql
line and starts the server on it); SQLite, the default, answers 503 under a team's load."""

from __future__ import annotations

from pathlib import Path

import yaml

import tests.helpers.cluster as cluster_helpers

REPO = Path(__file__).resolve().parents[3]


def test_compose_runs_the_prefect_server_on_postgresql():
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url, url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:")


def test_the_cluster_doc_starts_its_server_on_a_postgresql_database_it_created():
    values = {
        "api_port": "1",
        "mlflow_port": "2",
        "pg_port": "5999",
        "s3": "http://127.0.0.1:3",
        "repo": str(REPO),
        "mlflow_dir": "/tmp/m",
        "bucket": "b",
    }
    steps, _ = cluster_helpers.plan_walk(values)
    host = [s for s in steps if s.machine == "prefect-host"]
    order = [s.name or s.kind for s in host]
    database = next(i for i, s in enumerate(host) if s.name == "database")
    server = order.index("server")
    url = next(
        s.exports["PREFECT_API_DATABASE_CONNECTION_URL"]
        for s in host[:server]
        if "PREFECT_API_DATABASE_CONNECTION_URL" in s.exports
    )
    assert database < server, order
    assert url.startswith("postgresql+asyncpg://prefect:") and "@127.0.0.1:5999/prefect" in url
    assert host[database].argv[:7] == ["psql", "-h", "127.0.0.1", "-p", "5999", "-U", "postgres"]
    sql = " ".join(host[database].argv[7:])
    assert "CREATE USER prefect" in sql and "CREATE DATABASE prefect OWNER prefect" in sql
