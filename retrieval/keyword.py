"""KeywordIndex: BM25 search over the chunks' words, in SQLite FTS5 beside the Chroma data.

Dense retrieval alone misses questions that hinge on one word the embedding does not weigh: a
name, an acronym, a number in a table. FTS5's `bm25()` finds those; `DocumentStore` fuses both
rankings. The installed chromadb has sparse (BM25) vectors but no local search over them
("Search is not implemented for Local Chroma"), so the words live in SQLite, which Python ships.

Each scope has a table of its own, as each has a Chroma collection of its own: a keyword query
names one scope's table and cannot reach another's. A `documents` table records which version
(content hash) of each file the index holds, so the store can bring the index in step with Chroma
(`DocumentStore.sync_keywords`) after an upgrade, a lost file or another process's ingest.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Words that carry no meaning for a keyword search: left out of the query so that the search
# stays about the question's own terms (BM25 would weigh them low anyway, but still scan them).
_STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being below between
    both but by can could did do does doing done down during each few for from further get gets got
    had has have having he her here hers him his how i if in into is it its itself just me more most
    my no nor not of off on once only or other our ours out over own same she should so some such
    than that the their theirs them then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
# In a large table, a word in more than this share of the chunks is left out of the query: it
# tells the chunks apart hardly at all, and its long list of chunks is most of a query's cost.
_COMMON_SHARE = 0.2
_COMMON_FROM = 1000  # chunks in a table before words are left out for being common


@dataclass(frozen=True)
class KeywordHit:
    """A chunk that matched a keyword query: its id and its BM25 score (higher is better)."""

    chunk_id: str
    score: float


@dataclass(frozen=True)
class IndexedDocument:
    """What the keyword index holds of one file."""

    scope: str
    sha256: str
    chunks: int


def query_terms(text: str) -> list[str]:
    """The words of a question a keyword search looks for (lowercase, stopwords out, in order)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def _stems(word: str) -> list[str]:
    """Forms Porter's stemmer may reduce `word` to, longest first."""
    forms = [word]
    if word.endswith("y"):
        forms.append(word[:-1] + "i")
    forms += [word[:n] for n in range(len(word) - 1, max(2, len(word) - 5), -1)]
    return forms


def _table(scope: str) -> str:
    return "kw_" + hashlib.sha256(scope.encode()).hexdigest()[:16]


class KeywordIndex:
    """Chunks' words in SQLite FTS5, one table per scope; thread-safe, blocking."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # One connection shared under a lock: the store calls from its writer and query threads.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS documents "
            "(doc_id TEXT PRIMARY KEY, scope TEXT NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL)"
        )
        self._tables: set[str] = {
            row[0]
            for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'kw\\_%' ESCAPE '\\' AND sql LIKE '%fts5(%'"
            )
        }

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _ensure(self, scope: str) -> str:
        table = _table(scope)
        if table not in self._tables:
            # porter: "holidays" finds "holiday"; unicode61 folds case and accents.
            self._db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5("
                "chunk_id UNINDEXED, doc_id UNINDEXED, heading, body, tokenize='porter unicode61')"
            )
            self._db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table}_vocab USING fts5vocab({table}, 'row')"
            )
            self._tables.add(table)
        return table

    def replace(
        self,
        scope: str,
        drop: Sequence[str],
        rows: Iterable[tuple[str, str, str, str]],
        done: Sequence[tuple[str, str, int]] = (),
    ) -> None:
        """In one transaction: remove the chunks of the documents `drop`, add `rows` (chunk id,
        document id, heading, text), and record `done` (document id, content hash, chunks) as
        held in full."""
        with self._lock:
            table = self._ensure(scope)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if drop:
                    marks = ",".join("?" * len(drop))
                    self._db.execute(f"DELETE FROM {table} WHERE doc_id IN ({marks})", list(drop))
                self._db.executemany(
                    f"INSERT INTO {table} (chunk_id, doc_id, heading, body) VALUES (?, ?, ?, ?)", rows
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO documents (doc_id, scope, sha256, chunks) VALUES (?, ?, ?, ?)",
                    [(doc_id, scope, sha, chunks) for doc_id, sha, chunks in done],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def remove(self, scope: str, doc_ids: Sequence[str]) -> None:
        """Forget these documents of `scope`: their chunks and their records."""
        if not doc_ids:
            return
        with self._lock:
            marks = ",".join("?" * len(doc_ids))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                table = _table(scope)
                if table in self._tables:
                    self._db.execute(f"DELETE FROM {table} WHERE doc_id IN ({marks})", list(doc_ids))
                self._db.execute(f"DELETE FROM documents WHERE doc_id IN ({marks})", list(doc_ids))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def documents(self) -> dict[str, IndexedDocument]:
        """The documents the index holds in full, by id."""
        with self._lock:
            rows = self._db.execute("SELECT doc_id, scope, sha256, chunks FROM documents").fetchall()
        return {row[0]: IndexedDocument(row[1], row[2], row[3]) for row in rows}

    def prune(self, scope: str) -> int:
        """Drop chunks of `scope` whose document is not recorded (an ingest cut short); how many."""
        with self._lock:
            table = _table(scope)
            if table not in self._tables:
                return 0
            cursor = self._db.execute(
                f"DELETE FROM {table} WHERE doc_id NOT IN (SELECT doc_id FROM documents WHERE scope = ?)",
                (scope,),
            )
            return cursor.rowcount

    def count(self, scope: str) -> int:
        """Chunks indexed in `scope`."""
        with self._lock:
            table = _table(scope)
            if table not in self._tables:
                return 0
            return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def search(self, scope: str, query: str, k: int) -> list[KeywordHit]:
        """The `k` chunks of `scope` that best match the words of `query` (BM25), best first."""
        terms = query_terms(query)
        table = _table(scope)
        if not terms or k <= 0 or table not in self._tables:
            return []
        with self._lock:
            terms = self._rare(table, terms)
            if not terms:
                return []
            # Any of the words (OR): BM25 ranks chunks holding more, and rarer, ones first. Each
            # word quoted, so FTS5's query syntax (AND, NEAR, -, *) in a question is taken literally.
            match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
            rows = self._db.execute(
                f"SELECT chunk_id, bm25({table}) FROM {table} WHERE {table} MATCH ? "
                f"ORDER BY bm25({table}) LIMIT ?",
                (match, k),
            ).fetchall()
        # FTS5's bm25() is negative, lower is better: flipped so that higher is better.
        return [KeywordHit(row[0], -float(row[1])) for row in rows]

    def _rare(self, table: str, terms: list[str]) -> list[str]:
        """`terms` without those in more than _COMMON_SHARE of a large table's chunks."""
        chunks = int(self._db.execute(f"SELECT count(*) FROM {table}_docsize").fetchone()[0])
        if chunks < _COMMON_FROM:
            return terms
        # The vocabulary holds stems ("deliveri", "warehous"): a word's stem is taken to be the
        # longest of its beginnings (short of a few letters, y read as i) that the vocabulary has.
        forms = {term: _stems(term) for term in terms}
        wanted = sorted({form for found in forms.values() for form in found})
        marks = ",".join("?" * len(wanted))
        query = f"SELECT term, doc FROM {table}_vocab WHERE term IN ({marks})"
        counts = dict(self._db.execute(query, wanted).fetchall())
        kept = []
        for term, found in forms.items():
            stem = next((form for form in found if form in counts), None)
            if stem is None or counts[stem] <= chunks * _COMMON_SHARE:
                kept.append(term)
        return kept
