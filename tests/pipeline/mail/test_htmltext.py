"""HTML rendered to the text it shows, its links and their visible text, in linear time."""
from __future__ import annotations

import time

import pytest

from pipeline.mail.htmltext import render_html
from pipeline.mail.links import is_link_url


def render(markup: str, max_links: int = 100):
    return render_html(markup, is_link_url, max_links)


def test_text_blocks_entities_and_hidden_content() -> None:
    page = render("<html><head><title>Titel</title><style>p { color: red }</style></head><body>"
                  "<h1>Hallo&nbsp;Max</h1><p>Gr&uuml;&szlig;e &amp; mehr</p>zwei<br>Zeilen"
                  "<script>document.write('<p>versteckt</p>')</script><!-- Kommentar <p>nicht</p> -->"
                  "<ul><li>eins</li><li>zwei</li></ul>   viel    Platz </body></html>")
    assert page.text == "Hallo\xa0Max\nGrüße & mehr\nzwei\nZeilen\neins\nzwei\nviel Platz"


def test_links_with_their_anchor_text() -> None:
    page = render('<a href="http://www.bank.test/login">Ihre <b>Bank</b></a> '
                  '<img src="//img.cdn.test/p.gif"><form action="https://post.test/x"></form>'
                  '<a href=www.unquoted.test>y</a><a href="relative/path.html">z</a><a href="mailto:a@x.test">m</a>'
                  '<table background="http://bg.test/b.png"><tr><td>t</td></tr></table>')
    assert [(l.url, l.tag, l.attribute, l.text) for l in page.links] == [
        ("http://www.bank.test/login", "a", "href", "Ihre Bank"),
        ("//img.cdn.test/p.gif", "img", "src", ""),
        ("https://post.test/x", "form", "action", ""),
        ("www.unquoted.test", "a", "href", "y"),
        ("http://bg.test/b.png", "table", "background", ""),
    ]


def test_entity_tricks_in_attributes_and_text_are_decoded() -> None:
    page = render('<a href="&#x68;ttp&colon;//evil.test/">&#104;ttp://bank.test/</a>'
                  "<a href='http&#58;&#47;&#47;second.test'>x</a><p>Visit http&#58;//entity.test/</p>")
    assert [(l.url, l.text) for l in page.links] == [("http://evil.test/", "http://bank.test/"),
                                                     ("http://second.test", "x")]
    assert "http://entity.test/" in page.text


def test_an_entity_cannot_be_assembled_across_tags() -> None:
    assert render("&am<b></b>p;").text == "&amp;"


def test_anchors_do_not_nest_and_an_unclosed_anchor_ends_with_the_next() -> None:
    page = render('<a href="http://one.test">eins <a href="http://two.test">zwei</a> drei')
    assert [(l.url, l.text) for l in page.links] == [("http://one.test", "eins"), ("http://two.test", "zwei")]


def test_broken_markup_is_read_as_browsers_read_it() -> None:
    assert render("a < b and c<d").text == "a < b and c"  # "<d" starts a tag that never ends: dropped
    assert render("x <!-- never closed http://hidden.test/").text == "x"
    assert render('<p title="x>y">text</p>').text == "text"
    assert render('<a href="http://open.test/ no closing quote>text').links == ()
    assert render("<!DOCTYPE html><?xml x?>ok</ p>").text == "ok"
    assert render("1 </> 2").text == "1 2"


def test_links_are_capped() -> None:
    page = render('<a href="http://x.test/">x</a>' * 50, max_links=10)
    assert len(page.links) == 10 and page.links_dropped


@pytest.mark.parametrize("markup", [
    "<a " * 700_000,  # the stdlib html.parser takes minutes on this
    "<" * 2_000_000,
    "<!--<" * 400_000,
    '<a href="' + "x" * 2_000_000,
    "<a href=http://x.test>" + "x<b>" * 400_000,
    "<a " + "b=\"c' " * 300_000,
    "&#" * 1_000_000,
    "<script>" + "<" * 2_000_000,
])
def test_hostile_markup_takes_linear_time(markup: str) -> None:
    started = time.process_time()
    render(markup)
    assert time.process_time() - started < 3.0
