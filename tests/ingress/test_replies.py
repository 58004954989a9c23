"""Enhanced status codes (RFC 2034/3463) on every 2xx/4xx/5xx reply, added where aiosmtpd omits them."""
from __future__ import annotations

import re

import pytest

from ingress.replies import Replies, with_enhanced_code


def test_adds_the_default_code_to_a_500():
    assert with_enhanced_code("500 Error: bad syntax") == "500 5.5.2 Error: bad syntax"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        ("421 Too many errors", "421 4.3.0 Too many errors"),
        ("555 odd", "555 5.0.0 odd"),  # no table entry: the class default
        ("251 will forward", "251 2.0.0 will forward"),
    ],
)
def test_default_codes(reply, expected):
    assert with_enhanced_code(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "250 2.1.0 Sender OK",
        "554 5.7.1 Relaying denied",
        "451 4.3.0 Temporary failure",
        "250 2.0.0",  # code only, nothing after it
        Replies.BARE_LINE_ENDING,
        Replies.NUL_CHARACTER,
        Replies.PERSIST_FAILED,
        Replies.queued("abc"),
    ],
)
def test_keeps_existing_codes(reply):
    assert with_enhanced_code(reply) == reply


@pytest.mark.parametrize("reply", ["354 End data with <CR><LF>.<CR><LF>", "334 VXNlcm5hbWU6", "199 x"])
def test_leaves_other_classes_alone(reply):
    assert with_enhanced_code(reply) == reply


def test_leaves_the_220_greeting_alone():
    assert with_enhanced_code("220 mx.school.test ESMTP poststelle") == "220 mx.school.test ESMTP poststelle"


def test_multi_line_continuation_lines():
    assert with_enhanced_code("250-mx.school.test") == "250-2.0.0 mx.school.test"
    assert with_enhanced_code("250-2.0.0 SIZE 1000") == "250-2.0.0 SIZE 1000"
    assert with_enhanced_code("250 HELP") == "250 2.0.0 HELP"


def test_a_bare_code_gets_a_code_without_trailing_space():
    assert with_enhanced_code("250 ") == "250 2.0.0"


def test_short_or_odd_input_is_unchanged():
    assert with_enhanced_code("") == ""
    assert with_enhanced_code("25") == "25"


def test_looks_like_a_code_but_is_text():
    # "5.5" is not an enhanced code: the default one is added in front
    assert with_enhanced_code("500 5.5 not a code") == "500 5.5.2 5.5 not a code"


def test_every_fixed_reply_has_an_enhanced_code_of_its_class():
    pattern = re.compile(r"^(\d)\d\d ([245])\.\d{1,3}\.\d{1,3} \S")
    for name, value in vars(Replies).items():
        if name.isupper():
            match = pattern.match(value)
            assert match and match.group(1) == match.group(2), name
