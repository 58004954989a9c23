"""Links: URLs found in text and HTML, their hosts as a browser reads them, their registrable domains."""
from __future__ import annotations

import pytest

from pipeline.mail.links import is_link_url, make_link, read_host, urls_in_text


def looked_up(url: str) -> str:
    """The host a domain list looks up for a link ("" for IP addresses and single labels)."""
    link = make_link(url, "1", "text")
    return link.host if link.named else ""


@pytest.mark.parametrize("url, host", [
    ("http://www.Bad-Link.test/x?y=1", "www.bad-link.test"),
    ("https://user:pw@bad-link.test:8443/", "bad-link.test"),
    ("www.bad-link.test/path", "www.bad-link.test"),
    ("http://bad-link.test.", "bad-link.test"),
    ("http://bücher.test/", "xn--bcher-kva.test"),  # IDNA
    ("http://192.0.2.7/x", ""),  # an IP literal: nothing to look up
    ("http://[2001:db8::1]/", ""),
    ("http://localhost/", ""),  # no dot
    ("http://bad-link.test:99999/", "bad-link.test"),  # a port that cannot be: the host still counts
    ("http://-bad-.test/", ""),  # not a DNS name
])
def test_hosts_are_normalised_or_dropped(url: str, host: str) -> None:
    assert looked_up(url) == host


@pytest.mark.parametrize("url, host", [
    ("http:\\\\evil.test\\login", "evil.test"),  # backslashes are slashes
    ("http:evil.test/x", "evil.test"),  # no slashes at all
    ("HTTPS:////evil.test", "evil.test"),  # any number of them
    ("ht\ttp://ev\nil.test/", "evil.test"),  # tabs and line breaks inside are dropped
    ("  \x01http://evil.test/ ", "evil.test"),  # control characters and spaces around
    ("http://bank.test@evil.test/", "evil.test"),  # user info is not the host
    ("http://bank.test:secret@evil.test:80/", "evil.test"),
    ("http://%65vil.test/", "evil.test"),  # percent-escapes in the host
    ("http://EVIL。test/", "evil.test"),  # an ideographic full stop separates labels
    ("//cdn.evil.test/x.gif", "cdn.evil.test"),  # scheme-relative
])
def test_hosts_are_read_as_a_browser_reads_them(url: str, host: str) -> None:
    assert read_host(url) == (host, False)


@pytest.mark.parametrize("url, address", [
    ("http://0x7f.1/", "127.0.0.1"), ("http://2130706433/", "127.0.0.1"), ("http://0177.0.0.1/", "127.0.0.1"),
    ("http://[::ffff:192.0.2.1]/", "::ffff:c000:201"),
])
def test_every_form_of_an_ip_address_is_an_address(url: str, address: str) -> None:
    link = make_link(url, "1", "href")
    assert (link.host, link.ip, link.domain, link.named) == (address, True, "", False)


def test_the_registrable_domain_comes_with_the_link() -> None:
    assert make_link("http://a.b.phish.co.uk/", "1", "text").domain == "phish.co.uk"
    assert make_link("http://x.bar.github.io/", "1", "text").domain == "bar.github.io"
    assert make_link("http://www.bad-link.test/", "1", "text").domain == "bad-link.test"


@pytest.mark.parametrize("value, link", [
    ("http://x.test", True), ("FTP://x.test", True), ("//x.test", True), ("www.x.test", True),
    ("mailto:a@x.test", False), ("relative/path.html", False), ("#top", False), ("javascript:alert(1)", False),
    ("cid:part1", False), ("\thttp://x.test", True),
])
def test_which_attribute_values_are_links(value: str, link: bool) -> None:
    assert is_link_url(value) is link


def test_bare_urls_in_plain_text_with_trailing_punctuation() -> None:
    text = "Klick hier: https://bad-link.test/login. Oder (www.other.test), nicht mailto:x@y.test"
    assert urls_in_text(text) == ["https://bad-link.test/login", "www.other.test"]
    assert [looked_up(u) for u in urls_in_text(text)] == ["bad-link.test", "www.other.test"]
