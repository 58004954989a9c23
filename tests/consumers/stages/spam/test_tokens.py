"""The Bayes tokenizer: what it keeps, what it leaves out, and that a delivered copy is the same message."""
from __future__ import annotations

import numpy as np
import pytest

from consumers.stages.spam.tokens import (MAX_TOKENS, TokenizerOptions, TokensInvalid, pack_tokens, token_digest,
                                          token_hashes, tokenize, unpack_tokens)
from pipeline.mail.message import parse_message
from pipeline.mail.trace import received_header
from schemas.events import BlobRef, Client, Envelope, Received

SENT = (b"Received: from [10.1.2.3] (helo=pc17) by mail.sender.example with esmtpa id 1aB2cD-0004xy-Kq;\r\n"
        b"\tMon, 24 Nov 2025 09:00:00 +0100\r\n"
        b"From: \"Anna Schmidt\" <anna.schmidt@sender.example>\r\n"
        b"To: max@school.test\r\n"
        b"Subject: Elternabend am Dienstag\r\n"
        b"Date: Mon, 24 Nov 2025 09:00:00 +0100\r\n"
        b"Message-ID: <20251124.abc123@sender.example>\r\n"
        b"List-Id: <eltern.school.test>\r\n"
        b"X-Mailer: Webmail 3.2\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1; b=AAAA\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Liebe Eltern, der Elternabend beginnt um 19 Uhr in der Mensa. Free!!! $31,000,000\r\n"
        b"Anmeldung bei anna.schmidt@sender.example oder https://www.schule.example/anmeldung\r\n")


def ingress_line(helo: str = "mail.sender.example", reverse: str = "mail.sender.example",
                 ip: str = "192.0.2.25") -> bytes:
    return received_header(helo=helo, client_ip=ip, reverse_name=reverse, by_host="mx.school.test",
                           protocol="ESMTPS", message_id="0190abcd", recipients=["max@school.test"])


def received(helo: str = "mail.sender.example", reverse: str = "mail.sender.example", ip: str = "192.0.2.25"):
    return Received(envelope=Envelope(mail_from="anna@sender.example", rcpt_to=["max@school.test"]),
                    client=Client(ip=ip, port=4000, helo=helo, reverse_name=reverse),
                    blob=BlobRef(sha256="00" * 32, size=1))


def tokens_of(raw: bytes, received_event=None, options=TokenizerOptions()) -> list[str]:
    return tokenize(parse_message(raw), received_event, options)


def test_body_words_are_case_folded_and_grey_words_left_out():
    tokens = tokens_of(SENT)
    assert {"liebe", "eltern", "elternabend", "beginnt", "mensa"} <= set(tokens)
    assert "Liebe" not in tokens
    assert "der" in tokens and "um" not in tokens  # shorter than 3 bytes
    assert "the" not in tokens_of(SENT.replace(b"Liebe", b"the"))  # the stop list


def test_punctuation_kept_and_also_stripped():
    tokens = set(tokens_of(SENT))
    assert {"free!!!", "free", "$31,000,000", "31000000"} <= tokens


def test_addresses_and_hosts_in_the_body_are_split():
    tokens = set(tokens_of(SENT))
    assert {"U*anna.schmidt", "D*sender.example", "D*example"} <= tokens
    assert {"url:h:www.schule.example", "url:d:schule.example"} <= tokens


def test_header_tokens_carry_the_field_name():
    tokens = set(tokens_of(SENT))
    assert {"Hfrom:U*anna.schmidt", "Hfrom:D*sender.example", "Hfrom:anna", "Hfrom:schmidt"} <= tokens
    assert {"Hto:U*max", "Hto:D*school.test"} <= tokens
    assert {"Hsubject:elternabend", "Hsubject:dienstag"} <= tokens
    assert {"Hua:webmail", "Hmid:sender", "Hmid:example"} <= tokens
    assert "Hdkim-signature:present" in tokens and not any("rsa-sha256" in t for t in tokens)
    assert {"mime:text/plain", "mime:cs:utf-8", "mime:leaves:1"} <= tokens


def test_dates_list_headers_and_own_headers_are_left_out():
    forged = (b"X-Spam-Status: No, score=-5\r\nX-Spam-Score: -5\r\nX-IMT-Spam-Score: 0.0\r\n"
              b"Authentication-Results: mx.school.test; spf=pass\r\nX-Own-Verdict: clean\r\n" + SENT)
    tokens = tokens_of(forged, options=TokenizerOptions.for_site(header_names=["X-Own-Verdict"]))
    assert not [t for t in tokens if t.startswith(("Hdate:", "Hlist-id:", "Hx-spam", "Hx-imt",
                                                   "Hauthentication-results:", "Hx-own-verdict:"))]
    assert "2025" not in tokens  # the Date field's words are not counted anywhere
    assert set(tokens) == set(tokens_of(SENT))


def test_subject_tags_are_removed():
    tagged = SENT.replace(b"Subject: Elternabend", b"Subject: {SPAM?} [Probe] Elternabend")
    tokens = tokens_of(tagged, options=TokenizerOptions.for_site(subject_tags=["{SPAM?}", "[Probe]"]))
    assert tokens == tokens_of(SENT)


def test_long_words_are_summarised():
    tokens = tokens_of(SENT + b"Supercalifragilisticexpialidocious \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae"
                              b"\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88\xe3\x81\xa7\xe3\x81\x99\xe3\x80"
                              b"\x82\xe9\x95\xb7\xe3\x81\x84\xe6\x96\x87\xe3\x81\xa7\xe3\x81\x99\r\n")
    assert "sk:superca" in tokens and "supercalifragilisticexpialidocious" not in tokens
    assert {"u8:日", "u8:本", "u8:語"} <= set(tokens)


