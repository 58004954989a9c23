"""Each rule kind on crafted messages; the RE2 sets agree with rule-by-rule matching; metas; order."""
from __future__ import annotations

import random

import re2

from consumers.stages.spam.rulefile import Regex
from tests.consumers.stages.spam.scanning import context, fired, message, rules

HTML = "text/html; charset=utf-8"


def test_header_rules_read_decoded_raw_address_and_name_views(tmp_path):
    ruleset = rules(tmp_path, "\n".join([
        "header DECODED Subject =~ /^Grüße aus Köln$/",
        "header RAW Subject:raw =~ /=\\?utf-8\\?q\\?/i",
        "header NOT_RAW Subject =~ /=\\?utf-8/",
        "header ADDR From:addr =~ /^erika@good\\.test$/",
        "header NAME From:name =~ /^Erika Musterfrau$/",
        "header CC_ADDR ToCc:addr =~ /^carl@school\\.test$/m",
        "header TO_NAME To:name =~ /Max M/",
        "header ENVELOPE EnvelopeFrom =~ /@good\\.test$/",
        "header ALL_FIELDS ALL =~ /^X-Campaign: 42$/m",
        "header ABSENT_NEGATED X-Nothing !~ /./",
        "header PRESENT_NEGATED Subject !~ /Grüße/",
        "header HAS_CC exists:Cc",
        "header HAS_BCC exists:Bcc",
    ]) + "\n")
    raw = message(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=", to='"Max M." <max@school.test>',
                  headers="Cc: Carl <carl@school.test>\nX-Campaign: 42\n")
    assert fired(ruleset, context(raw)) == ["DECODED", "RAW", "ADDR", "NAME", "CC_ADDR", "TO_NAME", "ENVELOPE",
                                            "ALL_FIELDS", "ABSENT_NEGATED", "HAS_CC"]


def test_several_fields_of_a_name_are_read_one_per_line(tmp_path):
    ruleset = rules(tmp_path, "header BOTH Received =~ /^from a\\n.*from b$/\n")
    raw = message(headers="Received: from a\nReceived: from b\n")
    assert fired(ruleset, context(raw)) == ["BOTH"]


def test_body_rules_see_the_subject_then_paragraphs_with_wrapped_lines_joined(tmp_path):
    ruleset = rules(tmp_path, "\n".join([
        "body SUBJECT_FIRST /^Meeting notes$/",
        "body WRAPPED /limited time offer/",
        "body PARAGRAPH_START /^second paragraph/",
        "body NOT_ACROSS /offer.*second/",
        "body CASE /LIMITED/i",
        "body MARKUP /<b>/",
    ]) + "\n")
    text = "Buy during this limited\r\ntime   offer.\r\n\r\n  second paragraph <b>bold</b> here\r\n"
    assert fired(ruleset, context(message(body=text))) == ["SUBJECT_FIRST", "WRAPPED", "PARAGRAPH_START", "CASE",
                                                          "MARKUP"]


def test_body_rules_see_html_rendered_and_rawbody_rules_the_markup(tmp_path):
    ruleset = rules(tmp_path, "body RENDERED /^Hello world$/m\nbody NO_TAGS /<b>/\nrawbody MARKUP /<b>world<\\/b>/\n"
                              "rawbody NO_SCRIPT_TEXT /alert/\nbody SCRIPT_HIDDEN /alert/\n")
    raw = message(body="<html><script>alert(1)</script><p>Hello <b>world</b></p></html>", content_type=HTML)
    assert fired(ruleset, context(raw)) == ["RENDERED", "MARKUP", "NO_SCRIPT_TEXT"]


