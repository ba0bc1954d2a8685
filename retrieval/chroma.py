"""How chinwag reaches Chroma: an embedded store in the data directory, or a Chroma server.

A server is reached in the tenant and database the settings name, signed in with a secret read
from the environment (never from the config file, never logged), and every request has a time
limit. A `Connection` only builds clients: the store asks it for a new one after any failure, so
a server that was down is used again as soon as it answers, without a restart.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from bot.errors import ConfigError, DocumentsUnavailableError, RetrievalError
from config import Settings

log = logging.getLogger(__name__)

TOKEN_ENV = "CHINWAG_CHROMA_TOKEN"
PASSWORD_ENV = "CHINWAG_CHROMA_PASSWORD"


class Connection:
    """Builds Chroma clients for one store: embedded (`remote` False) or on a server."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        config = settings.retrieval
        self._settings = settings
        self._timeout = config.chroma_timeout_s
        self._headers: dict[str, str] = {}
        self._secret = ""
        self._tenant = config.chroma_tenant
        self._database = config.chroma_database
        url = config.chroma_url
        self.remote = bool(url)
        if not url:
            self.where = str(settings.chroma_dir)
            return
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
            # The URL itself is not repeated: it may carry credentials.
            raise ConfigError("retrieval.chroma_url must be http(s)://host[:port]")
        self._ssl = parsed.scheme == "https"
        self._host = parsed.hostname
        try:
            self._port = parsed.port or (443 if self._ssl else 8000)
        except ValueError:  # a port that is not a number, or out of range
            raise ConfigError("retrieval.chroma_url has an invalid port") from None
        host = f"[{self._host}]" if ":" in self._host else self._host
        # Shown in messages and logs: never the credentials a URL may carry.
        self.where = f"{parsed.scheme}://{host}:{self._port}"
        env = os.environ if environ is None else environ
        if config.chroma_auth == "token":
            self._secret = env.get(TOKEN_ENV, "").strip()
            if not self._secret:
                raise ConfigError(f'retrieval.chroma_auth is "token": set the token in {TOKEN_ENV}')
            if config.chroma_token_header == "Authorization":
                self._headers["Authorization"] = f"Bearer {self._secret}"
            else:
                self._headers["X-Chroma-Token"] = self._secret
        elif config.chroma_auth == "basic":
            self._secret = env.get(PASSWORD_ENV, "")
            if not self._secret:
                raise ConfigError(f'retrieval.chroma_auth is "basic": set the password in {PASSWORD_ENV}')
            pair = f"{config.chroma_user}:{self._secret}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    def client(self) -> Any:
        """A new Chroma client: RetrievalError if the embedded store cannot open,
        DocumentsUnavailableError if the server does not answer or refuses."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if not self.remote:
            try:
                # Its files hold the documents' text: readable by the owner only, like the data dir.
                self._settings.chroma_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                return chromadb.PersistentClient(path=self.where, settings=chroma_settings)
            except Exception as error:
                raise RetrievalError(f"Could not open the document store at {self.where}: {error}") from error
        import httpx

        try:
            # chromadb's client asks the server about the tenant and database as it is built, with
            # no time limit: a server that accepts connections but never answers would hang us here.
            httpx.get(
                f"{self.where}/api/v2/heartbeat", headers=self._headers, timeout=self._timeout
            ).raise_for_status()
            client = chromadb.HttpClient(
                host=self._host,
                port=self._port,
                ssl=self._ssl,
                headers=dict(self._headers),
                settings=chroma_settings,
                tenant=self._tenant,
                database=self._database,
            )
        except Exception as error:
            raise self.failure(error) from error
        _limit_time(client, self._timeout)
        return client

    def failure(self, error: BaseException) -> RetrievalError:
        """The one-line error a failed Chroma call becomes (DocumentsUnavailableError on a server)."""
        if not self.remote:
            return RetrievalError(f"The document store at {self.where} failed: {self._describe(error)}")
        return DocumentsUnavailableError(
            f"The Chroma server at {self.where} is unavailable: {self._describe(error)}"
        )

    def _describe(self, error: BaseException) -> str:
        import httpx
        from chromadb.errors import AuthorizationError, ChromaAuthError, NotFoundError

        refused = "it refused chinwag's credentials (retrieval.chroma_auth"
        if isinstance(error, httpx.TimeoutException):
            text = f"no answer within {self._timeout:g} s"
        elif isinstance(error, httpx.HTTPStatusError) and error.response.status_code in (401, 403):
            text = f"{refused}, {TOKEN_ENV} or {PASSWORD_ENV})"
        elif isinstance(error, httpx.HTTPStatusError):
            text = f"HTTP {error.response.status_code} from {error.request.url.path}"
        elif isinstance(error, ChromaAuthError | AuthorizationError):
            text = f"{refused}, {TOKEN_ENV} or {PASSWORD_ENV})"
        elif self.remote and (
            isinstance(error, NotFoundError) or (isinstance(error, ValueError) and "exist" in str(error))
        ):
            # A tenant or database that is not there: name the settings that chose it.
            text = (
                f"{_first_line(error)} (retrieval.chroma_tenant {self._tenant!r}, "
                f"retrieval.chroma_database {self._database!r})"
            )
        else:
            text = _first_line(error)
        return text.replace(self._secret, "***") if self._secret else text


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _limit_time(client: Any, seconds: float) -> None:
    """Give chromadb's HTTP session a time limit: it has none (timeout=None) and no setting for one."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(seconds)
    else:  # a chromadb whose client is built differently: requests may then wait without limit
        log.warning("could not limit how long chromadb waits for the Chroma server")
