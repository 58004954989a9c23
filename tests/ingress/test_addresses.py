"""Envelope addresses: only plain local@domain may reach a local mailbox; routing forms never do."""
from __future__ import annotations

import pytest

from ingress.addresses import Address, AddressError, parse_address


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
