"""The fast path for simple From fields gives exactly what the RFC 5322 parser gives, or steps aside."""
from __future__ import annotations

import random
from email.policy import default as rfc5322

from pipeline.mail.headers import Mailbox, _simple_mailbox

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"


def _parser(value: str) -> tuple[list[Mailbox], bool]:
    """The mailboxes the full parser reads, and whether it found any defect."""
    parsed = rfc5322.header_factory("from", value)
    found = [Mailbox(address=a.addr_spec, local_part=a.username, domain=a.domain, display_name=a.display_name,
                     group=g.display_name or "") for g in parsed.groups for a in g.addresses]
    return found, bool(parsed.defects)


def _atom(rng: random.Random) -> str:
    return "".join(rng.choice(ATEXT) for _ in range(rng.randint(1, 6)))


def _value(rng: random.Random) -> str:
    local = ".".join(_atom(rng) for _ in range(rng.randint(1, 3)))
    domain = ".".join(_atom(rng) for _ in range(rng.randint(1, 3)))
    address = f"{local}@{domain}"
    form = rng.randrange(6)
    if form == 0:
        return address
    if form == 1:
        return f"<{address}>"
    if form == 2:
        return f"{' '.join(_atom(rng) for _ in range(rng.randint(1, 3)))}{rng.choice(['', ' '])}<{address}>"
    if form == 3:
        quoted = "".join(rng.choice(ATEXT + " ,.;:@<>()[]") for _ in range(rng.randint(0, 12)))
        return f'"{quoted}"{rng.choice(["", " "])}<{address}>'
    tricky = [f"{address} (comment)", f"Dr. Anna <{address}>", f"=?utf-8?q?Anna?= <{address}>",
              f'"a\\"b" <{address}>', f"Anna  Schmidt <{address}>", f"<{address}>, <{address}>",
              f"group: <{address}>;", f"Änna <{address}>", f"<{local}@[127.0.0.1]>", f"{local}.@{domain}"]
    return rng.choice(tricky)


def test_the_fast_path_agrees_with_the_parser_wherever_it_answers():
    rng = random.Random(14)
    answered = 0
    for _ in range(6000):
        value = _value(rng)
        simple = _simple_mailbox(value)
        if simple is None:
            continue
        answered += 1
        parsed, defective = _parser(value)
        assert (parsed, defective) == ([simple], False), value
    assert answered > 3000  # the common forms do take the fast path


def test_common_forms_take_the_fast_path_and_others_do_not():
    assert _simple_mailbox('"Anna Schmidt" <anna@school.test>') == Mailbox(
        address="anna@school.test", local_part="anna", domain="school.test", display_name="Anna Schmidt")
    assert _simple_mailbox("Anna Schmidt <anna@school.test>").display_name == "Anna Schmidt"
    assert _simple_mailbox("<bench@example.org>").address == "bench@example.org"
    assert _simple_mailbox("bench@example.org").domain == "example.org"
    for value in ["=?utf-8?q?Anna?= <a@b.test>", "a@b.test (Anna)", "Anna <a@b.test>, b@c.test", "Dr. A <a@b.test>",
                  '"a\\"b" <a@b.test>', "Änna <a@b.test>", "<a@[127.0.0.1]>", "", "<>", "a.@b.test"]:
        assert _simple_mailbox(value) is None, value
