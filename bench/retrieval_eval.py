"""Retrieval quality: hit@1, hit@5 and MRR on a written corpus, and end-to-end answer accuracy.

    python bench/retrieval_eval.py [--answers 12] [--model NAME] [--json]

The corpus is `bench/eval_corpus/` (30 documents we wrote: Markdown, text, HTML, Python) and its
questions `bench/eval_questions.json` (question, document, the passage that answers it, the fact,
and its kind: `paraphrase`, or one that hinges on a `name`, an `acronym`, a number in a `table` or
a `list`, or one sentence of a `long` document). Each question is searched by meaning alone
(`dense`) and hybrid (`retrieval.hybrid`, as shipped), and the scores are given for each kind.
A question is a hit at rank r when the r-th retrieved chunk comes from its document and contains
its passage. Answer accuracy asks the chat model (the default one unless --model) `--answers`
questions, spread over the corpus, through the engine with the real store, and checks that the
reply contains the expected fact. A table by default; one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.engine import Engine
from bot.types import Incoming, TurnDone
from config import Settings, load_settings
from retrieval.store import DocumentStore, Passage
from storage import SqlHistory

CORPUS = Path(__file__).resolve().parent / "eval_corpus"
QUESTIONS = Path(__file__).resolve().parent / "eval_questions.json"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _rank(passages: list[Passage], doc: str, passage: str) -> int | None:
    wanted = _norm(passage)
    for rank, found in enumerate(passages, start=1):
        if Path(found.path).name == doc and wanted in _norm(found.text):
            return rank
    return None


async def _answers(settings: Settings, store: DocumentStore, questions: list[dict[str, Any]]) -> list[bool]:
    from bot.inference.local import TransformersModel

    model = await asyncio.to_thread(
        TransformersModel.load, settings.model, settings.model_cache_dir, progress=False
    )
    history = await SqlHistory.open(settings)
    try:
        engine = Engine(model, history, settings, store)
        results = []
        for n, item in enumerate(questions):
            incoming = Incoming(text=item["question"], platform="bench", channel="eval", thread=str(n))
            done = [e async for e in engine.handle(incoming)][-1]
            text = done.text if isinstance(done, TurnDone) else ""
            ok = item["answer"].lower() in text.lower()
            results.append(ok)
            print(f"{'ok  ' if ok else 'MISS'} {item['question']} -> {text[:160]!r}", file=sys.stderr)
        return results
    finally:
        await history.close()


def _scores(ranks: list[int | None]) -> dict[str, float]:
    return {
        "hit_at_1": sum(r == 1 for r in ranks) / len(ranks),
        "hit_at_5": sum(r is not None for r in ranks) / len(ranks),
        "mrr": sum(1 / r for r in ranks if r) / len(ranks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=12, help="questions answered by the model (0: skip)")
    parser.add_argument("--model", default=None, help="chat model for the answers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    questions: list[dict[str, Any]] = json.loads(QUESTIONS.read_text())
    result: dict[str, Any] = {"questions": len(questions)}
    with tempfile.TemporaryDirectory(prefix="chinwag-eval-") as tmp:
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            model={"name": args.model},
            generation={"temperature": 0.0, "max_tokens": 160},
        )
        store = DocumentStore.open(settings)
        report = store.ingest([CORPUS])
        result["documents"] = len(report.added)
        result["chunks"] = report.chunks
        result["skipped"] = len(report.skipped)
        for path, reason in report.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)

        for mode in ("dense", "hybrid"):
            settings.retrieval.hybrid = mode == "hybrid"
            ranks = []
            started = time.perf_counter()
            for item in questions:
                passages = store.query(item["question"], ["global"], 5)
                ranks.append(_rank(passages, item["doc"], item["passage"]))
            result[f"{mode}_query_ms_mean"] = (time.perf_counter() - started) / len(questions) * 1000
            prefix = "" if mode == "hybrid" else "dense_"
            result.update({prefix + k: v for k, v in _scores(ranks).items()})
            for kind in sorted({item.get("kind", "paraphrase") for item in questions}):
                mine = [r for item, r in zip(questions, ranks, strict=True) if item.get("kind") == kind]
                for key, value in _scores(mine).items():
                    result[f"{prefix}{key}_{kind}"] = value
            for item, rank in zip(questions, ranks, strict=True):
                if rank != 1:
                    print(f"{mode} rank {rank}: {item['question']} ({item['doc']})", file=sys.stderr)
        result["query_ms_mean"] = result.pop("hybrid_query_ms_mean")

        if args.answers:
            # Spread over the corpus: every n-th question.
            subset = questions[:: max(1, len(questions) // args.answers)][: args.answers]
            correct = asyncio.run(_answers(settings, store, subset))
            result["answered"] = len(subset)
            result["answer_accuracy"] = sum(correct) / len(correct)
            result["model"] = settings.model.name
        else:
            result["answer_accuracy"] = None

    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
        return
    rows = [
        ("corpus", f"{result['documents']} documents, {result['chunks']} chunks, {len(questions)} questions"),
        ("", "dense / hybrid"),
    ]
    kinds = sorted({item.get("kind", "paraphrase") for item in questions})
    for suffix in ["", *(f"_{kind}" for kind in kinds)]:
        for key, label in (("hit_at_1", "hit@1"), ("hit_at_5", "hit@5"), ("mrr", "MRR@5")):
            dense, hybrid = result[f"dense_{key}{suffix}"], result[f"{key}{suffix}"]
            rows.append((f"{label}{suffix.replace('_', ' ')}", f"{dense:.3f} / {hybrid:.3f}"))
    rows.append(
        ("mean query time", f"{result['dense_query_ms_mean']:.1f} / {result['query_ms_mean']:.1f} ms")
    )
    if result["answer_accuracy"] is not None:
        rows.append(
            (
                "answer accuracy",
                f"{result['answer_accuracy']:.3f} ({result['answered']} questions, {result['model']})",
            )
        )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
