"""Serving an app with uvicorn in a background thread of this process (tests, the embedded LLM)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import fastapi


def _wait_healthy(url: str, thread: threading.Thread, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"the server thread exited before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s (last error: {last!r})")


@contextlib.contextmanager
def running_server(
    app: fastapi.FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 30.0
) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yields the base URL `http://HOST:PORT/v1`.

    With port=0 the OS picks a free port: we bind the socket ourselves and hand it to uvicorn,
    so there is no window in which another process could take the port.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: uvicorn then sets TCP_NODELAY on accepted connections; with proto 0
    # it does not, and every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    actual_port = sock.getsockname()[1]
    netloc = f"[{host}]:{actual_port}" if family == socket.AF_INET6 else f"{host}:{actual_port}"
    # lifespan off: the app has no startup hooks; graceful timeout: don't hang on a sleeping 'timeout' fault.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{actual_port}", daemon=True
    )
    thread.start()
    try:
        _wait_healthy(f"http://{netloc}/health", thread, startup_timeout_s)
        yield f"http://{netloc}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
