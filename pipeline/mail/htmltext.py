"""HTML as a reader sees it: the text it shows, and the URLs of its links with their visible text.

A small tokenizer after the HTML5 rules that matter for mail, not the stdlib `html.parser`: that one
takes quadratic time on input such as ``<a <a <a ...`` (minutes for 2 MB). This one looks at every
character a bounded number of times, so its time is linear in the markup whatever the markup is:

- text between tags is entity-decoded (``&#58;``, ``&colon;``, ``&amp``) and its white space
  collapsed; block elements (p, div, br, li, tr, headings, ...) start a new line;
- comments (``<!-- -->``, also unclosed: to the end), ``<!...>`` and ``<?...>`` are dropped, and
  so is the content of script, style and title (raw text a client does not show in the body);
- attribute values are entity-decoded; href, src, action, formaction and background values
  `wanted` accepts are collected as `HtmlLink`s, with the text shown inside an ``<a>``/``<area>``
  (up to `ANCHOR_TEXT_CHARS`) for the link it makes;
- a tag that is still open at the end of the input (an unclosed quote) is dropped, as browsers do.

Not modelled: CSS (text hidden by styles counts as shown), ``<base href>``, srcset.
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HtmlLink", "RenderedHtml", "render_html", "LINK_ATTRIBUTES", "ANCHOR_TEXT_CHARS"]

LINK_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "background"})
ANCHOR_TEXT_CHARS = 256
MAX_ATTRIBUTES = 256  # kept per tag; more are read past, not kept (a tag may run to the end of the input)
_HIDDEN = frozenset({"script", "style", "title"})  # raw text: dropped up to the matching end tag
_BLOCK = frozenset({"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
                    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
                    "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul"})
_ANCHORS = frozenset({"a", "area"})
_TAG_NAME = re.compile(r"[a-zA-Z][^\s/>]*")
_ATTRIBUTE = re.compile(r"""[\s/]*(?:([^\s/>][^\s/>=]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|(["']?[^\s>]*)))?)?""")
_MARKUP_START = re.compile(r"<[!?/a-zA-Z]")
_COMMENT_END = re.compile(r"--!?>")
_SPACE = re.compile(r"[ \t\r\n\f\v]+")
_SPACES = re.compile(r" {2,}")  # chunks are collapsed each; where two meet, two spaces may
_AROUND_BREAKS = re.compile(r" *\n[ \n]*")
_END_TAGS = {name: re.compile(rf"</{name}[\s/>]", re.IGNORECASE) for name in _HIDDEN}


@dataclass(frozen=True, slots=True)
class HtmlLink:
    url: str  # the attribute value, entity-decoded
    tag: str  # lower case: a, img, form, ...
    attribute: str  # href, src, action, formaction, background
    text: str = ""  # what an <a>/<area> shows (white space collapsed), "" for other tags


@dataclass(frozen=True, slots=True)
class RenderedHtml:
    text: str
    links: tuple[HtmlLink, ...]
    links_dropped: bool  # more links than `max_links` were wanted


class _Renderer:
    def __init__(self, markup: str, wanted: Callable[[str], bool], max_links: int) -> None:
        self.s = markup
        self.wanted = wanted
        self.max_links = max_links
        self.out: list[str] = []
        self.links: list[HtmlLink] = []
        self.dropped = False
        self.anchor: list[int] = []  # indexes into links made by the open <a>
        self.anchor_text: list[str] = []
        self.anchor_chars = 0

    def text(self, chunk: str) -> None:
        if not chunk:
            return
        shown = _SPACE.sub(" ", html.unescape(chunk))
        self.out.append(shown)
        if self.anchor and self.anchor_chars < ANCHOR_TEXT_CHARS:
            self.anchor_text.append(shown)
            self.anchor_chars += len(shown)

    def close_anchor(self) -> None:
        if self.anchor:
            label = _SPACE.sub(" ", "".join(self.anchor_text)).strip()[:ANCHOR_TEXT_CHARS]
            for index in self.anchor:
                link = self.links[index]
                self.links[index] = HtmlLink(link.url, link.tag, link.attribute, label)
        self.anchor, self.anchor_text, self.anchor_chars = [], [], 0

    def start_tag(self, name: str, attributes: list[tuple[str, str]]) -> None:
        if name in _ANCHORS:
            self.close_anchor()  # anchors do not nest
        made = []
        for key, value in attributes:
            if key in LINK_ATTRIBUTES and self.wanted(value):
                if len(self.links) >= self.max_links:
                    self.dropped = True
                    continue
                made.append(len(self.links))
                self.links.append(HtmlLink(value, name, key))
        if name in _ANCHORS:
            self.anchor = made
        if name in _BLOCK:
            self.out.append("\n")

    def end_tag(self, name: str) -> None:
        if name in _ANCHORS:
            self.close_anchor()
        if name in _BLOCK:
            self.out.append("\n")

    # -- the tokenizer --------------------------------------------------------------------------

    def run(self) -> RenderedHtml:
        s, pos = self.s, 0
        while (start := _MARKUP_START.search(s, pos)) is not None:  # a "<" that starts nothing is text
            self.text(s[pos:start.start()])
            pos = self.markup(start.start())
        self.text(s[pos:])
        self.close_anchor()
        text = _AROUND_BREAKS.sub("\n", _SPACES.sub(" ", "".join(self.out))).strip()
        return RenderedHtml(text=text, links=tuple(self.links), links_dropped=self.dropped)

    def markup(self, lt: int) -> int:
        """Consume the construct at s[lt] == "<" (a `_MARKUP_START`); return where text goes on."""
        s = self.s
        nxt = s[lt + 1:lt + 2]
        if s.startswith("<!--", lt):
            if s.startswith(("<!-->", "<!--->"), lt):
                return s.index(">", lt) + 1
            end = _COMMENT_END.search(s, lt + 4)
            return end.end() if end else len(s)
        if nxt in ("!", "?") or (nxt == "/" and not _TAG_NAME.match(s, lt + 2)):
            end = s.find(">", lt + 2)
            return end + 1 if end >= 0 else len(s)
        closing = nxt == "/"
        match = _TAG_NAME.match(s, lt + 2 if closing else lt + 1)
        assert match is not None  # _MARKUP_START saw a letter
        name = match.group(0).lower()
        if closing:
            end = s.find(">", match.end())
            if end < 0:
                return len(s)
            self.end_tag(name)
            return end + 1
        attributes, end = self.attributes(match.end())
        if end < 0:
            return len(s)  # still inside the tag at the end of the input: dropped
        self.start_tag(name, attributes)
        if name in _HIDDEN:
            close = _END_TAGS[name].search(s, end)
            if close is None:
                return len(s)
            after = s.find(">", close.end() - 1)
            return after + 1 if after >= 0 else len(s)
        return end

    def attributes(self, pos: int) -> tuple[list[tuple[str, str]], int]:
        """(attributes, position after ">") of a start tag; position -1 when the input ends first."""
        s, found = self.s, []
        while True:
            match = _ATTRIBUTE.match(s, pos)
            key = match.group(1)
            if key is not None:
                value = next((v for v in match.group(2, 3, 4) if v is not None), "")
                if value[:1] in ("'", '"') and match.group(4) is not None:
                    return found, -1  # a quote that never closes: the tag runs to the end
                if len(found) < MAX_ATTRIBUTES:
                    found.append((key.lower(), html.unescape(value)))
            pos = match.end()
            if pos >= len(s):
                return found, -1
            if s[pos] == ">":
                return found, pos + 1
            if key is None:
                pos += 1  # cannot happen with this pattern; guarantees progress regardless


def render_html(markup: str, wanted: Callable[[str], bool], max_links: int) -> RenderedHtml:
    """The text `markup` shows and its link URLs that `wanted` accepts (at most `max_links`)."""
    return _Renderer(markup, wanted, max_links).run()
