"""Envelope addresses: only plain local@domain may reach a local mailbox; routing forms never do."""
from __future__ import annotations

import pytest

from ingress.addresses import Address, AddressError, parse_address, resolve_route


def test_plain_address_and_lower_cased_domain():
    address = parse_address("Bob.Smith@School.TEST")
    assert address == Address(local="Bob.Smith", domain="school.test")  # local part keeps its case
    assert not address.is_literal
    assert str(address) == "Bob.Smith@school.test"


def test_trailing_dot_of_the_domain_is_dropped():
    assert parse_address("bob@school.test.").domain == "school.test"


@pytest.mark.parametrize(
    "text",
    [
        "r%ext.test@school.test",  # % hack: Sendmail would relay to r@ext.test
        "ext.test!r@school.test",  # UUCP bang path
        "@school.test:r@ext.test",  # source route (RFC 5321 4.1.2, obsolete)
        '"r@ext.test"@school.test',  # quoted local part holding an @
        "r@ext.test@school.test",  # two @
        'r\\@ext.test@school.test',  # escaped @
        "r:x@school.test",
    ],
)
def test_routing_forms_are_refused(text):
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    ["", "school.test", "@school.test", "r@", "r @school.test", "r@school.test\r\n", "r\x00@school.test",
     "<r@school.test>", "r@school..test", "r@" + "a" * 64 + ".test", "r@" + "a." * 127 + "test"],
)
def test_malformed_addresses_are_refused(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_address_literal_is_parsed_as_literal():
    address = parse_address("r@[127.0.0.1]")
    assert address.is_literal
    assert address.domain == "[127.0.0.1]"
    assert address.local == "r"


def test_ipv6_literal():
    address = parse_address("r@[IPv6:2001:db8::1]")
    assert address.is_literal and address.domain == "[IPv6:2001:db8::1]"


def test_unterminated_literal_is_refused():
    with pytest.raises(AddressError):
        parse_address("r@[127.0.0.1")


def test_address_error_is_a_value_error():
    assert issubclass(AddressError, ValueError)


LOCAL = frozenset({"school.test"})


@pytest.mark.parametrize(
    "text, destination",
    [
        ("r@ext.test", "r@ext.test"),
        ('"r@ext.test"', "r@ext.test"),  # a quoted address with no domain of its own
        ("r%ext.test@school.test", "r@ext.test"),  # % hack through our domain
        ("ext.test!r@school.test", "r@ext.test"),  # bang path through our domain
        ('"r@ext.test"@school.test', "r@ext.test"),
        ("r@ext.test@school.test", "r@ext.test"),
        ("r@[127.0.0.1]", "r@[127.0.0.1]"),  # a literal stays a literal (the relay check decides)
        ("anna%school.test@school.test", "anna@school.test"),  # routing back to a local mailbox
        ("r%ext.test%school.test@school.test", "r@ext.test"),  # two layers through our domain
    ],
)
def test_routing_forms_resolve_to_their_final_destination(text, destination):
    assert str(resolve_route(text, LOCAL)) == destination


@pytest.mark.parametrize(
    "text",
    [
        "r%ext.test@other.test",  # routing through someone else's domain is not ours to follow
        "r%b.test%ext.test@school.test",  # the second layer routes through ext.test
        '"a\\"b"@school.test',  # a quote in the local part is no route
        "r" + "%x.test" * 20 + "@school.test",  # too many layers
        "r%@school.test",  # resolves to r@ (no domain)
    ],
)
def test_routes_that_do_not_resolve_are_refused(text):
    with pytest.raises(AddressError):
        resolve_route(text, LOCAL)
