"""Text between Markdown (what the model writes) and Slack mrkdwn (what Slack renders), both ways."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^([ \t]{0,3})(`{3,}|~{3,})(.*)$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_QUOTE = re.compile(r"^(\s*)>\s?")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
# Placeholders that cannot occur in text: bold must not be mistaken for italics afterwards.
_B = "\x00"
_CODE = "\x01"


def to_mrkdwn(markdown: str) -> str:
    """Markdown as Slack mrkdwn: bold, italics, strikethrough, links, headings, lists, quotes, code."""
    out: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening and not (opening.group(2)[0] == "`" and "`" in opening.group(3)):
            marker = opening.group(2)
            # Slack shows a fence's language as a first line of code, and knows only backticks.
            out.append("```")
            i += 1
            while i < len(lines):
                closing = lines[i].strip()
                if closing.startswith(marker[0] * len(marker)) and not closing.strip(marker[0]):
                    break
                out.append(_escape(lines[i]))
                i += 1
            out.append("```")
            i += 1
            continue
        out.append(_line(lines[i]))
        i += 1
    return "\n".join(out)


def _escape(text: str) -> str:
    """Slack's three control characters; everything else is literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _line(line: str) -> str:
    """One line outside code blocks."""
    prefix = ""
    if quote := _QUOTE.match(line):
        prefix, line = quote.group(1) + ">", line[quote.end() :]
        prefix += " "
    if heading := _HEADING.match(line):
        return prefix + _inline(f"**{heading.group(1)}**") if heading.group(1) else prefix
    if _RULE.match(line):
        return prefix + "──────────"
    if bullet := _BULLET.match(line):
        return prefix + bullet.group(1) + "• " + _inline(line[bullet.end() :])
    return prefix + _inline(line)


def _inline(text: str) -> str:
    """Inline Markdown in a line of text; inline code is kept as it is (escaped)."""
    spans: list[str] = []

    def keep(match: re.Match[str]) -> str:
        spans.append("`" + _escape(match.group(2)) + "`")
        return f"{_CODE}{len(spans) - 1}{_CODE}"

    text = _INLINE_CODE.sub(keep, text)
    links: list[str] = []

    def link(match: re.Match[str]) -> str:
        label, url = match.group(1), match.group(2)
        links.append(f"<{_escape(url)}|{_escape(label).replace('|', '¦')}>" if label else f"<{_escape(url)}>")
        return f"{_CODE}L{len(links) - 1}{_CODE}"

    text = _IMAGE.sub(link, text)
    text = _LINK.sub(link, text)
    text = _escape(text)
    text = _BOLD.sub(lambda m: f"{_B}{m.group(2)}{_B}", text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_B, "*")
    text = re.sub(f"{_CODE}L(\\d+){_CODE}", lambda m: links[int(m.group(1))], text)
    return re.sub(f"{_CODE}(\\d+){_CODE}", lambda m: spans[int(m.group(1))], text)


_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!([a-z]+)(?:\^[^|>]*)?(?:\|([^>]*))?>")
_URL = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")


def from_slack(text: str, bot_user_id: str | None = None) -> str:
    """A Slack message as plain text for the model: the bot's mention removed, links and names readable."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _MENTION.sub(lambda m: f"@{m.group(1)}", text)
    text = _CHANNEL.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _SPECIAL.sub(lambda m: f"@{m.group(2) or m.group(1)}", text)

    def url(match: re.Match[str]) -> str:
        address, label = match.group(1), match.group(2)
        if not label or label == address or address.endswith(label):
            return address.removeprefix("mailto:")
        return f"{label} ({address})"

    text = _URL.sub(url, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()
