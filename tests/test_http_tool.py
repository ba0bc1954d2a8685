"""http_get_json against a real local HTTP server: allowed and blocked hosts, redirects, size, time,
and the hostile answers: a response that never ends, JSON nested 100,000 deep."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.tools.http import fetch_json, http_tool, routable
from bot.tools.registry import ToolError
from config.settings import ToolsSettings


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = int(self.server.server_address[1])  # type: ignore[index]
        routes = {
            "/shipments/42": (200, {"id": 42, "status": "in_transit"}),
            "/missing": (404, {"error": "not found"}),
        }
        if self.path == "/moved":
            self._send(302, b"", {"Location": "/shipments/42"})
        elif self.path == "/escape":
            self._send(302, b"", {"Location": f"http://localhost:{port}/shipments/42"})
        elif self.path == "/big":
            self._send(200, json.dumps({"data": "x" * 50_000}).encode())
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, b"{}")
        elif self.path.startswith("/port"):
            other = self.path.split("=", 1)[1]
            self._send(302, b"", {"Location": f"http://127.0.0.1:{other}/shipments/42"})
        elif self.path == "/to-https":
            self._send(302, b"", {"Location": "https://127.0.0.1/shipments/42"})
        elif self.path == "/deep":
            self._send(200, b"[" * 100_000 + b"]" * 100_000)
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
        elif self.path == "/html":
            self._send(200, b"<html>hi</html>", {"Content-Type": "text/html"})
        else:
            status, body = routes.get(self.path, (404, {"error": "no route"}))
            self._send(status, json.dumps(body).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


ALLOWED = {"127.0.0.1"}


def get(
    url: str,
    allow_private: bool = True,
    timeout: float = 1.0,
    max_bytes: int = 10_000,
    allowed: set[str] = ALLOWED,
) -> str:
    return fetch_json(url, allowed, allow_private, timeout, max_bytes)


def test_json_from_an_allowed_host(server: str) -> None:
    assert json.loads(get(f"{server}/shipments/42")) == {"id": 42, "status": "in_transit"}
    assert json.loads(get(f"{server}/moved")) == {"id": 42, "status": "in_transit"}  # redirect kept in bounds


def test_hosts_off_the_list_and_redirects_to_them_are_refused(server: str) -> None:
    with pytest.raises(ToolError, match=r"'example\.org' is not an allowed host"):
        get("http://example.org/x")
    port = server.rsplit(":", 1)[1]
    with pytest.raises(ToolError, match="'localhost' is not an allowed host"):
        get(f"{server}/escape")
    with pytest.raises(ToolError, match="only http and https"):
        get(f"file:///etc/passwd?{port}")


def test_private_addresses_need_to_be_allowed_explicitly(server: str) -> None:
    with pytest.raises(ToolError, match=r"resolves to a private address \(127\.0\.0\.1\)"):
        get(f"{server}/shipments/42", allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",  # carrier-grade NAT (Tailscale)
        "100.100.100.200",  # a cloud metadata service in that range
        "192.0.0.9",  # 192.0.0.0/24, which some Pythons call global
        "192.0.0.170",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",  # IPv4 inside IPv6: judged as itself
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused(address: str) -> None:
    assert not routable(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert routable(ipaddress.ip_address(address))


def test_redirects_stay_on_the_same_host_and_port_unless_the_list_names_the_target(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    refused = rf"redirect from 127\.0\.0\.1:{port} to 127\.0\.0\.1:6379 was refused"
    with pytest.raises(ToolError, match=refused):
        get(f"{server}/port=6379")
    # Named with its port, the target may be followed (here: the server's own port).
    named = {"127.0.0.1", f"127.0.0.1:{port}"}
    assert json.loads(get(f"{server}/port={port}", allowed=named))["id"] == 42
    # To the scheme's default port of a listed host (http to https), too: refused here only
    # because nothing listens there.
    with pytest.raises(ToolError, match="request failed"):
        get(f"{server}/to-https")


def test_a_response_that_never_ends_is_cut_at_the_deadline(server: str) -> None:
    # Every read succeeds (a byte each 0.1 s); the call as a whole still ends on time.
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"no answer within 0\.5 s"):
        get(f"{server}/drip", timeout=0.5, max_bytes=100_000)
    assert time.monotonic() - started < 1.2


def test_json_nested_too_deep_is_a_one_line_tool_error(server: str) -> None:
    with pytest.raises(ToolError, match="nested too deeply") as error:
        get(f"{server}/deep", max_bytes=1_000_000)
    assert "\n" not in str(error.value)


def test_size_time_status_and_content_are_checked(server: str) -> None:
    with pytest.raises(ToolError, match="larger than 10,000 bytes"):
        get(f"{server}/big")
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"no answer within 0\.3 s"):
        get(f"{server}/slow", timeout=0.3)
    assert time.monotonic() - started < 1.5
    with pytest.raises(ToolError, match="HTTP 404"):
        get(f"{server}/missing")
    with pytest.raises(ToolError, match="not JSON"):
        get(f"{server}/html")


def test_the_tool_exists_only_with_allowed_hosts_and_says_which() -> None:
    assert http_tool(ToolsSettings()) is None
    tool = http_tool(ToolsSettings(http_allow_hosts=["api.example.com"]))
    assert tool is not None and tool.name == "http_get_json"
    assert "Allowed hosts: api.example.com." in tool.description
    assert tool.schema()["function"]["parameters"]["required"] == ["url"]
