"""Names as the gateway compares them, and the one Public Suffix List."""
from __future__ import annotations

import pytest

from consumers.stages.authn.dmarc import organizational_domain
from pipeline.mail.domains import InvalidName, normalize_address, normalize_domain, registrable_domain


@pytest.mark.parametrize("text, name", [
    ("Example.ORG.", "example.org"), ("bücher.test", "xn--bcher-kva.test"), (" _dmarc.x.test ", "_dmarc.x.test"),
])
def test_domains_are_idna_lower_case_without_the_final_dot(text: str, name: str) -> None:
    assert normalize_domain(text) == name


@pytest.mark.parametrize("text, why", [
    ("", "empty domain name"), ("a..test", "empty label"), ("-bad-.test", "must be 1-63 letters"),
    ("x" * 64 + ".test", "must be 1-63 letters"), ("a b.test", "must be 1-63"),
])
def test_what_is_no_domain_says_why(text: str, why: str) -> None:
    with pytest.raises(InvalidName, match=why):
        normalize_domain(text)


def test_addresses_lower_case_both_halves() -> None:
    assert normalize_address("Max.Mustermann@Bücher.TEST") == "max.mustermann@xn--bcher-kva.test"
    with pytest.raises(InvalidName, match="local part holds"):
        normalize_address('"a b"@x.test')


@pytest.mark.parametrize("name, registrable", [
    ("www.bad-link.test", "bad-link.test"),  # a suffix the list does not know: the last label
    ("a.b.example.co.uk", "example.co.uk"),
    ("x.shop.ck", "x.shop.ck"),  # *.ck: shop.ck is a suffix
    ("a.www.ck", "www.ck"),  # the exception !www.ck
    ("foo.bar.github.io", "bar.github.io"),  # the list's private section counts
    ("WWW.Example.COM.", "example.com"),
    ("co.uk", ""), ("test", ""),
])
def test_registrable_domains_with_the_public_suffix_list(name: str, registrable: str) -> None:
    assert registrable_domain(name) == registrable


@pytest.mark.parametrize("name", ["news.mail.good.test", "mail.example.co.uk", "foo.bar.github.io", "co.uk"])
def test_links_and_dmarc_use_the_same_list(name: str) -> None:
    assert organizational_domain(name) == (registrable_domain(name) or name)
