"""A visitor's text shown through Markdown or a chart label renders as exactly its characters: no image, link,
emphasis, heading, HTML tag or entity survives escaping. Checked by rendering with markdown-it (CommonMark plus
GitHub's tables and strikethrough, the syntax Streamlit's renderer shares) and reading the text back."""

import html
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from explorer.core import markup

RENDER = MarkdownIt("commonmark").enable(["table", "strikethrough"])
ATTACKS = [
    "![x](http://attacker/p.png)",
    "[click](http://attacker/) [j](javascript:alert(1))",
    "<img src=http://attacker/p.png onerror=alert(1)>",
    "<script>alert(1)</script>",
    "&lt;img src=x&gt; &amp; &#60;",
    "**bold** __under__ *em* _em_ ~~gone~~ `code`",
    "# heading",
    "- item",
    "1. item",
    "> quote",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "line one\n\n# line two\n    code",
    "<http://attacker/p.png> https://attacker/x www.attacker.com",
    ":red[coloured] :smile: $x^2$ $$y$$",
    "back\\slash \\! \\\\[x](y)",
    "[x]: http://attacker/ref\n[x]",
    "mine.pt\" onmouseover=\"alert(1)",
]


def shown(source: str) -> tuple[str, str]:
    """The rendered HTML, and the text a reader sees (tags dropped, entities decoded, word joiners invisible)."""
    out = RENDER.render(source)
    return out, html.unescape(re.sub(r"<[^>]+>", "", out)).replace(markup.JOINER, "").strip()


# what GitHub's autolink extension and Streamlit's emoji plugin look for in the text once escapes are resolved
# (markdown-it has no such pass here, so the patterns are checked on the rendered text itself)
LINKED = re.compile(r"(?i)https?://|ftp:|mailto:|xmpp:|www\.|[\w.+-]@[\w-]|:[\w+-]+:")


def _no_autolink(rendered: str) -> bool:
    return not LINKED.search(html.unescape(re.sub(r"<[^>]+>", "", rendered)))


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]", " ", text)


@pytest.mark.parametrize("text", ATTACKS)
def test_escaped_text_renders_as_its_characters(text):
    rendered, seen = shown(markup.md(text))
    tags = set(re.findall(r"<\s*([a-zA-Z0-9]+)", rendered))
    assert tags <= {"p"}, f"{text!r} rendered markup: {rendered!r}"
    assert seen == _one_line(text).strip()
    assert _no_autolink(rendered), rendered


def test_the_attacks_are_markup_unescaped():
    """The renderer is a fair judge: without escaping, these do render markup."""
    for text in ATTACKS[:4]:
        rendered, _ = shown(text)
        assert re.search(r"<(img|a|script)\b", rendered), rendered


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(alphabet=st.sampled_from(string.printable + "éß\u2028"), max_size=60),
                 st.lists(st.sampled_from(["http", "s", "://", "www", ".", "@", ":", "smile", "x", " ", "ftp",
                                           "mailto", "-", "_", "HTTP"]), max_size=12).map("".join)))
def test_any_text_round_trips(text):
    escaped = markup.md(text)
    assert markup.unmd(escaped) == _one_line(text).lstrip(" \t")
    rendered, seen = shown(escaped)
    assert set(re.findall(r"<\s*([a-zA-Z0-9]+)", rendered)) <= {"p"}, rendered
    assert _no_autolink(rendered), rendered
    # the renderer trims the ends of a paragraph and folds the spaces before a hard break; the characters stay
    assert re.sub(r"\s+", " ", seen) == re.sub(r"\s+", " ", _one_line(text)).strip()


def test_addresses_are_not_linked_and_read_the_same():
    """Streamlit's renderer links `http://...`, `www.` and e-mail addresses after escapes are resolved (a browser
    test saw it): a word joiner, which no reader sees, breaks each pattern."""
    text = "http://attacker.invalid/p.png www.attacker.invalid me@attacker.invalid :smile: HTTPS://x"
    escaped = markup.md(text)
    assert not LINKED.search(escaped.replace("\\", "")) and markup.unmd(escaped) == text


def test_no_unescaped_link_or_tag_opener_remains():
    escaped = markup.md("![x](http://attacker/p.png) <b>")
    assert "](" not in escaped.replace("\\]\\(", "") and not re.search(r"(?<!\\)[<\[!]", escaped)


def test_chart_labels_are_text_for_plotly():
    assert markup.chart('<a href="http://attacker/">cat</a> & <br>') == \
        "&lt;a href=&quot;http://attacker/&quot;&gt;cat&lt;/a&gt; &amp; &lt;br&gt;"
