"""The header section: fields in order with raw and decoded values, and the one From policy."""
from __future__ import annotations

import time

import pytest

from pipeline.mail.headers import FROM_BYTES, parse_header
from pipeline.settings import MessageSettings


def head(*lines: str | bytes) -> bytes:
    encoded = [line if isinstance(line, bytes) else line.encode() for line in lines]
    return b"\r\n".join(encoded) + b"\r\n\r\nbody\r\n"


# ---- fields ------------------------------------------------------------------------------------


def test_fields_in_order_with_raw_and_decoded_values() -> None:
    raw = head("Received: from a.test\r\n\tby mx.test; Mon, 1 Jan 2026 00:00:00 +0000",
               "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus\r\n =?iso-8859-1?b?S/Zsbg==?=",
               "X-Empty:", "From : a@good.test", "subject: zweites")
    header = parse_header(raw)
    assert [f.name for f in header.fields] == ["Received", "Subject", "X-Empty", "From", "subject"]
    received, subject, empty, sender, second = header.fields
    assert received.raw == b" from a.test\r\n\tby mx.test; Mon, 1 Jan 2026 00:00:00 +0000"
    assert received.value == "from a.test\tby mx.test; Mon, 1 Jan 2026 00:00:00 +0000"
    assert subject.value == "Grüße aus Köln" and header.subject == "Grüße aus Köln"
    assert (empty.raw, empty.value) == (b"", "")
    assert sender.name == "From" and sender.key == "from"  # white space before the colon: obsolete syntax
    assert [f.value for f in header.all("SUBJECT")] == ["Grüße aus Köln", "zweites"]
    assert raw[received.offset:].startswith(b"Received:") and raw[sender.offset:].startswith(b"From :")
    assert raw[header.body_start:] == b"body\r\n"


def test_eight_bit_values_nuls_and_lines_that_are_no_fields() -> None:
    raw = head("Subject: Grüße", b"X-Latin: Gr\xfc\xdfe", b"X-Nul: a\x00b", "this line is no field",
               "X Space: no field either", "To: b@x.test")
    header = parse_header(raw)
    assert [(f.name, f.value) for f in header.fields] == [
        ("Subject", "Grüße"), ("X-Latin", "Grüße"), ("X-Nul", "a\x00b"), ("To", "b@x.test")]
    assert len(header.defects) == 2 and all(d.startswith("malformed_line@") for d in header.defects)


def test_the_body_is_not_header() -> None:
    header = parse_header(b"Subject: s\r\n\r\nFrom: a@good.test\r\n")
    assert [f.name for f in header.fields] == ["Subject"] and not header.authors.readable


def test_header_caps_are_recorded() -> None:
    caps = MessageSettings(max_header_fields=10, max_header_bytes=2048)
    many = parse_header(head(*[f"X-{i}: v" for i in range(50)], "From: a@good.test"), caps)
    assert len(many.fields) == 10 and [c.key for c in many.caps] == ["max_header_fields"]
    long = parse_header(head("Subject: s", "X-Long: " + "x" * 5000, "From: a@good.test"), caps)
    assert [f.name for f in long.fields] == ["Subject"] and [c.key for c in long.caps] == ["max_header_bytes"]
    # a From past a cap may exist: the From is not certain
    for header in (many, long):
        assert not header.authors.readable and header.authors.domain == ""
        assert "longer than the caps" in header.authors.problems[0]


def test_huge_and_hostile_headers_take_bounded_time() -> None:
    hostile = [
        head(*[f"X-{i}: " + "=?a?q?" * 2000 for i in range(100)]),  # encoded words that never end
        head("Subject: " + "=?utf-8?q?a?= " * 200_000),
        head("From: " + '"a" ' * 2000, "From: " + "(" * 8000),  # quadratic quotes, deep comments
        head(*[f"From: {'a.' * 4000}@x.test" for _ in range(1000)]),
        b"X: " + b"\r\n " * 2_000_000,
    ]
    for raw in hostile:
        started = time.process_time()
        header = parse_header(raw)
        assert time.process_time() - started < 2.0
        assert not header.authors.readable or header.authors.addresses