def test_uri_rules_see_each_link_and_uri_domain_rules_its_registrable_domain(tmp_path):
    ruleset = rules(tmp_path, "\n".join([
        "uri PATH /\\/win\\.php\\?id=/",
        "uri ANCHORED /^https:\\/\\/shop\\.example\\.com\\/$/",
        "uri_domain DOMAIN /^example\\.com$/",
        "uri_domain SUBDOMAIN_IS_NOT_A_DOMAIN /^www\\./",
        "uri_domain ADDRESS /^127\\.0\\.0\\.1$/",
    ]) + "\n")
    body = ('<a href="http://www.bad-link.test/win.php?id=7">x</a> <a href="https://shop.example.com/">y</a> '
            '<a href="http://0x7f.1/">z</a>')
    assert fired(ruleset, context(message(body=body, content_type=HTML))) == ["PATH", "ANCHORED", "DOMAIN", "ADDRESS"]


def test_full_rules_see_the_stored_bytes(tmp_path):
    ruleset = rules(tmp_path, "full HEADER_AND_BODY /X-Tool: mailer\\r\\n(?s:.*)signature-x/\nfull NOT /nowhere/\n")
    raw = message(headers="X-Tool: mailer\n", body="text\r\n-- \r\nsignature-x\r\n")
    assert fired(ruleset, context(raw)) == ["HEADER_AND_BODY"]


def test_meta_rules_combine_with_logic_and_arithmetic_and_sub_rules_stay_silent(tmp_path):
    ruleset = rules(tmp_path, "\n".join([
        "body __A /alpha/", "body __B /beta/", "body __C /gamma/", "body D /delta/", "score D 0",
        "meta TWO (__A + __B + __C) >= 2", "meta ALL_THREE __A && __B && __C", "meta A_NOT_C __A && !__C",
        "meta NESTED TWO || ALL_THREE", "meta READS_UNSCORED D && __A", "meta NEVER -1 + 1",
    ]) + "\n")
    assert fired(ruleset, context(message(body="alpha beta delta"))) == ["TWO", "A_NOT_C", "NESTED", "READS_UNSCORED"]
    assert fired(ruleset, context(message(body="alpha beta gamma"))) == ["TWO", "ALL_THREE", "NESTED"]
    assert fired(ruleset, context(message(body="gamma"))) == []


def test_hits_come_in_file_order_with_scores_and_descriptions(tmp_path):
    ruleset = rules(tmp_path, "meta LAST FIRST\nbody FIRST /x/\ndescribe FIRST the first\nscore FIRST -0.5\n")
    hits = ruleset.evaluate(context(message(body="x")))
    assert [(h.name, h.score, h.description) for h in hits] == [("LAST", 1.0, ""), ("FIRST", -0.5, "the first")]


def test_the_sets_find_exactly_what_each_pattern_finds_alone(tmp_path):
    """RE2::Set matches all body rules in one pass; it must agree with searching each pattern."""
    patterns = [r"\bfree\b", r"(?:a|b)+c", r"^x", r"y$", r"[0-9]{3,}", r"\$\s?\d", r"(?s)q.*z", r"é+", r"\bno\s+way\b",
                r"[^\x00-\x7f]{2}", r"(a+)+b", r"!{3}"]
    ruleset = rules(tmp_path, "".join(f"body R{i} /{p}/i\n" for i, p in enumerate(patterns)))
    alphabet = "abcxyzqéfre $!0123456789\n\n no way FREE\t"
    randomness = random.Random(11)
    for _ in range(300):
        body = "".join(randomness.choice(alphabet) for _ in range(randomness.randrange(0, 120)))
        ctx = context(message(subject="s", body=body))
        scanned = ctx.message.header.subject + "\n" + "\n".join(
            " ".join(chunk.split()) for chunk in re2.split(r"\n[ \t\r\f\v]*\n", ctx.message.texts[0].text)
            if chunk.split())
        expected = [f"R{i}" for i, p in enumerate(patterns)
                    if re2.search(Regex(p, "i").pattern("body"), scanned)]
        assert fired(ruleset, ctx) == expected, body


def test_only_rules_that_can_count_are_compiled_into_the_sets(tmp_path):
    ruleset = rules(tmp_path, "body A /a/\nbody B /b/\nscore B 0\nbody __C /c/\nbody __D /d/\nmeta E __D\n")
    assert ruleset.names == ("A", "E")
    body_set = next(s for s in ruleset._sets if s.kind == "body")
    assert body_set.names == ["A", "__D"]
