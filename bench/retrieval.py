"""Retrieval benchmark: ingestion throughput and query latency at 1k and 10k chunks.

    python bench/retrieval.py [--large 10000] [--queries 200] [--json]
    python bench/retrieval.py --one-file-mb 50 [--json]

Generates Markdown files (about ten ~800-character chunks each) in a temporary directory and
ingests them through `DocumentStore.ingest` (load, split, embed, write) into a fresh embedded
Chroma store; then times `DocumentStore.query` (the query embedding included; hybrid as shipped,
and by meaning alone as `dense_query_*`) at 1k chunks, grows the store to `--large` chunks and
times it again. A table by default; one JSON object with --json.

With --one-file-mb N it instead ingests one Markdown file of N MB (streamed in bounded memory): the
chunks/s and tokens/s, the process's resident memory before ingesting (the embedding model loaded)
and its peak during the ingestion.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import load_settings
from retrieval.store import DocumentStore

WORDS = (
    "shipment carrier warehouse invoice customs tracking parcel route depot pallet freight manifest "
    "delivery driver schedule window signature refund claim damage insurance label barcode scanner "
    "dispatch courier region zone hub transfer export import duty tariff broker clearance hold "
    "release priority express standard economy weight volume dimension surcharge fuel rate quote "
    "contract account billing cycle payment terms credit limit approval manager team policy audit "
    "incident outage latency error retry timeout webhook endpoint token secret rotation backup "
    "restore replica failover deploy release rollback flag experiment metric alert dashboard on-call"
).split()


def _paragraph(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = rng.choices(WORDS, k=rng.randint(8, 18))
        out.append(" ".join(words).capitalize() + f" {rng.randint(1, 999)}.")
    return " ".join(out)


def _write_files(folder: Path, first: int, count: int, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(first, first + count):
        sections = [f"# Document {n}"]
        for s in range(10):
            sections.append(f"## Section {s}\n\n{_paragraph(rng, 6)}")
        (folder / f"doc{n:05d}.md").write_text("\n\n".join(sections) + "\n")


def _latencies(store: DocumentStore, queries: list[str]) -> tuple[float, float]:
    store.query(queries[0], ["global"], 4)  # warm-up
    times = []
    for query in queries:
        started = time.perf_counter()
        store.query(query, ["global"], 4)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


class _RandomVectors:
    """Stands in for the embedder while chunks are ingested: unit vectors, no model."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.rng = random.Random(11)

    def count_tokens(self, texts: list[str]) -> int:
        return self.real.count_tokens(texts)

    def embed(self, texts: list[str], batch_size: int = 16, done: Any = None) -> list[list[float]]:
        if len(texts) == 1:  # a query
            return self.real.embed(texts)
        vectors = []
        for _ in texts:
            v = [self.rng.gauss(0.0, 1.0) for _ in range(384)]
            norm = sum(x * x for x in v) ** 0.5
            vectors.append([x / norm for x in v])
        if done is not None:
            done(len(texts))
        return vectors


def _random_vectors_for_chunks(store: DocumentStore) -> None:
    fake = _RandomVectors(store.embedder)
    type(store).embedder = property(lambda self: fake)  # type: ignore[method-assign,assignment]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one_file(megabytes: float, as_json: bool) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="chinwag-bench-") as tmp:
        root = Path(tmp)
        path = root / "big.md"
        size, n = 0, 0
        with path.open("w") as out:  # written in sections, so the generator's memory stays small
            while size < megabytes * 1_000_000:
                section = f"## Section {n}\n\n{_paragraph(rng, 6)}\n\n"
                out.write(section)
                size += len(section)
                n += 1
        store = DocumentStore.open(load_settings(data_dir=root / "data"))
        store.embedder  # noqa: B018 - load the model before measuring
        store.embedder.embed(["warm up"])
        before = _rss_mb()
        report = store.ingest([path])
        # ru_maxrss is the peak of the whole process, in KiB on Linux.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "file_mb": round(size / 1_000_000, 1),
            "chunks": report.chunks,
            "seconds": round(report.seconds, 1),
            "chunks_per_s": round(report.chunks / report.seconds, 1),
            "tokens_per_s": round(report.tokens / report.seconds),
            "rss_before_mb": round(before),
            "peak_rss_mb": round(peak),
            "embedding_runtime": store.embedder.runtime,
        }
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<20} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=10_000, help="chunks in the large store")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--one-file-mb", type=float, default=None, help="ingest one file this large")
    parser.add_argument(
        "--random-vectors",
        action="store_true",
        help="store random vectors instead of embedding the chunks (queries are still embedded): "
        "query times without the ingestion's hours on a slow machine; its ingest figures mean nothing",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.one_file_mb:
        _one_file(args.one_file_mb, args.json)
        return

    rng = random.Random(7)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(5, 12))) + "?" for _ in range(args.queries)]
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="chinwag-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root / "data")
        store = DocumentStore.open(settings)
        store.embedder  # noqa: B018 - load (and, the first time, export) the model before timing
        result["embedding_runtime"] = store.embedder.runtime
        if args.random_vectors:
            _random_vectors_for_chunks(store)

        _write_files(root / "small", 0, 100, rng)
        report = store.ingest([root / "small"])
        result["ingest_files"] = len(report.added)
        result["ingest_chunks"] = report.chunks
        result["ingest_seconds"] = report.seconds
        result["ingest_chunks_per_s"] = report.chunks / report.seconds
        result["ingest_tokens_per_s"] = report.tokens / report.seconds
        result["chunks_1k"] = store.count()
        result["query_p50_ms_1k"], result["query_p95_ms_1k"] = _latencies(store, queries)
        # The same by meaning alone (retrieval.hybrid = false), for what the keyword search costs.
        settings.retrieval.hybrid = False
        result["dense_query_p50_ms_1k"], result["dense_query_p95_ms_1k"] = _latencies(store, queries)
        settings.retrieval.hybrid = True

        per_file = max(1, report.chunks // 100)
        missing = max(0, args.large - store.count())
        _write_files(root / "large", 100, (missing + per_file - 1) // per_file, rng)
        grown = store.ingest([root / "large"])
        result["grow_seconds"] = grown.seconds
        result["chunks_10k"] = store.count()
        result["query_p50_ms_10k"], result["query_p95_ms_10k"] = _latencies(store, queries)
        # The same by meaning alone (retrieval.hybrid = false), for what the keyword search costs.
        settings.retrieval.hybrid = False
        result["dense_query_p50_ms_10k"], result["dense_query_p95_ms_10k"] = _latencies(store, queries)
        settings.retrieval.hybrid = True

    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
        return
    rows = [
        ("embedding runtime", result["embedding_runtime"]),
        ("ingest", f"{result['ingest_files']} files, {result['ingest_chunks']} chunks"),
        ("ingest throughput", f"{result['ingest_chunks_per_s']:.1f} chunks/s"),
        ("embedded tokens", f"{result['ingest_tokens_per_s']:,.0f} tokens/s"),
        (f"query at {result['chunks_1k']:,} chunks", _p(result, "1k")),
        (f"query at {result['chunks_10k']:,} chunks", _p(result, "10k")),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _p(result: dict[str, Any], size: str) -> str:
    return f"p50 {result[f'query_p50_ms_{size}']:.1f} ms, p95 {result[f'query_p95_ms_{size}']:.1f} ms"


if __name__ == "__main__":
    main()
