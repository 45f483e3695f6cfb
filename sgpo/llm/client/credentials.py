"""The API key: where it comes from, and keeping it out of every message."""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlparse

from sgpo.config import EndpointConfig
from sgpo.llm.client.errors import LLMCallError


def _is_loopback(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(endpoint: EndpointConfig) -> str:
    """The key from `endpoint.api_key_env`; a loopback server needs none."""
    key = os.environ.get(endpoint.api_key_env)
    if key:
        return key
    if endpoint.base_url and _is_loopback(endpoint.base_url):
        return "EMPTY"  # local servers ignore the key, but the openai client insists on one
    raise LLMCallError(
        f"environment variable {endpoint.api_key_env} is not set (needed for {endpoint.base_url})",
        endpoint=endpoint.base_url,
    )


def redact(text: str, api_key: str) -> str:
    # Provider errors sometimes echo (part of) the key, e.g. "Incorrect API key provided: sk-ab***yz".
    if api_key and api_key != "EMPTY":
        text = text.replace(api_key, "***")
    return re.sub(r"sk-[A-Za-z0-9_\-*]{4,}", "sk-***", text)