def test_hops_client_from_our_line_or_the_event_and_the_origin():
    scanned = ingress_line() + SENT
    tokens = set(tokens_of(scanned))
    assert {"hop:helo:mail.sender.example", "hop:rdns:mail.sender.example", "hop:helo=rdns", "hop:ip:192.0.2"} <= tokens
    assert {"Hreceived:10.1.2", "Hreceived:ip*10.1.2.3", "Hreceived:pc17"} <= tokens
    hops = [t for t in tokens if t.startswith("Hreceived:")]
    assert not [t for t in hops if "1ab2cd" in t or "2025" in t or "mon" in t or "09" in t]  # queue id, date
    assert not [t for t in tokens if "mx.school.test" in t or "0190abcd" in t]  # our line: only the client
    # a file without our line gets the same client tokens from the received event
    assert tokens == set(tokens_of(SENT, received()))
    assert not [t for t in tokens_of(SENT) if t.startswith("hop:")]


def test_unknown_reverse_name_and_address_literal_helo():
    tokens = set(tokens_of(ingress_line(helo="[192.0.2.25]", reverse="") + SENT))
    assert {"hop:rdns:none", "hop:helo-literal", "hop:ip:192.0.2"} <= tokens
    assert tokens == set(tokens_of(SENT, received(helo="[192.0.2.25]", reverse="")))


def test_a_delivered_copy_is_the_same_message():
    scanned = ingress_line() + SENT
    delivered = (b"Return-Path: <anna@sender.example>\r\nDelivered-To: max@school.test\r\n"
                 b"Received: from mx.school.test by imap.school.test with LMTP id x7; Mon, 24 Nov 2025 09:00:02 +0000\r\n"
                 b"X-Spam-Flag: YES\r\nX-Spam-Score: 7.5\r\nAuthentication-Results: mx.school.test; dkim=pass\r\n"
                 b"X-Added-Later: by some filter\r\n"
                 + scanned.replace(b"Subject: Elternabend", b"Subject: {SPAM!} Elternabend"))
    first, second = token_hashes(tokens_of(scanned)), token_hashes(tokens_of(delivered))
    assert token_digest(first) == token_digest(second)
    assert token_digest(first) != token_digest(token_hashes(tokens_of(scanned + b"P.S. noch etwas\r\n")))


def test_html_is_rendered_and_parts_counted():
    html = (b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=\"----=_Part_12ab\"\r\n\r\n"
            b"------=_Part_12ab\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"<html><body><p>Gr=FC=DFe <a href=3D\"http://203.0.113.9/x\">hier klicken</a></p></body></html>\r\n"
            b"------=_Part_12ab--\r\n")
    tokens = set(tokens_of(html))
    assert {"grüße", "hier", "klicken", "url:ip:203.0.113", "mime:text/html", "mime:cte:quoted-printable",
            "mime:cs:iso-8859-1", "Hcontent-type:multipart", "Hcontent-type:alternative"} <= tokens
    assert not [t for t in tokens if "<p>" in t or "href" in t]
    assert {"Hcontent-type:phrt", "Hcontent-type:hhhh"} <= tokens  # the boundary's shape, not its value


def test_attachments_give_type_extension_and_digest():
    raw = (b"From: a@b.example\r\nSubject: Rechnung\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nAnbei\r\n"
           b"--b1\r\nContent-Type: application/zip; name=\"Rechnung.ZIP\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"UEsDBAoAAAAAAA==\r\n--b1--\r\n")
    tokens = set(tokens_of(raw))
    assert {"mime:application/zip", "mime:ext:zip", "mime:leaves:2"} <= tokens
    assert any(t.startswith("mime:sha:") and len(t) == len("mime:sha:") + 16 for t in tokens)


def test_tokens_are_bounded_and_in_a_stable_order():
    words = " ".join(f"wort{i:06d}" for i in range(20_000)).encode()
    raw = SENT + words + b"\r\n"
    first, second = tokens_of(raw), tokens_of(raw)
    assert first == second
    assert len(first) == MAX_TOKENS
    assert first[0].startswith("Hfrom:") or first[0].startswith("H")  # the header first


def test_hashes_are_distinct_sorted_and_round_trip():
    hashes = token_hashes(["b", "a", "a", "c"])
    assert hashes.dtype == np.uint64 and len(hashes) == 3 and np.all(np.diff(hashes.astype(np.float64)) > 0)
    assert np.array_equal(unpack_tokens(pack_tokens(hashes)), hashes)
    assert token_digest(hashes) == token_digest(token_hashes(["c", "b", "a"]))
    assert len(token_digest(hashes)) == 64


@pytest.mark.parametrize("text, reason", [
    ("not base64!", "not base64"),
    ("AAAA", "not a multiple of 8"),
    (pack_tokens(np.array([2, 1], np.uint64)), "not distinct, sorted"),
    (pack_tokens(np.array([0, 1], np.uint64)), "non-zero"),
])
def test_bad_packed_tokens_are_refused(text, reason):
    with pytest.raises(TokensInvalid, match=reason):
        unpack_tokens(text)
    with pytest.raises(TokensInvalid, match="more than 2"):
        unpack_tokens(pack_tokens(np.array([1, 2, 3], np.uint64)), limit=2)