# ---- the From policy ---------------------------------------------------------------------------

POLICY = [
    # (header lines, readable, addresses, author domain, why (no domain / not readable))
    (["From: Lehrer <lehrer@News.Good.Test>"], True, ["lehrer@News.Good.Test"], "news.good.test", ""),
    (["From: a@good.test", "From: b@good.test"], True, ["a@good.test", "b@good.test"], "", "2 From header fields"),
    (["From: a@good.test, b@ext.test"], True, ["a@good.test", "b@ext.test"], "", "From addresses in 2 domains"),
    (["From: a@good.test, B <b@Good.Test>"], True, ["a@good.test", "b@Good.Test"], "good.test", ""),
    (["Subject: no from"], False, [], "", "no From field"),
    (["From: undisclosed"], False, ["undisclosed"], "", "lacks a local part or domain"),
    (["From: undisclosed-recipients:;"], False, [], "", "no address in From"),
    (["From: <>"], False, ["<>"], "", "null addr-spec"),
    (["From: Kollegium: a@good.test, b@good.test;"], True, ["a@good.test", "b@good.test"], "good.test", ""),
    (["From: =?utf-8?b?YW5uYS5zY2htaWR0QHNjaG9vbC50ZXN0?="], False, ['"anna.schmidt@school.test"'], "",
     "local part with no domain"),  # an address hidden in an encoded word: a local part, no domain
    (["From: =?utf-8?q?a=40good.test?= <b@ext.test>"], True, ["b@ext.test"], "ext.test", ""),
    (["From: a@good.test (Anna) <b@ext.test>"], False, ["a@good.test"], "", "invalid address in address-list"),
    (["From: a@good.test\r\n\tb@ext.test"], False, ["a@good.test"], "", "invalid address in address-list"),
    (["From: garbage <<<"], False, ["garbage"], "", "From field 1:"),
    (["From: Dr. Anna Schmidt <a@good.test>"], True, ["a@good.test"], "good.test", ""),  # obsolete syntax
    (["From: <@relay.test:a@good.test>"], True, ["a@good.test"], "good.test", ""),  # obsolete route
    (["From: a@[192.0.2.1]"], True, ["a@[192.0.2.1]"], "", "no domain in From address"),
    (["From: a@localhost"], True, ["a@localhost"], "", "no domain in From address"),
    (["From: ännä@bücher.test"], True, ["ännä@bücher.test"], "xn--bcher-kva.test", ""),  # RFC 6532
    (["From : a@good.test"], True, ["a@good.test"], "good.test", ""),
    (["FROM: a@good.test", "from: b@ext.test"], True, ["a@good.test", "b@ext.test"], "", "2 From header fields"),
    (["From: " + "(" * 5000 + "a@good.test"], False, [], "", "unparseable (RecursionError)"),
    (["From: " + ", ".join(f"a{i}@good.test" for i in range(700))], False, [], "", f"longer than {FROM_BYTES}"),
]


@pytest.mark.parametrize("lines, readable, addresses, domain, why", POLICY)
def test_the_from_policy(lines, readable, addresses, domain, why) -> None:
    authors = parse_header(head("To: x@school.test", *lines)).authors
    assert authors.readable is readable
    assert list(authors.addresses) == addresses
    assert authors.domain == domain
    if why:
        assert why in (authors.no_domain_because if readable else "; ".join(authors.problems))
        assert why in authors.no_domain_because or not readable
    assert bool(authors.domain) != bool(authors.no_domain_because)


def test_the_author_domain_only_comes_with_a_readable_from() -> None:
    for lines, readable, *_ in POLICY:
        authors = parse_header(head(*lines)).authors
        assert readable or not authors.domain
        if authors.domain:
            assert authors.fields == 1 and authors.domains == (authors.domain,)


def test_from_domains_list_every_mailbox_readable_or_not() -> None:
    authors = parse_header(head("From: Eve <eve@Spammer.test>, other@second.test, x@[192.0.2.1]")).authors
    assert authors.domains == ("spammer.test", "second.test")
    assert [m.display_name for m in authors.mailboxes] == ["Eve", "", ""]
