"""`http_get_json`: GET a JSON API on the operator's allow-list, and nothing else.

Only hosts on `tools.http_allow_hosts` are reached; every redirect is checked against the list
again; addresses that resolve to private, loopback or link-local networks are refused unless
`tools.http_allow_private` says otherwise; the body is read up to a size cap within a timeout.
The check resolves the name before connecting, so a DNS answer that changes between the check and
the connection (rebinding) is not caught; put a proxy in front for hostile networks.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urljoin, urlsplit

from bot.tools.registry import Tool, ToolError
from config.settings import ToolsSettings

_MAX_REDIRECTS = 3


def http_tool(settings: ToolsSettings) -> Tool | None:
    """The tool for these settings, or None when no host is allowed."""
    allowed = {host.lower().strip() for host in settings.http_allow_hosts if host.strip()}
    if not allowed:
        return None

    def http_get_json(url: str) -> str:
        """Fetch JSON from an allowed web API with a GET request.

        Args:
            url: the full http(s) URL, on one of the allowed hosts.
        """
        return fetch_json(
            url, allowed, settings.http_allow_private, settings.http_timeout_s, settings.http_max_bytes
        )

    hosts = ", ".join(sorted(allowed))
    tool = Tool.from_function(http_get_json, timeout_s=settings.http_timeout_s + 1)
    return Tool(
        tool.name,
        f"{tool.description} Allowed hosts: {hosts}.",
        tool.function,
        tool.arguments,
        timeout_s=tool.timeout_s,
    )


def fetch_json(url: str, allowed: set[str], allow_private: bool, timeout_s: float, max_bytes: int) -> str:
    """The JSON at `url` as compact text; every refusal is a ToolError with the reason."""
    import httpx

    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            _check(url, allowed, allow_private)
            try:
                with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ToolError(f"the response is larger than {max_bytes:,} bytes")
                    status = response.status_code
            except httpx.TimeoutException:
                raise ToolError(f"no answer within {timeout_s:g} s") from None
            except httpx.HTTPError as error:
                raise ToolError(f"request failed: {type(error).__name__}") from None
            if status >= 400:
                raise ToolError(f"the server answered HTTP {status}")
            try:
                value = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ToolError("the response is not JSON") from None
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise ToolError(f"more than {_MAX_REDIRECTS} redirects")


def _check(url: str, allowed: set[str], allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError("only http and https URLs can be fetched")
    host = (parts.hostname or "").lower()
    if host not in allowed:
        raise ToolError(f"{host or url!r} is not an allowed host (allowed: {', '.join(sorted(allowed))})")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError:
        raise ToolError(f"cannot resolve {host}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
            raise ToolError(f"{host} resolves to a private address ({address}), which is not allowed")
