"""Visitors' text shown as text. Streamlit renders the body of st.markdown, st.error, st.warning, st.info,
st.success, captions and tooltips as Markdown (with HTML entities, GitHub autolinks, `:emoji:` and
`:colour[...]` directives and `$LaTeX$`), and plotly renders chart labels as a subset of HTML. A value a
visitor chose (a URL parameter, a file name, a model or class name, an error that repeats a bad value) must
reach either as the characters it is, never as markup: `![x](http://attacker/p.png)` would make every
viewer's browser fetch that address."""

from __future__ import annotations

import html
import re

# every character CommonMark, GitHub's extensions or Streamlit's directives give a meaning; a backslash before
# ASCII punctuation always stands for the character itself (CommonMark 2.4), so escaping more is harmless
MD_SPECIAL = frozenset("\\`*_[]()!<>#+-.|{}~$&:")
_MD_TABLE = {ord(c): "\\" + c for c in MD_SPECIAL}
_LINE_BREAKS = {ord(c): " " for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
# GitHub's autolinks (`http://...`, `www.x`, `a@b.c`) and Streamlit's `:emoji:` are found in the text after
# escapes are resolved, so no backslash stops them: an invisible word joiner breaks the patterns instead
JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|xmpp|www)(?=[:.])|(?=@)|(?<=:)(?=[\w+-]+:)")


def md(value: object) -> str:
    """`value` as Markdown that renders as exactly its characters, on one line (a line break in a value could
    start a heading or a list; it becomes a space), without leading blanks, and with a word joiner (invisible)
    where an address would otherwise become a link."""
    # spaces or a tab leading a message would make it a code block; a paragraph drops them anyway
    text = str(value).translate(_LINE_BREAKS).replace(JOINER, "").lstrip(" \t")
    return _AUTOLINK.sub(lambda m: (m.group(1) or "") + JOINER, text).translate(_MD_TABLE)


def unmd(text: str) -> str:
    """What `md` escaped, back as the characters it stands for (for tests and logs that compare texts)."""
    text = text.replace(JOINER, "")
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in MD_SPECIAL:
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def chart(value: object) -> str:
    """`value` for a plotly title, axis label, tick or hover text: its characters, not tags or entities."""
    return html.escape(str(value), quote=True)
