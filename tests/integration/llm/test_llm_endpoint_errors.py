"""Endpoints that are not OpenAI-compatible APIs (a web page at the URL) fail at once, clearly, unpaid."""

from __future__ import annotations

import contextlib
import http.server
import threading

import pytest

from sgpo.llm.client import EndpointConfig, LLMCallError, call_all
from tests.helpers.llm import make_requests


@contextlib.contextmanager
def web_server(status: int, content_type: str, body: bytes):
    """A plain HTTP server that answers every request with the same page, counting requests."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            hits.append(self.path)
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()
        srv.server_close()


HTML = (
    b"<!doctype html><html><head><title>Welcome to nginx!</title></head><body>hello</body></html>"
)


@pytest.mark.parametrize(
    "status,ctype,body,got",
    [
        (200, "text/html; charset=utf-8", HTML, "got text/html"),
        (404, "text/html", HTML, "got text/html"),
        (
            200,
            "application/json",
            b'{"status": "ok"}',
            "got application/json without a 'choices' list",
        ),
    ],
)
def test_a_non_openai_answer_is_a_clear_error_not_retried(tmp_path, status, ctype, body, got):
    with web_server(status, ctype, body) as (url, hits):
        ep = EndpointConfig(
            base_url=url,
            model="m",
            api_key_env="SGPO_TEST_NO_SUCH_KEY",
            max_retries=3,
            max_invalid_retries=2,
            backoff_base_s=0.01,
            max_concurrency=1,
        )
        with pytest.raises(LLMCallError) as e:
            call_all(make_requests(3), ep, journal_url=str(tmp_path / "j.jsonl"), namespace="html")
    msg = str(e.value)
    assert msg.startswith(
        f"the endpoint at {url} did not answer as an OpenAI-compatible API ({got}"
    )
    assert f"HTTP {status}" in msg
    assert len(hits) == 1  # neither retried nor re-asked, and the other requests were not sent
    assert not (tmp_path / "j.jsonl").exists() or (tmp_path / "j.jsonl").read_text() == ""
