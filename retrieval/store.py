"""DocumentStore: ingested documents as embedded chunks in Chroma, searched within scopes.

Each scope's chunks (vectors, text, where each came from) live in a collection of their own, and
`<name>_documents` holds one record per ingested file (path, scope, content hash, chunk count) so
that re-ingesting an unchanged file costs one lookup. Chroma results become `Passage` objects here;
nothing of Chroma leaves this module. The store connects on first use and again after any failure,
so a Chroma server that was down is used again once it answers (`retrieval/chroma.py`).

A search is hybrid (`retrieval.hybrid`): the chunks nearest in meaning (Chroma) and those sharing
the question's words (BM25 over the same chunks, `retrieval/keyword.py`) are fused by reciprocal
rank. Chroma stays the source of truth; the keyword index follows it as files are ingested and
removed, and is brought in step with it when the store connects (and, with a Chroma server that
other processes write to, every `retrieval.keyword_sync_s`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bot.errors import DocumentsUnavailableError, RetrievalError
from bot.seams.retriever import GLOBAL_SCOPE
from config import Settings
from retrieval.chroma import Connection
from retrieval.chunking import TextChunk, iter_chunks
from retrieval.embeddings import Embedder, EmbeddingError, chroma_embedding_function, shared_embedder
from retrieval.keyword import KeywordIndex
from retrieval.loaders import LoadedDocument, LoadError, check_regular, iter_files, load

log = logging.getLogger(__name__)

# Chunks embedded and written together; large enough to batch well, small enough to show progress.
_FLUSH_CHUNKS = 256
# Reciprocal rank fusion: a chunk's fused score is the sum over the rankings of 1 / (_RRF_K + rank),
# with the usual constant; each ranking offers at least _CANDIDATES chunks to the fusion.
_RRF_K = 60
_CANDIDATES = 20


@dataclass(frozen=True)
class Passage:
    """A chunk of a document with its similarity to a query (cosine, -1..1); a hybrid search adds
    its BM25 score (None: no word of the query in it), its fused (reciprocal rank) score, and
    whether it came first by meaning and first by words alike (`agreed`)."""

    id: str
    text: str
    score: float
    title: str
    path: str
    location: str
    scope: str
    document_id: str
    page: int | None = None
    keyword: float | None = None
    fused: float = 0.0
    agreed: bool = False


@dataclass(frozen=True)
class DocumentInfo:
    """One ingested file."""

    id: str
    path: str
    title: str
    scope: str
    kind: str
    chunks: int
    sha256: str
    ingested_at: str


@dataclass
class IngestReport:
    """What one `ingest` call did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    seconds: float = 0.0


class IngestProgress:
    """Callbacks an ingest reports to (the CLI draws bars from them); all optional."""

    def files(self, total: int) -> None:
        """The number of files found."""

    def file_done(self, path: str, outcome: str) -> None:
        """One file handled: added, updated, unchanged or skipped."""

    def chunks_queued(self, n: int) -> None:
        """`n` more chunks wait to be embedded."""

    def chunks_done(self, n: int) -> None:
        """`n` more chunks embedded and stored."""


@dataclass
class _Part:
    """Consecutive chunks of one file in a batch; `total` is set on its last part."""

    doc: LoadedDocument
    doc_id: str
    digest: str
    replacing: bool
    chunks: list[TextChunk]
    first: bool
    total: int | None = None


def document_id(scope: str, path: Path) -> str:
    """Stable id of a file within a scope."""
    return hashlib.sha256(f"{scope}\0{path}".encode()).hexdigest()[:16]


