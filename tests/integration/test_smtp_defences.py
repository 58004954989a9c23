"""SMTP-time defences against the real stack: NSD, slapd, Kafka, the ingress and its listeners.

Clients bind to 127.x addresses to play remote MTAs (deploy/local/dns/test.zone lists them):
127.0.2.10 is mx.good.test (forward-confirmed, listed nowhere), 127.0.1.66 is on zen.dnsbl.test.
127.0.0.1 is allow-listed in the local config (it skips DNSBL, FCrDNS, sender domain and
greylisting), so the LDAP checks are exercised from there. The test stack greylists for 2 s.
Every refusal must also be a row in the analytics with its reason code.
"""
from __future__ import annotations

import base64
import smtplib
import ssl
import time
import uuid

import pytest

from tests.integration.conftest import make_message, new_test_id

GOOD_MTA = "127.0.2.10"  # mx.good.test
LISTED_MTA = "127.0.1.66"  # zen.dnsbl.test 127.0.0.2
MAX = "max.mustermann@school.test"
GREYLIST_DELAY = 2.0  # POSTSTELLE_CHECKS__GREYLIST__DELAY in the test stack


def smtp_from(stack, ip: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", stack.smtp_port, source_address=(ip, 0), timeout=30)
    client.ehlo("client.test")
    return client


def submission(stack, implicit_tls: bool = True, ip: str = "127.0.0.1") -> smtplib.SMTP:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the stack's self-signed cert
    if implicit_tls:
        client = smtplib.SMTP_SSL("127.0.0.1", int(stack.env["POSTSTELLE_SUBMISSION__TLS_PORT"]),
                                  source_address=(ip, 0), timeout=30, context=context)
    else:
        client = smtplib.SMTP("127.0.0.1", int(stack.env["POSTSTELLE_SUBMISSION__PORT"]),
                              source_address=(ip, 0), timeout=30)
    client.ehlo("laptop.school.test")
    return client


def _plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def rcpt(client: smtplib.SMTP, address: str) -> tuple[int, str]:
    code, text = client.docmd("RCPT", f"TO:<{address}>")  # docmd: no quoting of odd forms by smtplib
    return code, text.decode()


def rejects(stack, reason_code: str, **where: str) -> list[list]:
    clauses = "".join(f" AND {column} = '{value}'" for column, value in where.items())
    return stack.sql("SELECT check_name, phase, reply_code, reply_enhanced FROM poststelle.events "
                     f"WHERE type = 'smtp_reject' AND reason_code = '{reason_code}'{clauses}")


def wait_reject(stack, reason_code: str, **where: str) -> list:
    return stack.wait_for(lambda: rejects(stack, reason_code, **where), timeout=30,
                          what=f"an smtp_reject row with reason {reason_code}")[0]


# ---- connection checks ---------------------------------------------------------------------------


def test_dnsbl_listed_client_is_refused_at_connect(stack):
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtp_from(stack, LISTED_MTA)
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    assert wait_reject(stack, "dnsbl_listed", client_ip=LISTED_MTA) == ["dnsbl", "connect", 554, "5.7.1"]


def test_dns_server_down_is_a_temporary_failure_never_a_250(stack):
    fresh_ip = f"127.0.5.{uuid.uuid4().int % 200 + 20}"  # never looked up before: nothing cached
    stack.hold("nsd")
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtp_from(stack, fresh_ip)
        assert refused.value.smtp_code == 451
        assert refused.value.smtp_error.startswith(b"4.7.1 ")
    finally:
        stack.release("nsd")
    assert wait_reject(stack, "dnsbl_tempfail", client_ip=fresh_ip)[:3] == ["dnsbl", "connect", 451]


# ---- greylisting ---------------------------------------------------------------------------------


def test_greylisting_defers_the_first_attempt_and_delivers_the_retry(stack):
    test_id = new_test_id()
    sender, to = f"newsletter-{test_id[:8]}@good.test", "max.mustermann@school.test"
    msg = make_message(test_id, to=to)
    with smtp_from(stack, GOOD_MTA) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
            client.sendmail(sender, [to], msg)
    code, text = deferred.value.recipients[to]
    assert code == 451 and text.startswith(b"4.7.1 ")
    time.sleep(GREYLIST_DELAY + 0.5)  # a well-behaved MTA retries later
    with smtp_from(stack, GOOD_MTA) as client:
        assert client.sendmail(sender, [to], msg) == {}
    stack.wait_for(lambda: stack.test_ids(to)[test_id], timeout=30, what="the delivery after the retry")
    results = stack.wait_for(
        lambda: (rows := stack.sql("SELECT verdict FROM poststelle.events WHERE type = 'smtp_check' "
                                   f"AND check_name = 'greylist' AND sender = '{sender}' ORDER BY time"))
        and len(rows) == 2 and rows, timeout=30, what="both greylisting decisions in the analytics")
    assert [r[0] for r in results] == ["delayed", "passed_after_retry"]
    assert wait_reject(stack, "greylisted", sender=sender) == ["greylist", "rcpt", 451, "4.7.1"]
    (day,) = stack.sql("SELECT delayed, passed_after_retry FROM poststelle.greylisting WHERE day = today()")
    assert day[0] >= 1 and day[1] >= 1


# ---- relay control -------------------------------------------------------------------------------

OPEN_RELAY_FORMS = [
    "r@ext.test",
    '"r@ext.test"',
    "r%ext.test@school.test",
    "ext.test!r@school.test",
    "@school.test:r@ext.test",
    '"r@ext.test"@school.test',
    "r@ext.test@school.test",
    "r@[127.0.0.1]",
]


def test_every_open_relay_form_is_refused_from_an_untrusted_client(stack):
    with smtp_from(stack, GOOD_MTA) as client:
        assert client.mail("probe@good.test")[0] == 250
        answers = {form: rcpt(client, form) for form in OPEN_RELAY_FORMS}
    refused = {form: code for form, (code, _) in answers.items() if 500 <= code < 600}
    assert refused.keys() == set(OPEN_RELAY_FORMS), answers
    assert wait_reject(stack, "relay_denied", client_ip=GOOD_MTA)[:3] == ["relay", "rcpt", 554]


def test_the_same_forms_from_an_authenticated_user_reach_the_smarthost(stack):
    from pipeline.localstack.smarthost import smarthost_dump_dir

    test_id = new_test_id()
    msg = (f"From: anna.schmidt@school.test\r\nTo: r@ext.test\r\nSubject: nach draussen\r\n"
           f"X-Test-Id: {test_id}\r\nMessage-ID: <{test_id}@school.test>\r\n\r\nHallo.\r\n").encode()
    with submission(stack) as client:
        client.login("anna.schmidt", "Anna2026!")
        assert client.mail("anna.schmidt@school.test")[0] == 250
        answers = {form: rcpt(client, form) for form in OPEN_RELAY_FORMS}
        assert {form: code for form, (code, _) in answers.items() if code != 250} == {}, answers
        assert client.data(msg)[0] == 250

    def dumped():
        return [p.read_bytes() for p in smarthost_dump_dir(stack.home).rglob("*")
                if p.is_file() and test_id.encode() in p.read_bytes()]

    (dump,) = stack.wait_for(dumped, timeout=30, what="the message at the smarthost")
    # smtp-sink writes one X-Rcpt-Args line per RCPT it got: the resolved final addresses, once each
    rcpts = sorted(line.split(b":", 1)[1].strip() for line in dump.splitlines() if line.startswith(b"X-Rcpt-Args:"))
    assert rcpts == [b"<r@[127.0.0.1]>", b"<r@ext.test>"], dump[:600]


# ---- recipients ----------------------------------------------------------------------------------


def test_recipient_checks_against_the_directory(stack):
    with smtp_from(stack, "127.0.0.1") as client:
        assert client.mail("sender@good.test")[0] == 250
        code, text = rcpt(client, "nobody.here@school.test")
        assert (code, text[:6]) == (550, "5.1.1 ")
        code, text = rcpt(client, "old.student@school.test")
        assert (code, text[:6]) == (550, "5.2.1 ") and "disabled" in text
        assert rcpt(client, "Max.Mustermann@school.test")[0] == 250  # case does not matter
        assert rcpt(client, "sekretariat@school.test")[0] == 250  # an alias
        for injection in ("*@school.test", '"*)(uid=*"@school.test'):  # match nothing: refused
            assert 550 <= rcpt(client, injection)[0] < 560, injection
    assert wait_reject(stack, "unknown_recipient") == ["recipient", "rcpt", 550, "5.1.1"]
    assert wait_reject(stack, "recipient_disabled") == ["recipient", "rcpt", 550, "5.2.1"]


def test_directory_down_is_451_but_postmaster_is_always_accepted(stack):
    never_seen = f"someone.{new_test_id()[:10]}@school.test"  # not in any cache
    stack.hold("slapd")
    try:
        with smtp_from(stack, "127.0.0.1") as client:
            assert client.mail("sender@good.test")[0] == 250
            code, text = rcpt(client, never_seen)
            assert (code, text[:6]) == (451, "4.4.3 ")
            assert rcpt(client, "postmaster@school.test")[0] == 250
            assert rcpt(client, "abuse@school.test")[0] == 250
    finally:
        stack.release("slapd")
    assert wait_reject(stack, "ldap_unavailable") == ["recipient", "rcpt", 451, "4.4.3"]


# ---- group policies ------------------------------------------------------------------------------


def test_parents_receive_only_from_parents_and_the_school(stack):
    with smtp_from(stack, "127.0.0.1") as client:
        assert client.mail("werbung@good.test")[0] == 250
        code, text = rcpt(client, "eltern.mustermann@school.test")
        assert (code, text[:6]) == (550, "5.7.1 ")
        client.rset()
        # a school address in MAIL FROM on port 25 is only a claim: it counts after AUTH
        assert client.mail("eltern.mueller@school.test")[0] == 250
        assert rcpt(client, "eltern.mustermann@school.test")[0] == 550
    with submission(stack) as client:
        client.login("eltern.mueller", "Mueller2026!")
        assert client.mail("eltern.mueller@school.test")[0] == 250
        assert rcpt(client, "eltern.mustermann@school.test")[0] == 250  # another parent: accepted
    assert wait_reject(stack, "group_policy", recipient="eltern.mustermann@school.test")[:3] == [
        "group_policy", "rcpt", 550]


def test_class_groups_accept_mail_only_from_staff(stack):
    with submission(stack) as client:
        client.login("anna.schmidt", "Anna2026!")  # class teacher, staff
        assert client.mail("anna.schmidt@school.test")[0] == 250
        assert rcpt(client, "9a@school.test")[0] == 250
    with submission(stack) as client:
        client.login("max.mustermann", "Max2026!")  # a student
        assert client.mail("max.mustermann@school.test")[0] == 250
        code, text = rcpt(client, "9a@school.test")
        assert (code, text[:6]) == (550, "5.7.1 ")


# ---- submission ----------------------------------------------------------------------------------


def test_auth_without_tls_is_refused(stack):
    with submission(stack, implicit_tls=False) as client:
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", f"PLAIN {_plain('anna.schmidt', 'Anna2026!')}")
        assert code == 530, text


def test_wrong_passwords_are_refused_and_rate_limited(stack):
    ip = f"127.0.6.{uuid.uuid4().int % 200 + 20}"  # its own address: the limit is per client IP
    with submission(stack, ip=ip) as client:  # one AUTH each (smtplib's login() tries every mechanism)
        codes = [client.docmd("AUTH", f"PLAIN {_plain('anna.schmidt', 'falsch')}")[0] for _ in range(6)]
    assert codes == [535] * 5 + [454]
    with submission(stack, ip=ip) as client:
        code, _ = client.docmd("AUTH", f"PLAIN {_plain('anna.schmidt', 'Anna2026!')}")
    assert code == 454  # even the right password, for now
    assert wait_reject(stack, "auth_failed", client_ip=ip)[:3] == ["auth", "auth", 535]
    assert wait_reject(stack, "auth_rate_limited", client_ip=ip)[:3] == ["auth", "auth", 454]


def test_sending_as_someone_else_is_refused_and_as_oneself_delivered(stack):
    test_id = new_test_id()
    with submission(stack) as client:
        client.login("anna.schmidt@school.test", "Anna2026!")
        code, text = client.mail("max.mustermann@school.test")
        assert (code, text[:6]) == (553, b"5.7.1 ")
        forged = make_message(new_test_id(), to="lena.mueller@school.test").replace(
            b"From: sender@example.org", b"From: max.mustermann@school.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("anna.schmidt@school.test", ["lena.mueller@school.test"], forged)
        assert refused.value.smtp_code == 553
        own = make_message(test_id, to="lena.mueller@school.test").replace(
            b"From: sender@example.org", b"From: Sekretariat <sekretariat@school.test>")
        assert client.sendmail("anna.schmidt@school.test", ["lena.mueller@school.test"], own) == {}
    stack.wait_for(lambda: stack.test_ids("lena.mueller@school.test")[test_id], timeout=30,
                   what="the submitted message in lena's mailbox")
    assert wait_reject(stack, "sender_not_owned")[:3] == ["sender_login", "mail", 553]



def test_a_message_that_went_round_50_times_is_refused_as_a_mail_loop(stack):
    """ingress.max_received_headers (50, the default): a 51st Received field is a loop, 554 5.4.6 at DATA."""
    test_id = new_test_id()
    hops = [b"Received: from loop%d.example.org by loop%d.example.org; Mon, 1 Jan 2024 10:00:00 +0000\r\n" % (i + 1, i)
            for i in range(51)]
    with smtp_from(stack, "127.0.0.1") as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("sender@example.org", [MAX], b"".join(hops) + make_message(test_id))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.4.6 Too many hops: mail loop suspected")
        client.sendmail("sender@example.org", [MAX], b"".join(hops[1:]) + make_message(test_id))  # 50: taken
    assert wait_reject(stack, "too_many_hops") == ["hops", "data", 554, "5.4.6"]
    stack.wait_for(lambda: stack.test_ids(MAX)[test_id] == 1, what="the message that came through 50 hops")


def test_an_mta_may_start_tls_on_the_mx_port_and_the_received_line_says_so(stack):
    test_id = new_test_id()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the stack's self-signed cert
    with smtp_from(stack, "127.0.0.1") as client:
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=context)
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.sendmail("sender@example.org", [MAX], make_message(test_id))
    stack.wait_for(lambda: stack.test_ids(MAX)[test_id] == 1, what="the message sent over TLS")
    (raw,) = [m for m in stack.messages(MAX) if test_id.encode() in m]
    assert b" with ESMTPS id " in raw
