"""Deadlines as people write them ("Friday", "tomorrow", "EOW", "Dec 12") as ISO dates.

Relative words are resolved against the timestamp of the message that said them, so "tomorrow"
in Monday's message is Tuesday whenever the thread is read. What cannot be read stays None:
a wrong date is worse than none.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "a": 1, "an": 1}


def resolve_date(text: str | None, said: datetime | date) -> str | None:
    """The ISO date (YYYY-MM-DD) `text` means when said at `said`; None if it names no date."""
    if not text:
        return None
    base = said.date() if isinstance(said, datetime) else said
    words = " ".join(re.sub(r"[^\w\s/-]", " ", text.lower()).split())
    words = re.sub(r"^(by|on|before|until|due|for)\s+", "", words)
    words = re.sub(r"\b(end of day|eod|cob|close of business|tonight|this evening)\b", "today", words)
    if match := re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", words):
        return _iso(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    if re.search(r"\btoday\b|\basap\b|\bnow\b", words):
        return base.isoformat()
    if re.search(r"\btomorrow\b|\btmrw\b", words):
        return (base + timedelta(days=1)).isoformat()
    if re.search(r"\b(end of (the )?week|eow|this week)\b", words):
        return (base + timedelta(days=(4 - base.weekday()) % 7)).isoformat()
    if re.search(r"\b(next week)\b", words) and not _weekday(words):
        return (base + timedelta(days=7 - base.weekday())).isoformat()
    if re.search(r"\b(end of (the )?month|eom)\b", words):
        first_next = (base.replace(day=28) + timedelta(days=4)).replace(day=1)
        return (first_next - timedelta(days=1)).isoformat()
    if match := re.search(r"\bin (\d+|\w+) (day|week)s?\b", words):
        count = int(match.group(1)) if match.group(1).isdigit() else _NUMBERS.get(match.group(1))
        if count is not None:
            days = count * (7 if match.group(2) == "week" else 1)
            return (base + timedelta(days=days)).isoformat()
    if (day := _weekday(words)) is not None:
        ahead = (day - base.weekday()) % 7 or 7
        if re.search(r"\bnext\b", words) and day > base.weekday():
            ahead += 7  # "next Friday" said on a Monday: Friday of next week
        return (base + timedelta(days=ahead)).isoformat()
    return _calendar(words, base)


def _weekday(words: str) -> int | None:
    for index, name in enumerate(_WEEKDAYS):
        if re.search(rf"\b({name}|{name[:3]})\b", words):
            return index
    return None


def _calendar(words: str, base: date) -> str | None:
    """ "Dec 12", "12 December", "12/15" (month/day): the next such date on or after `base`."""
    month = day = None
    if match := re.search(r"\b([a-z]{3})[a-z]*\s+(\d{1,2})(?:st|nd|rd|th)?\b", words):
        if match.group(1) in _MONTHS:
            month, day = _MONTHS.index(match.group(1)) + 1, int(match.group(2))
    if month is None and (
        match := re.search(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]{3})[a-z]*\b", words)
    ):
        if match.group(2) in _MONTHS:
            month, day = _MONTHS.index(match.group(2)) + 1, int(match.group(1))
    if month is None and (match := re.search(r"\b(\d{1,2})/(\d{1,2})\b", words)):
        month, day = int(match.group(1)), int(match.group(2))
    if month is None or day is None:
        return None
    for year in (base.year, base.year + 1):
        found = _iso(year, month, day)
        if found is not None and found >= base.isoformat():
            return found
    return None


def _iso(year: int, month: int, day: int) -> str | None:
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None