class DocumentStore:
    """Chunks in Chroma, one collection per scope. Sync methods block; `search`/`get` are the seam.

    A collection per scope keeps scopes apart physically (a query cannot reach another scope's
    chunks, whatever its filter) and keeps queries fast: a plain nearest-neighbour query measured
    several times faster than a metadata filter over one shared collection (bench/RESULTS.md).
    """

    def __init__(self, connection: Connection, settings: Settings) -> None:
        self._connection = connection
        self._settings = settings.retrieval
        self._keyword_path = _keyword_path(connection, settings)
        self._keywords: KeywordIndex | None = None
        self._synced = 0.0  # when the keyword index was last brought in step with Chroma (monotonic)
        self._embedder_args = (
            settings.retrieval.embedding_model,
            settings.model_cache_dir,
            settings.model.threads,
        )
        self._lock = threading.RLock()
        # Set by `_connect` and `_ready`, cleared after a failure: the next call connects afresh.
        self._client: Any = None
        self._documents: Any = None
        self._collections: dict[str, Any] = {}
        self._down = False  # the last call failed: say so in the log when it works again
        # One connection attempt at a time; calls arriving meanwhile share its outcome.
        self._connecting = threading.Lock()
        self._attempts = 0
        self._failure: RetrievalError | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chinwag-chroma-write")

    @property
    def where(self) -> str:
        """The store's directory or server (without credentials), for messages."""
        return self._connection.where

    def _connect(self) -> None:
        """Build a client when there is none. One attempt at a time: a call arriving meanwhile
        waits for it and shares its outcome, instead of queueing an attempt of its own behind a
        server that does not answer (each would cost `retrieval.chroma_timeout_s`)."""
        if self._client is not None:
            return
        seen = self._attempts
        with self._connecting:
            if self._client is not None:
                return
            if self._attempts != seen and self._failure is not None:
                raise _again(self._failure)  # the attempt this call waited for failed just now
            try:
                client = self._connection.client()
            except RetrievalError as error:
                self._failure = error
                raise
            finally:
                self._attempts += 1
            with self._lock:
                self._client = client

    def _ready(self) -> tuple[Any, Any]:
        """The client and the documents collection (`_connect` built the client)."""
        with self._lock:
            if self._client is None:  # a failure since `_connect`: do not queue another attempt
                raise _again(self._failure or self._connection.failure(ConnectionError("not connected")))
            if self._documents is None:
                name = self._settings.collection
                model = self._settings.embedding_model
                documents = self._client.get_or_create_collection(
                    f"{name}_documents", metadata={"embedding_model": model}, embedding_function=None
                )
                built_with = (documents.metadata or {}).get("embedding_model")
                if built_with and built_with != model:
                    raise RetrievalError(
                        f"The collection {name!r} was built with the embedding model {built_with!r}, "
                        f"not {model!r}: set retrieval.embedding_model back, or use another "
                        "retrieval.collection and ingest again"
                    )
                self._documents = documents
                if self._settings.hybrid:
                    self._sync_keywords()
                if self._down:
                    log.info("the document store at %s answers again", self.where)
                    self._down = False
            return self._client, self._documents

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Any failure becomes one RetrievalError (DocumentsUnavailableError on a server), and the
        next call connects afresh: a server that went down and came back is used again."""
        try:
            self._connect()
            yield
        except DocumentsUnavailableError:  # no client could be built: nothing to let go of
            self._down = True
            raise
        except RetrievalError:  # ours (the embedding model, the settings): the connection is fine
            raise
        except Exception as error:
            failure = self._connection.failure(error)
            with self._lock:
                first = not self._down
                self._down = True
                self._failure = failure
                client, self._client, self._documents = self._client, None, None
                self._collections.clear()
            _close(client)
            # The first failure in a row is logged in full; the engine logs one line per turn.
            log.warning("document store at %s failed", self.where, exc_info=first)
            raise failure from error

    def connect(self) -> None:
        """Connect now (rather than on first use); a failure raises as any call would."""
        with self._guarded():
            self._ready()

    def collection_name(self, scope: str) -> str:
        """The Chroma collection holding one scope's chunks."""
        slug = re.sub(r"[^A-Za-z0-9]+", "", scope)[:32] or "scope"
        tag = hashlib.sha256(scope.encode()).hexdigest()[:8]
        return f"{self._settings.collection}-{slug}-{tag}"

    def _collection(self, scope: str, create: bool) -> Any | None:
        from chromadb.errors import NotFoundError

        with self._lock:
            found = self._collections.get(scope)
            if found is not None:
                return found
            client, _ = self._ready()
            name = self.collection_name(scope)
            if create:
                # We embed ourselves (batched, with progress); the registered function lets
                # Chroma, and any other client of the collection, embed the same way offline.
                found = client.get_or_create_collection(
                    name,
                    metadata={"hnsw:space": "cosine", "scope": scope},
                    embedding_function=chroma_embedding_function(*self._embedder_args),
                )
            else:
                try:
                    found = client.get_collection(
                        name, embedding_function=chroma_embedding_function(*self._embedder_args)
                    )
                except NotFoundError:  # not created yet: this scope has no documents
                    return None
            self._collections[scope] = found
            return found

    @classmethod
    def open(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> DocumentStore:
        """The store the settings name: a Chroma server by URL, else an embedded one in the data dir.

        An embedded store that cannot open raises; a server that does not answer yet is logged
        and asked again on each use. Settings that cannot work (a secret missing from `environ`,
        default the process environment) raise ConfigError.
        """
        try:
            import chromadb  # noqa: F401
        except ImportError as error:  # pragma: no cover - a dependency
            raise RetrievalError(f"chromadb is not installed: {error}") from error
        store = cls(Connection(settings, environ), settings)
        try:
            store.connect()
        except DocumentsUnavailableError as error:
            log.warning("%s; document search resumes as soon as it answers", error)
        return store

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use."""
        try:
            return shared_embedder(*self._embedder_args)
        except EmbeddingError as error:
            raise RetrievalError(str(error)) from error

    # Ingestion --------------------------------------------------------------------------

    def ingest(
        self, paths: Iterable[Path], scope: str = GLOBAL_SCOPE, progress: IngestProgress | None = None
    ) -> IngestReport:
        """Add new files, replace changed ones, skip unchanged ones; unreadable files are reported.

        Chunks stream through in batches of _FLUSH_CHUNKS (split, embedded, written), so memory
        stays bounded however large a file is; a file's record is written after its last chunk.
        """
        with self._guarded():
            return self._ingest(paths, scope, progress or IngestProgress())

    def _ingest(self, paths: Iterable[Path], scope: str, progress: IngestProgress) -> IngestReport:
        report = IngestReport()
        started = time.perf_counter()
        files: list[Path] = []
        for path in paths:
            try:
                files.extend(iter_files([path]))
            except LoadError as error:
                report.skipped.append((str(path), str(error)))
        progress.files(len(files))
        batch: list[_Part] = []
        queued = 0  # chunks in `batch`
        writing: list[Future[None]] = []
        for path in files:
            shown = str(path)
            try:
                check_regular(path)  # before hashing: a FIFO or /dev/zero never ends
                digest = _sha256(path)
                doc_id = document_id(scope, path)
                existing = self._document(doc_id)
                if existing is not None and existing.sha256 == digest:
                    report.unchanged.append(shown)
                    progress.file_done(shown, "unchanged")
                    continue
                doc = load(path)
                chunks = iter_chunks(doc, self._settings.chunk_size, self._settings.chunk_overlap)
                first = next(chunks, None)
                if first is None:
                    raise LoadError(f"{path.name} has no text to index")
            except (LoadError, OSError) as error:
                report.skipped.append((shown, str(error)))
                progress.file_done(shown, "skipped")
                continue
            part = _Part(doc, doc_id, digest, existing is not None, [first], first=True)
            batch.append(part)
            total = 1
            queued += 1
            for chunk in chunks:
                if queued >= _FLUSH_CHUNKS:
                    self._flush(batch, scope, report, progress, writing)
                    part = _Part(doc, doc_id, digest, existing is not None, [], first=False)
                    batch, queued = [part], 0
                part.chunks.append(chunk)
                total += 1
                queued += 1
            part.total = total
            if queued >= _FLUSH_CHUNKS:
                self._flush(batch, scope, report, progress, writing)
                batch, queued = [], 0
        self._flush(batch, scope, report, progress, writing)
        for write in writing:
            write.result()
        report.seconds = time.perf_counter() - started
        return report

    def _flush(
        self,
        batch: list[_Part],
        scope: str,
        report: IngestReport,
        progress: IngestProgress,
        writing: list[Future[None]],
    ) -> None:
        if not batch:
            return
        texts = [_embedding_text(part.doc, chunk) for part in batch for chunk in part.chunks]
        progress.chunks_queued(len(texts))
        report.tokens += self.embedder.count_tokens(texts)
        vectors = self.embedder.embed(texts, self._settings.batch_size, progress.chunks_done)
        # Chroma writes while the next batch embeds; one write in flight keeps the order.
        for previous in writing:
            previous.result()
        writing[:] = [self._writer.submit(self._write, batch, vectors, scope)]
        for part in batch:
            report.chunks += len(part.chunks)
            if part.total is not None:
                (report.updated if part.replacing else report.added).append(str(part.doc.path))
                progress.file_done(str(part.doc.path), "updated" if part.replacing else "added")

    def _write(self, batch: list[_Part], vectors: list[list[float]], scope: str) -> None:
        collection = self._collection(scope, create=True)
        assert collection is not None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        # A file's old chunks go before its first new ones: those of the version it replaces, or
        # those an interrupted ingest of it left behind.
        stale = [part.doc_id for part in batch if part.first]
        ids: list[str] = []
        metadatas: list[dict[str, Any]] = []
        documents: list[str] = []
        for part in batch:
            ids += [f"{part.doc_id}:{chunk.index}" for chunk in part.chunks]
            documents += [chunk.text for chunk in part.chunks]
            metadatas += [_chunk_metadata(part.doc, part.doc_id, scope, chunk) for chunk in part.chunks]
        done = [part for part in batch if part.total is not None]
        with self._lock:
            client, records = self._ready()
            step = max(1, min(5000, int(client.get_max_batch_size())))
            if stale:
                collection.delete(where={"doc_id": {"$in": stale}})
            for start in range(0, len(ids), step):
                end = start + step
                collection.add(
                    ids=ids[start:end],
                    embeddings=vectors[start:end],
                    documents=documents[start:end],
                    metadatas=metadatas[start:end],
                )
            if self._keywords is not None:
                # After Chroma (the source of truth): a failure between the two leaves the index
                # behind, and the next sync catches it up.
                rows = [
                    (f"{part.doc_id}:{chunk.index}", part.doc_id, _heading(part.doc, chunk), chunk.text)
                    for part in batch
                    for chunk in part.chunks
                ]
                self._keywords.replace(
                    scope, stale, rows, [(part.doc_id, part.digest, part.total or 0) for part in done]
                )
            if not done:
                return
            records.upsert(
                ids=[part.doc_id for part in done],
                embeddings=[[1.0] for _ in done],
                documents=[part.doc.title for part in done],
                metadatas=[
                    {
                        "path": str(part.doc.path),
                        "title": part.doc.title,
                        "scope": scope,
                        "kind": part.doc.kind,
                        "chunks": part.total or 0,
                        "sha256": part.digest,
                        "ingested_at": now,
                    }
                    for part in done
                ],
            )

    # Documents --------------------------------------------------------------------------

    def documents(self, scope: str | None = None) -> list[DocumentInfo]:
        """Ingested files (of one scope, or all), by path."""
        with self._guarded(), self._lock:
            _, documents = self._ready()
            found = documents.get(where={"scope": scope} if scope else None, include=["metadatas"])
        docs = [_document_info(i, m) for i, m in zip(found["ids"], found["metadatas"] or [], strict=False)]
        return sorted(docs, key=lambda d: (d.scope, d.path))

    def remove(self, target: str, scope: str | None = None) -> list[DocumentInfo]:
        """Remove a document by id or path (a folder path removes everything under it)."""
        docs = self.documents(scope)
        as_path = str(Path(target).expanduser().resolve()) if not _is_id(target, docs) else None
        chosen = [
            d
            for d in docs
            if d.id == target
            or (as_path is not None and (d.path == as_path or d.path.startswith(as_path.rstrip("/") + "/")))
        ]
        with self._guarded(), self._lock:
            for doc in chosen:
                collection = self._collection(doc.scope, create=False)
                if collection is not None:
                    collection.delete(ids=[f"{doc.id}:{n}" for n in range(doc.chunks)])
                self._ready()[1].delete(ids=[doc.id])
                if self._keywords is not None:
                    self._keywords.remove(doc.scope, [doc.id])
        return chosen

    def find(self, target: str, scope: str | None = None) -> DocumentInfo | None:
        """The one ingested document `target` names: its id, its path, a `file://` URL of its path,
        or its file name when only one document has it. None when none or several match."""
        docs = self.documents(scope)
        if target.startswith("file://"):
            target = unquote(urlsplit(target).path)
        by_id = [d for d in docs if d.id == target]
        if by_id:
            return by_id[0]
        path = str(Path(target).expanduser().resolve())
        by_path = [d for d in docs if d.path == path] or [d for d in docs if Path(d.path).name == target]
        return by_path[0] if len(by_path) == 1 else None

    def document_text(self, doc: DocumentInfo) -> str:
        """A document's text as ingested, put back together from its chunks (their overlaps once)."""
        parts: list[str] = []
        before = ""
        for passage in self.passages([f"{doc.id}:{n}" for n in range(doc.chunks)]):
            skip = _overlap(before, passage.text)
            parts.append(passage.text[skip:] if skip else ("\n\n" if parts else "") + passage.text)
            before = passage.text
        return "".join(parts)

    def count(self) -> int:
        """Chunks stored, in every scope."""
        return sum(doc.chunks for doc in self.documents())

    # Search -----------------------------------------------------------------------------

    def query(self, query: str, scopes: Sequence[str], k: int) -> list[Passage]:
        """The `k` chunks closest to `query` within `scopes`, best first (blocking)."""
        with self._guarded():
            return self._query(query, scopes, k)

    def _query(self, query: str, scopes: Sequence[str], k: int) -> list[Passage]:
        collections = [
            (scope, found)
            for scope in dict.fromkeys(scopes)
            if (found := self._collection(scope, create=False)) is not None
        ]
        if not query.strip() or not collections:
            return []
        vector = self.embedder.embed([query])[0]
        keywords = self._keywords if self._settings.hybrid else None
        n = max(k, _CANDIDATES) if keywords is not None else k
        dense: list[Passage] = []
        with self._lock:
            for _, collection in collections:
                result = collection.query(
                    query_embeddings=[vector], n_results=n, include=["documents", "metadatas", "distances"]
                )
                dense += [
                    _passage(i, t, m, 1.0 - float(d))
                    for i, t, m, d in zip(
                        result["ids"][0],
                        (result["documents"] or [[]])[0],
                        (result["metadatas"] or [[]])[0],
                        (result["distances"] or [[]])[0],
                        strict=False,
                    )
                ]
        dense.sort(key=lambda p: p.score, reverse=True)
        if keywords is None:
            return dense[:k]
        if self._connection.remote and time.monotonic() - self._synced >= self._settings.keyword_sync_s:
            with self._lock:  # another process may have ingested or removed files on the server
                self._sync_keywords(prune=False)
        hits = [(scope, hit) for scope, _ in collections for hit in keywords.search(scope, query, n)]
        hits.sort(key=lambda pair: pair[1].score, reverse=True)
        hits = hits[:n]
        fused: dict[str, float] = {}
        for rank, passage in enumerate(dense[:n], start=1):
            fused[passage.id] = fused.get(passage.id, 0.0) + 1.0 / (_RRF_K + rank)
        for rank, (_, hit) in enumerate(hits, start=1):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (_RRF_K + rank)
        best = sorted(fused, key=lambda i: fused[i], reverse=True)[:k]
        by_id = {p.id: p for p in dense}
        bm25 = {hit.chunk_id: hit.score for _, hit in hits}
        scope_of = {hit.chunk_id: scope for scope, hit in hits}
        missing = [i for i in best if i not in by_id]
        if missing:
            by_id.update(self._scored(missing, scope_of, vector))
        # Two searches that know nothing of each other picking the same chunk first is evidence
        # of its relevance that does not depend on either one's scale (the engine uses it).
        agreed = dense[0].id if dense and hits and hits[0][1].chunk_id == dense[0].id else None
        return [
            replace(by_id[i], keyword=bm25.get(i), fused=fused[i], agreed=i == agreed)
            for i in best
            if i in by_id
        ]

    def _scored(self, ids: list[str], scope_of: dict[str, str], vector: list[float]) -> dict[str, Passage]:
        """Chunks found by their words only, with their cosine similarity to the query's vector."""
        found: dict[str, Passage] = {}
        for scope in dict.fromkeys(scope_of[i] for i in ids):
            collection = self._collection(scope, create=False)
            if collection is None:
                continue
            with self._lock:
                got = collection.get(
                    ids=[i for i in ids if scope_of[i] == scope],
                    include=["documents", "metadatas", "embeddings"],
                )
            embeddings = got["embeddings"] if got["embeddings"] is not None else []
            for i, t, m, e in zip(
                got["ids"], got["documents"] or [], got["metadatas"] or [], embeddings, strict=False
            ):
                found[i] = _passage(i, t, m, _cosine(vector, e))
        return found

    def _sync_keywords(self, prune: bool = True) -> None:
        """Bring the keyword index in step with Chroma's records: drop what Chroma no longer holds
        (or holds in another version), add what it holds that the index lacks. `prune`: also drop
        chunks of files whose ingest was cut short (only when connecting: an ingest in progress in
        this process has chunks written before its record)."""
        if self._keywords is None:
            self._keywords = KeywordIndex(self._keyword_path)
        index = self._keywords
        found = self._documents.get(include=["metadatas"])
        records = {i: dict(m or {}) for i, m in zip(found["ids"], found["metadatas"] or [], strict=False)}
        held = index.documents()
        for doc_id, have in held.items():
            meta = records.get(doc_id)
            if meta is None or meta.get("sha256") != have.sha256 or meta.get("scope") != have.scope:
                index.remove(have.scope, [doc_id])
        wanted: dict[str, list[str]] = {}
        for doc_id, meta in records.items():
            kept = held.get(doc_id)
            if kept is None or kept.sha256 != meta.get("sha256") or kept.scope != meta.get("scope"):
                wanted.setdefault(str(meta.get("scope", "")), []).append(doc_id)
        if prune:
            for scope in {doc.scope for doc in held.values()} | set(wanted):
                index.prune(scope)
        added = 0
        for scope, doc_ids in wanted.items():
            collection = self._collection(scope, create=False)
            if collection is None:
                continue
            for start in range(0, len(doc_ids), 64):
                part = doc_ids[start : start + 64]
                got = collection.get(where={"doc_id": {"$in": part}}, include=["documents", "metadatas"])
                rows = []
                for i, t, m in zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=False):
                    meta = dict(m or {})
                    heading = _heading_of(str(meta.get("title", "")), str(meta.get("location", "")))
                    rows.append((i, str(meta.get("doc_id", "")), heading, t or ""))
                done = [
                    (d, str(records[d].get("sha256", "")), int(records[d].get("chunks", 0))) for d in part
                ]
                index.replace(scope, part, rows, done)
                added += len(rows)
        if added:
            log.info("keyword index: %d chunks added from %s", added, self.where)
        self._synced = time.monotonic()

    def passages(self, ids: Sequence[str]) -> list[Passage]:
        """Passages by id, in the order asked (missing ones left out)."""
        if not ids:
            return []
        with self._guarded():
            return self._passages(ids)

    def _passages(self, ids: Sequence[str]) -> list[Passage]:
        doc_ids = list(dict.fromkeys(i.split(":", 1)[0] for i in ids))
        with self._lock:
            records = self._ready()[1].get(ids=doc_ids, include=["metadatas"])
        scopes = {str((m or {}).get("scope", "")) for m in records["metadatas"] or []}
        by_id: dict[str, Passage] = {}
        for scope in scopes:
            collection = self._collection(scope, create=False)
            if collection is None:
                continue
            with self._lock:
                found = collection.get(ids=list(ids), include=["documents", "metadatas"])
            for i, t, m in zip(
                found["ids"], found["documents"] or [], found["metadatas"] or [], strict=False
            ):
                by_id[i] = _passage(i, t, m, 0.0)
        return [by_id[i] for i in ids if i in by_id]

    async def search(self, query: str, scopes: Sequence[str], k: int) -> list[Passage]:
        """`query` off the event loop."""
        return await asyncio.to_thread(self.query, query, scopes, k)

    async def get(self, ids: Sequence[str]) -> list[Passage]:
        """`passages` off the event loop."""
        return await asyncio.to_thread(self.passages, ids)

    def _document(self, doc_id: str) -> DocumentInfo | None:
        with self._lock:
            found = self._ready()[1].get(ids=[doc_id], include=["metadatas"])
        if not found["ids"]:
            return None
        return _document_info(found["ids"][0], (found["metadatas"] or [{}])[0])


