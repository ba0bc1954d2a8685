"""`http_get_json`: GET a JSON API on the operator's allow-list, and nothing else.

Only hosts on `tools.http_allow_hosts` are reached. A redirect is followed only to the same host
and port, or to a host (with its port, unless it is the scheme's default) the list names itself.
Addresses that are not globally routable (private, loopback, link-local, carrier-grade NAT,
IPv4 hidden in IPv6…) are refused unless `tools.http_allow_private` says otherwise. The body is
read up to a size cap, and `tools.http_timeout_s` bounds the whole call, redirects included, not
each read. The check resolves the name before connecting, so a DNS answer that changes between the
check and the connection (rebinding) is not caught; put a proxy in front for hostile networks.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from typing import Any
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
        outbound=True,
    )


def fetch_json(url: str, allowed: set[str], allow_private: bool, timeout_s: float, max_bytes: int) -> str:
    """The JSON at `url` as compact text, within `timeout_s` in all; every refusal is a ToolError."""
    import httpx

    watchdog = _Watchdog(timeout_s)
    late = ToolError(f"no answer within {timeout_s:g} s")
    origin: tuple[str, int] | None = None
    with watchdog, httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            target = _check(url, allowed, allow_private, origin)
            remaining = watchdog.remaining()
            if remaining <= 0:
                raise late
            try:
                with client.stream(
                    "GET",
                    url,
                    headers={"Accept": "application/json"},
                    timeout=remaining,
                    extensions={"trace": watchdog.trace},
                ) as response:
                    if response.is_redirect:
                        url, origin = urljoin(url, response.headers.get("location", "")), target
                        continue
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ToolError(f"the response is larger than {max_bytes:,} bytes")
                    status = response.status_code
            except httpx.TimeoutException:
                raise late from None
            except (httpx.HTTPError, OSError) as error:
                if watchdog.remaining() <= 0:
                    raise late from None  # the watchdog cut the connection
                raise ToolError(f"request failed: {type(error).__name__}") from None
            if watchdog.remaining() <= 0:
                raise late
            if status >= 400:
                raise ToolError(f"the server answered HTTP {status}")
            try:
                value = json.loads(body.decode("utf-8"))
                return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            except RecursionError:
                raise ToolError("the response is JSON nested too deeply to read") from None
            except (UnicodeDecodeError, ValueError):
                raise ToolError("the response is not JSON") from None
    raise ToolError(f"more than {_MAX_REDIRECTS} redirects")


class _Watchdog:
    """One deadline for a whole fetch: at it, the connections' sockets are shut, which ends a read
    that is still waiting (httpx's timeouts bound each read, so a host sending a byte now and then
    would otherwise hold the call for as long as it likes)."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(timeout_s, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace hook: note each new connection's socket."""
        if not event.endswith("connect_tcp.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with self._lock:
                self._sockets.append(sock)
                expired = self._expired
            if expired:
                _shut(sock)

    def _cut(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: its read has ended anyway


# Not globally routable, yet `is_global` says they are (or may, depending on the Python version).
_NOT_GLOBAL = [
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (Tailscale, cloud metadata at .200)
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
]


def routable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet: not private, loopback, shared, reserved…"""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo, NAT64) is judged as itself.
        teredo = address.teredo
        inner = address.ipv4_mapped or address.sixtofour or (teredo[1] if teredo else None)
        if inner is None and address in ipaddress.ip_network("64:ff9b::/96"):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return routable(inner)
    if address.is_multicast or not address.is_global:
        return False
    return not any(address in network for network in _NOT_GLOBAL if network.version == address.version)


def _check(
    url: str, allowed: set[str], allow_private: bool, origin: tuple[str, int] | None
) -> tuple[str, int]:
    """Refuse a URL the tool may not fetch; its (host, port). `origin`: where it redirects from."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError("only http and https URLs can be fetched")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ToolError(f"{url!r} has an invalid port") from None
    if host not in allowed and f"{host}:{port}" not in allowed:
        raise ToolError(f"{host or url!r} is not an allowed host (allowed: {', '.join(sorted(allowed))})")
    if origin is not None and (host, port) != origin:
        default = port == (443 if parts.scheme == "https" else 80)
        if f"{host}:{port}" not in allowed and not (default and host in allowed):
            raise ToolError(
                f"a redirect from {origin[0]}:{origin[1]} to {host}:{port} was refused: redirects stay "
                "on the same host and port unless the allow-list names the target"
            )
    if allow_private:
        return host, port
    try:
        infos = socket.getaddrinfo(host, port)
    except OSError:
        raise ToolError(f"cannot resolve {host}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not routable(address):
            raise ToolError(f"{host} resolves to a private address ({address}), which is not allowed")
    return host, port
