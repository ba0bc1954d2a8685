"""Markdown to Slack mrkdwn (replies) and Slack text to plain text (what people wrote)."""

from __future__ import annotations

from adapters.slack_format import from_slack, to_mrkdwn


def test_inline_markup_becomes_mrkdwn() -> None:
    assert to_mrkdwn("**bold**, *italic*, _also_, ~~gone~~") == "*bold*, _italic_, _also_, ~gone~"
    assert to_mrkdwn("see [the docs](https://x.io/a?b=1&c=2)") == "see <https://x.io/a?b=1&amp;c=2|the docs>"
    assert to_mrkdwn("![logo](https://x.io/l.png)") == "<https://x.io/l.png|logo>"
    assert to_mrkdwn("2*3*4 and a * b") == "2*3*4 and a * b"


def test_block_markup_becomes_mrkdwn() -> None:
    assert to_mrkdwn("# Title\n## Sub ##") == "*Title*\n*Sub*"
    assert to_mrkdwn("- one\n* two\n  + nested\n1. first") == "• one\n• two\n  • nested\n1. first"
    assert to_mrkdwn("> quoted **bit**") == "> quoted *bit*"
    assert to_mrkdwn("---") == "──────────"


def test_code_is_left_alone_but_escaped_and_fences_lose_their_language() -> None:
    assert to_mrkdwn("run `a<b && **c**`") == "run `a&lt;b &amp;&amp; **c**`"
    text = '```python\nif a < b:\n    print("**x**")\n```\nafter **b**'
    assert to_mrkdwn(text) == '```\nif a &lt; b:\n    print("**x**")\n```\nafter *b*'
    assert to_mrkdwn("~~~\nx\n~~~") == "```\nx\n```"
    # An unclosed fence (a reply still streaming) is closed.
    assert to_mrkdwn("```sh\nls") == "```\nls\n```"


def test_control_characters_are_escaped_outside_links() -> None:
    assert to_mrkdwn("a < b & c > d") == "a &lt; b &amp; c &gt; d"


def test_slack_text_becomes_plain_text_for_the_model() -> None:
    text = (
        "<@UBOT> hi <@U2|bob> see <https://a.b/c|docs> and <https://a.b> in <#C1|general> &lt;tag&gt; <!here>"
    )
    assert (
        from_slack(text, "UBOT") == "hi @U2 see docs (https://a.b/c) and https://a.b in #general <tag> @here"
    )
    assert from_slack("<mailto:x@y.z|x@y.z> &amp;lt;", None) == "x@y.z &lt;"