# Helpers -------------------------------------------------------------------------------


def _again(error: RetrievalError) -> RetrievalError:
    """A fresh copy of a stored failure: raising the same object again and again would grow its
    traceback each time (and threads would share it)."""
    return type(error)(str(error))


def _close(client: Any) -> None:
    """Let go of a client that failed (its HTTP session); a failure to close changes nothing."""
    close = getattr(client, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # already broken: what matters is that the next call builds a new one
        log.debug("closing a failed Chroma client", exc_info=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _embedding_text(doc: LoadedDocument, chunk: TextChunk) -> str:
    # The title and section give a chunk the context its own words often lack.
    return f"{_heading(doc, chunk)}\n{chunk.text}"


def _heading(doc: LoadedDocument, chunk: TextChunk) -> str:
    return _heading_of(doc.title, chunk.location)


def _heading_of(title: str, location: str) -> str:
    return f"{title} — {location}" if location else title


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = (sum(x * x for x in a) * sum(float(y) * float(y) for y in b)) ** 0.5
    return float(dot / norm) if norm else 0.0


def _keyword_path(connection: Connection, settings: Settings) -> Path:
    """Where the keyword index lives: in the embedded store's directory, beside Chroma's files; with
    a Chroma server, in this process's data directory (one file per server, database and
    collection), brought in step with the server's documents (`DocumentStore._sync_keywords`)."""
    name = settings.retrieval.collection
    if not connection.remote:
        return settings.chroma_dir / f"{name}-keywords.sqlite3"
    config = settings.retrieval
    tag = hashlib.sha256(
        f"{connection.where}\0{config.chroma_tenant}\0{config.chroma_database}\0{name}".encode()
    ).hexdigest()[:12]
    return settings.resolved_data_dir / f"keywords-{tag}.sqlite3"


def _chunk_metadata(doc: LoadedDocument, doc_id: str, scope: str, chunk: TextChunk) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "scope": scope,
        "path": str(doc.path),
        "title": doc.title,
        "kind": doc.kind,
        "location": chunk.location,
        "page": chunk.page if chunk.page is not None else -1,
        "index": chunk.index,
        "start": chunk.start,
    }


def _passage(chunk_id: str, text: str | None, meta: Any, score: float) -> Passage:
    meta = dict(meta or {})
    page = int(meta.get("page", -1))
    return Passage(
        id=chunk_id,
        text=text or "",
        score=score,
        title=str(meta.get("title", "")),
        path=str(meta.get("path", "")),
        location=str(meta.get("location", "")),
        scope=str(meta.get("scope", "")),
        document_id=str(meta.get("doc_id", "")),
        page=page if page >= 0 else None,
    )


def _document_info(doc_id: str, meta: Any) -> DocumentInfo:
    meta = dict(meta or {})
    return DocumentInfo(
        id=doc_id,
        path=str(meta.get("path", "")),
        title=str(meta.get("title", "")),
        scope=str(meta.get("scope", "")),
        kind=str(meta.get("kind", "")),
        chunks=int(meta.get("chunks", 0)),
        sha256=str(meta.get("sha256", "")),
        ingested_at=str(meta.get("ingested_at", "")),
    )


def _overlap(before: str, chunk: str) -> int:
    """How many characters at the start of `chunk` repeat the end of the chunk `before` it (the
    chunks' overlap; 0 when they share less than 20)."""
    probe = chunk[:20]
    at = before.find(probe) if len(probe) == 20 else -1
    while at >= 0:  # the first place that fits is the longest overlap
        if chunk.startswith(before[at:]):
            return len(before) - at
        at = before.find(probe, at + 1)
    return 0


def _is_id(target: str, docs: list[DocumentInfo]) -> bool:
    return any(d.id == target for d in docs)
