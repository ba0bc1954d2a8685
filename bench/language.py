"""Language tasks' quality and time: summaries, action items and translations through the engine.

    python bench/language.py [--model NAME] [--threads N] [--long N] [--sentences N]
                             [--langs fr,de,es,ja] [--skip summaries,actions,translate] [--json]

The set is bench/language_data.py: 12 short threads (11-14 messages) and 3 long ones (150, 300 and
450 messages: the short ones spread through a day's chatter; the 450-message one is longer than the
8,192-token window), and 40 sentences with references in French, German, Spanish and Japanese.

- key_point_recall: of the thread's key points, those the summary states (keyword groups, see
  language_data), averaged over threads; separately for short and long threads.
- rouge_l: ROUGE-L F1 (rouge-score, stemmed) of the summary against a reference summary.
- actions: well_formed (answers that fit the schema, of all asked), precision and recall of items
  (an item matches a gold one when its `what` holds one of the gold keywords), who_precision and
  when_precision (of matched items that name a person / a date, those that are right).
- chrF per language (sacrebleu, corpus level).
- seconds: per summary, per action list, per translation; for the long threads, each one's.

Every task runs greedy through the real engine on a temporary SQLite history. A table by default;
one JSON object with --json. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.language_data import SENTENCES, THREADS, Thread
from bot.engine import Engine
from bot.types import Incoming, Notice, SourceMessage, TurnDone, TurnFailed
from config import load_settings
from storage import SqlHistory

START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # a Monday


def source(thread: Thread) -> tuple[SourceMessage, ...]:
    return tuple(
        SourceMessage(text, author=author, id=str(n), timestamp=START + timedelta(minutes=n))
        for n, (author, text) in enumerate(thread.messages)
    )


async def run_task(
    engine: Engine, text: str, thread: str, src: tuple[SourceMessage, ...] | None
) -> dict[str, Any]:
    started = time.perf_counter()
    incoming = Incoming(
        text=text, platform="bench", channel="language", thread=thread, source=src, source_label="the thread"
    )
    parts = 0
    result: dict[str, Any] = {"ok": False, "text": "", "metadata": {}}
    async for event in engine.handle(incoming):
        if isinstance(event, Notice) and "part" in event.text:
            parts += 1
        elif isinstance(event, TurnDone):
            result = {"ok": True, "text": event.text, "metadata": event.metadata}
        elif isinstance(event, TurnFailed):
            result = {"ok": False, "text": event.message, "metadata": {}}
    result["seconds"] = time.perf_counter() - started
    result["parts"] = parts
    return result


def point_stated(summary: str, point: list[list[str]]) -> bool:
    low = summary.lower()
    return all(any(word in low for word in group) for group in point)


def score_actions(
    items: list[dict[str, Any]], gold: list[tuple[list[str], str | None, str | None]]
) -> dict[str, Any]:
    matched_gold: set[int] = set()
    matched = 0
    who_named = who_right = when_named = when_right = 0
    for item in items:
        what = str(item.get("what") or "").lower()
        hit = next(
            (i for i, g in enumerate(gold) if i not in matched_gold and any(k in what for k in g[0])), None
        )
        if hit is None:
            continue
        matched += 1
        matched_gold.add(hit)
        _, who, when = gold[hit]
        if item.get("who"):
            who_named += 1
            who_right += who is not None and str(item["who"]).lower() == who.lower()
        if item.get("when"):
            when_named += 1
            when_right += item["when"] == when
    return {
        "predicted": len(items),
        "gold": len(gold),
        "matched": matched,
        "who_named": who_named,
        "who_right": who_right,
        "when_named": when_named,
        "when_right": when_right,
    }


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 3) if den else None


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    from bot.inference.local import TransformersModel

    short = [t for t in THREADS if len(t.messages) < 50][: args.threads]
    long = [t for t in THREADS if len(t.messages) >= 50][: args.long]
    skip = set(args.skip.split(",")) if args.skip else set()
    langs = [lang for lang in args.langs.split(",") if lang]
    sentences = SENTENCES[: args.sentences]
    with tempfile.TemporaryDirectory(prefix="chinwag-language-") as tmp:
        settings = load_settings(data_dir=Path(tmp) / "data", model={"name": args.model})
        loading = time.perf_counter()
        model = await asyncio.to_thread(
            TransformersModel.load, settings.model, settings.model_cache_dir, progress=False
        )
        print(f"model {settings.model.name} loaded in {time.perf_counter() - loading:.1f} s", file=sys.stderr)
        history = await SqlHistory.open(settings)
        engine = Engine(model, history, settings)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        summaries: list[dict[str, Any]] = []
        actions: list[dict[str, Any]] = []
        translations: dict[str, list[tuple[str, str, float]]] = {lang: [] for lang in langs}
        try:
            for thread in [*short, *long]:
                kind = "long" if thread in long else "short"
                if "summaries" not in skip:
                    done = await run_task(engine, "/summarize", f"s-{thread.name}", source(thread))
                    stated = [point_stated(done["text"], p) for p in thread.points]
                    rouge = (
                        scorer.score(thread.reference, done["text"])["rougeL"].fmeasure if done["ok"] else 0.0
                    )
                    row = {
                        "thread": thread.name,
                        "kind": kind,
                        "messages": len(thread.messages),
                        "ok": done["ok"],
                        "recall": sum(stated) / len(stated),
                        "rouge_l": rouge,
                        "seconds": done["seconds"],
                        "parts": done["metadata"].get("parts", 1),
                    }
                    summaries.append(row)
                    print(
                        f"summary {thread.name}: recall {row['recall']:.2f} rouge {rouge:.2f} "
                        f"{done['seconds']:.0f} s, {row['parts']} part(s)\n  {done['text'][:300]!r}",
                        file=sys.stderr,
                    )
                if "actions" not in skip and thread.actions:
                    done = await run_task(engine, "/actions", f"a-{thread.name}", source(thread))
                    items = done["metadata"].get("action_items", []) if done["ok"] else []
                    row = {
                        "thread": thread.name,
                        "kind": kind,
                        "well_formed": done["ok"],
                        "seconds": done["seconds"],
                        **score_actions(items, thread.actions),
                    }
                    actions.append(row)
                    print(f"actions {thread.name}: {row}\n  {done['text'][:300]!r}", file=sys.stderr)
            if "translate" not in skip:
                for lang in langs:
                    for n, sentence in enumerate(sentences):
                        done = await run_task(
                            engine, f"/translate {lang} {sentence['en']}", f"t-{lang}-{n}", None
                        )
                        translations[lang].append(
                            (done["text"] if done["ok"] else "", sentence[lang], done["seconds"])
                        )
                        print(f"translate {lang} {n}: {done['text']!r}", file=sys.stderr)
        finally:
            await history.close()
            model.close()

    result: dict[str, Any] = {"model": settings.model.name, "date": datetime.now(UTC).date().isoformat()}
    for kind in ("short", "long"):
        rows = [r for r in summaries if r["kind"] == kind]
        if rows:
            result[f"summaries_{kind}"] = {
                "threads": len(rows),
                "key_point_recall": round(sum(r["recall"] for r in rows) / len(rows), 3),
                "rouge_l": round(sum(r["rouge_l"] for r in rows) / len(rows), 3),
                "seconds_mean": round(sum(r["seconds"] for r in rows) / len(rows), 1),
                "failed": sum(not r["ok"] for r in rows),
            }
    if any(r["kind"] == "long" for r in summaries):
        result["long_threads"] = [
            {
                "messages": r["messages"],
                "parts": r["parts"],
                "seconds": round(r["seconds"], 1),
                "recall": round(r["recall"], 2),
            }
            for r in summaries
            if r["kind"] == "long"
        ]
    if actions:
        total = {
            k: sum(r[k] for r in actions)
            for k in ("predicted", "gold", "matched", "who_named", "who_right", "when_named", "when_right")
        }
        result["actions"] = {
            "threads": len(actions),
            "well_formed": _ratio(sum(r["well_formed"] for r in actions), len(actions)),
            "precision": _ratio(total["matched"], total["predicted"]),
            "recall": _ratio(total["matched"], total["gold"]),
            "who_precision": _ratio(total["who_right"], total["who_named"]),
            "when_precision": _ratio(total["when_right"], total["when_named"]),
            "seconds_mean": round(sum(r["seconds"] for r in actions) / len(actions), 1),
        }
    if any(translations.values()):
        chrf = CHRF()
        result["translation"] = {
            lang: {
                "sentences": len(rows),
                "chrf": round(chrf.corpus_score([r[0] for r in rows], [[r[1] for r in rows]]).score, 1),
                "seconds_mean": round(sum(r[2] for r in rows) / len(rows), 1),
            }
            for lang, rows in translations.items()
            if rows
        }
    return result


def _table(result: dict[str, Any]) -> str:
    lines = [f"model: {result['model']}"]
    for kind in ("short", "long"):
        if s := result.get(f"summaries_{kind}"):
            lines.append(
                f"summaries ({kind}, {s['threads']} threads): key-point recall {s['key_point_recall']:.2f}, "
                f"ROUGE-L {s['rouge_l']:.2f}, {s['seconds_mean']:.1f} s each, {s['failed']} failed"
            )
    for row in result.get("long_threads", []):
        lines.append(
            f"  {row['messages']} messages: {row['parts']} parts, {row['seconds']:.1f} s, "
            f"recall {row['recall']:.2f}"
        )
    if a := result.get("actions"):
        lines.append(
            f"actions ({a['threads']} threads): well-formed {a['well_formed']}, precision {a['precision']}, "
            f"recall {a['recall']}, who precision {a['who_precision']}, "
            f"when precision {a['when_precision']}, {a['seconds_mean']:.1f} s each"
        )
    for lang, t in (result.get("translation") or {}).items():
        lines.append(
            f"translate → {lang} ({t['sentences']} sentences): chrF {t['chrf']:.1f}, "
            f"{t['seconds_mean']:.1f} s each"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="chat model (default: the configured one)")
    parser.add_argument("--threads", type=int, default=12, help="short threads to run (of 12)")
    parser.add_argument("--long", type=int, default=3, help="long threads to run (of 3)")
    parser.add_argument(
        "--sentences", type=int, default=len(SENTENCES), help=f"sentences (of {len(SENTENCES)})"
    )
    parser.add_argument("--langs", default="fr,de,es,ja", help="target languages")
    parser.add_argument("--skip", default="", help="summaries,actions,translate: parts to leave out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(_run(args))
    print(json.dumps(result, ensure_ascii=False) if args.json else _table(result))


if __name__ == "__main__":
    main()
