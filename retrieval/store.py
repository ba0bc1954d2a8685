"""DocumentStore: ingested documents as embedded chunks in Chroma, searched within scopes.

Each scope's chunks (vectors, text, where each came from) live in a collection of their own, and
`<name>_documents` holds one record per ingested file (path, scope, content hash, chunk count) so
that re-ingesting an unchanged file costs one lookup. Chroma results become `Passage` objects here;
nothing of Chroma leaves this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.errors import RetrievalError
from bot.seams.retriever import GLOBAL_SCOPE
from config import Settings
from retrieval.chunking import TextChunk, iter_chunks
from retrieval.embeddings import Embedder, EmbeddingError, chroma_embedding_function, shared_embedder
from retrieval.loaders import LoadedDocument, LoadError, check_regular, iter_files, load

log = logging.getLogger(__name__)

# Chunks embedded and written together; large enough to batch well, small enough to show progress.
_FLUSH_CHUNKS = 256


@dataclass(frozen=True)
class Passage:
    """A chunk of a document with its similarity to a query (cosine, -1..1)."""

    id: str
    text: str
    score: float
    title: str
    path: str
    location: str
    scope: str
    document_id: str
    page: int | None = None


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

    def __init__(self, client: Any, settings: Settings) -> None:
        self._client = client
        self._settings = settings.retrieval
        self._embedder_args = (
            settings.retrieval.embedding_model,
            settings.model_cache_dir,
            settings.model.threads,
        )
        self._lock = threading.RLock()
        self._collections: dict[str, Any] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chinwag-chroma-write")
        name = self._settings.collection
        model = self._settings.embedding_model
        self._documents = client.get_or_create_collection(
            f"{name}_documents", metadata={"embedding_model": model}, embedding_function=None
        )
        built_with = (self._documents.metadata or {}).get("embedding_model")
        if built_with and built_with != model:
            raise RetrievalError(
                f"The collection {name!r} was built with the embedding model {built_with!r}, not "
                f"{model!r}: set retrieval.embedding_model back, or use another "
                "retrieval.collection and ingest again"
            )

    def collection_name(self, scope: str) -> str:
        """The Chroma collection holding one scope's chunks."""
        slug = re.sub(r"[^A-Za-z0-9]+", "", scope)[:32] or "scope"
        tag = hashlib.sha256(scope.encode()).hexdigest()[:8]
        return f"{self._settings.collection}-{slug}-{tag}"

    def _collection(self, scope: str, create: bool) -> Any | None:
        with self._lock:
            found = self._collections.get(scope)
            if found is not None:
                return found
            name = self.collection_name(scope)
            if create:
                # We embed ourselves (batched, with progress); the registered function lets
                # Chroma, and any other client of the collection, embed the same way offline.
                found = self._client.get_or_create_collection(
                    name,
                    metadata={"hnsw:space": "cosine", "scope": scope},
                    embedding_function=chroma_embedding_function(*self._embedder_args),
                )
            else:
                try:
                    found = self._client.get_collection(
                        name, embedding_function=chroma_embedding_function(*self._embedder_args)
                    )
                except Exception:  # not created yet: this scope has no documents
                    return None
            self._collections[scope] = found
            return found

    @classmethod
    def open(cls, settings: Settings) -> DocumentStore:
        """The store the settings name: a Chroma server by URL, else an embedded one in the data dir."""
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as error:  # pragma: no cover - a dependency
            raise RetrievalError(f"chromadb is not installed: {error}") from error
        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        url = settings.retrieval.chroma_url
        try:
            if url:
                from urllib.parse import urlparse

                parsed = urlparse(url)
                client = chromadb.HttpClient(
                    host=parsed.hostname or "localhost",
                    port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https",
                    settings=chroma_settings,
                )
            else:
                # Its files hold the documents' text: readable by the owner only, like the data dir.
                settings.chroma_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
        except Exception as error:  # any failure to reach the store reads the same
            where = url or settings.chroma_dir
            raise RetrievalError(f"Could not open the document store at {where}: {error}") from error
        return cls(client, settings)

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
        progress = progress or IngestProgress()
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
        step = max(1, min(5000, int(self._client.get_max_batch_size())))
        with self._lock:
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
            if not done:
                return
            self._documents.upsert(
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
        with self._lock:
            found = self._documents.get(where={"scope": scope} if scope else None, include=["metadatas"])
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
        with self._lock:
            for doc in chosen:
                collection = self._collection(doc.scope, create=False)
                if collection is not None:
                    collection.delete(ids=[f"{doc.id}:{n}" for n in range(doc.chunks)])
                self._documents.delete(ids=[doc.id])
        return chosen

    def count(self) -> int:
        """Chunks stored, in every scope."""
        return sum(doc.chunks for doc in self.documents())

    # Search -----------------------------------------------------------------------------

    def query(self, query: str, scopes: Sequence[str], k: int) -> list[Passage]:
        """The `k` chunks closest to `query` within `scopes`, best first (blocking)."""
        collections = [c for c in (self._collection(s, create=False) for s in dict.fromkeys(scopes)) if c]
        if not query.strip() or not collections:
            return []
        vector = self.embedder.embed([query])[0]
        found: list[Passage] = []
        with self._lock:
            for collection in collections:
                result = collection.query(
                    query_embeddings=[vector], n_results=k, include=["documents", "metadatas", "distances"]
                )
                found += [
                    _passage(i, t, m, 1.0 - float(d))
                    for i, t, m, d in zip(
                        result["ids"][0],
                        (result["documents"] or [[]])[0],
                        (result["metadatas"] or [[]])[0],
                        (result["distances"] or [[]])[0],
                        strict=False,
                    )
                ]
        return sorted(found, key=lambda p: p.score, reverse=True)[:k]

    def passages(self, ids: Sequence[str]) -> list[Passage]:
        """Passages by id, in the order asked (missing ones left out)."""
        if not ids:
            return []
        doc_ids = list(dict.fromkeys(i.split(":", 1)[0] for i in ids))
        with self._lock:
            records = self._documents.get(ids=doc_ids, include=["metadatas"])
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
            found = self._documents.get(ids=[doc_id], include=["metadatas"])
        if not found["ids"]:
            return None
        return _document_info(found["ids"][0], (found["metadatas"] or [{}])[0])


# Helpers -------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _embedding_text(doc: LoadedDocument, chunk: TextChunk) -> str:
    # The title and section give a chunk the context its own words often lack.
    heading = f"{doc.title} — {chunk.location}" if chunk.location else doc.title
    return f"{heading}\n{chunk.text}"


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


def _is_id(target: str, docs: list[DocumentInfo]) -> bool:
    return any(d.id == target for d in docs)
