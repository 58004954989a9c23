"""The expand stage against the real stack: groups, nested groups, loops, aliases, limits, frozen members.

Groups of the demo directory (deploy/local/directory.ldif): 9a (max, lena; owner anna), jahrgang9
(9a and 9b), schach (tom, itself, and schach-team, which holds lena and schach). Groups the tests
need beyond those are added as the rootdn, with names of their own.
"""
from __future__ import annotations

import email
import email.policy
import time

import ldap3

from pipeline.localstack.slapd import ROOT_DN, ROOT_PASSWORD
from tests.integration.conftest import FULL_BOX, NO_MAILBOX, make_message, new_test_id, read_all, send, write_users
from tests.integration.test_recipients import _events
from tests.integration.test_smtp_defences import submission
from tests.integration.test_verdict import queued_id, topics

ANNA = "anna.schmidt@school.test"
MAX = "max.mustermann@school.test"
LENA = "lena.mueller@school.test"
TOM = "tom.becker@school.test"
PEOPLE = "ou=people,dc=school,dc=test"
GROUPS = "ou=groups,dc=school,dc=test"


def _admin(stack) -> ldap3.Connection:
    server = ldap3.Server("127.0.0.1", port=int(stack.env["POSTSTELLE_LDAP__PORT"]), connect_timeout=5)
    return ldap3.Connection(server, ROOT_DN, ROOT_PASSWORD, auto_bind=True, receive_timeout=10)


def _add_group(stack, cn: str, classes: list[str], attributes: dict) -> str:
    with _admin(stack) as conn:
        assert conn.add(f"cn={cn},{GROUPS}", [*classes, "extensibleObject"],
                        {"cn": cn, "mail": f"{cn}@school.test", **attributes}), conn.result
    return f"{cn}@school.test"


def _from_anna(stack, test_id: str, to: list[str]) -> str:
    """anna submits (AUTH) one message to `to`; its message id."""
    msg = (f"From: Anna Schmidt <{ANNA}>\r\nTo: {', '.join(to)}\r\nSubject: an die Klasse\r\nX-Test-Id: {test_id}\r\n"
           f"Message-ID: <{test_id}@school.test>\r\n\r\nHallo.\r\n").encode()
    with submission(stack) as client:
        client.login("anna.schmidt", "Anna2026!")
        assert client.mail(ANNA)[0] == 250
        for rcpt in to:
            assert client.rcpt(rcpt)[0] == 250, rcpt
        code, reply = client.data(msg)
    assert code == 250, reply
    return queued_id(reply)


def _expand_result(stack, message_id: str) -> dict:
    def found():
        rows = [e for e in _events(stack, message_id)
                if e["type"] == "stage_result" and e["result"]["stage"] == "expand"]
        return rows[0] if rows else None

    return stack.wait_for(found, what="the expand stage's result in analytics")


def _copies(stack, address: str, test_id: str) -> int:
    return stack.test_ids(address)[test_id]


def _dsns_mentioning(stack, mailbox: str, text: str) -> list[email.message.EmailMessage]:
    found = []
    for raw in stack.messages(mailbox):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report" and text.encode() in raw:
            found.append(msg)
    return found


def _quiet(seconds: float = 3.0) -> None:
    """Let a stray extra copy or DSN arrive, if one were on its way."""
    time.sleep(seconds)


def test_anna_to_9a_reaches_max_and_lena_once_and_no_dsn(stack):
    test_id = new_test_id()
    message_id = _from_anna(stack, test_id, ["9a@school.test"])
    stack.wait_for(lambda: _copies(stack, MAX, test_id) and _copies(stack, LENA, test_id),
                   what="max's and lena's copies")
    result = _expand_result(stack, message_id)
    assert [(r["stage"], r["recipient"], sorted(r["into"])) for r in result["replacements"]] == [
        ("expand", "9a@school.test", [LENA, MAX])]
    assert sorted(result["recipients"]) == [LENA, MAX]
    (group,) = result["result"]["details"]["groups"]
    assert (group["group"], group["name"], group["bounces_to"]) == ("9a@school.test", "9a", ANNA)
    outcomes = read_all(stack, topics(stack).outcomes, lambda e: e.message_id == message_id)
    assert [(o.recipients, sorted(o.into)) for o in outcomes if o.disposition == "replaced"] == [
        (["9a@school.test"], [LENA, MAX])]
    _quiet()
    assert (_copies(stack, MAX, test_id), _copies(stack, LENA, test_id)) == (1, 1)
    assert _dsns_mentioning(stack, ANNA, test_id) == []


def test_nested_group_and_a_loop_reach_each_member_once(stack):
    test_id = new_test_id()
    # tom: in 9b (through jahrgang9), in schach, and addressed himself; lena: in 9a and schach-team
    message_id = _from_anna(stack, test_id, ["jahrgang9@school.test", "schach@school.test", TOM])
    people = (MAX, LENA, TOM)
    stack.wait_for(lambda: all(_copies(stack, p, test_id) for p in people), what="every member's copy")
    result = _expand_result(stack, message_id)
    groups = {g["group"]: g for g in result["result"]["details"]["groups"]}
    assert groups["jahrgang9@school.test"]["nested"] == ["9a@school.test", "9b@school.test"]
    assert sorted(groups["schach@school.test"]["loops"]) == ["schach-team@school.test -> schach@school.test",
                                                             "schach@school.test -> schach@school.test"]
    assert sorted(result["recipients"]) == sorted(people)
    _quiet()
    assert [_copies(stack, p, test_id) for p in people] == [1, 1, 1]


def test_sekretariat_arrives_in_annas_mailbox(stack):
    test_id = new_test_id()
    send(make_message(test_id, to="sekretariat@school.test"), ["sekretariat@school.test"], port=stack.smtp_port)
    stack.wait_for(lambda: _copies(stack, ANNA, test_id), what="the alias's mail in anna's mailbox")
    assert not stack.maildir("sekretariat@school.test").exists()


def test_member_bounces_go_to_the_group_owner(stack):
    """bounces_to = "owner" (the local config): gone.one has no Dovecot mailbox (550); the DSN goes to
    the owner, anna, not to the outside sender; max's copy carries anna as its envelope sender."""
    group = _add_group(stack, "ausflug", ["groupOfNames"], {
        "owner": f"uid=anna.schmidt,{PEOPLE}",
        "member": [f"uid=max.mustermann,{PEOPLE}", f"uid={NO_MAILBOX[0].split('@')[0]},{PEOPLE}"]})
    test_id = new_test_id()
    send(make_message(test_id, to=group), [group], port=stack.smtp_port)
    dsn = stack.wait_for(lambda: _dsns_mentioning(stack, ANNA, NO_MAILBOX[0]) and
                         [d for d in _dsns_mentioning(stack, ANNA, test_id)], what="the DSN to the owner")
    assert len(dsn) == 1
    (copy,) = [raw for raw in stack.messages(MAX) if test_id.encode() in raw]
    assert copy.startswith(f"Return-Path: <{ANNA}>".encode())


def test_members_added_after_acceptance_do_not_get_it_on_a_retry(stack):
    group = _add_group(stack, "frozen", ["groupOfNames"], {
        "member": [f"uid={FULL_BOX.split('@')[0]},{PEOPLE}", f"uid=max.mustermann,{PEOPLE}"]})
    test_id = new_test_id()
    big = make_message(test_id, to=group, body=("x" * 78 + "\r\n") * 130)  # over full.box's 1K quota: deferred
    try:
        send(big, [group], port=stack.smtp_port)
        stack.wait_for(lambda: FULL_BOX in stack.cli("queue").stdout, timeout=30, what="full.box deferred")
        assert _copies(stack, MAX, test_id) == 1
        with _admin(stack) as conn:  # tom joins after acceptance, before the retry
            assert conn.modify(f"cn=frozen,{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [f"uid=tom.becker,{PEOPLE}"])]})
        write_users(stack.home, quota="100M")
        stack.wait_for(lambda: _copies(stack, FULL_BOX, test_id), timeout=30, what="the retried delivery")
    finally:
        write_users(stack.home, quota="1K")
    _quiet()
    assert (_copies(stack, FULL_BOX, test_id), _copies(stack, MAX, test_id), _copies(stack, TOM, test_id)) == (1, 1, 0)


def test_a_group_over_the_size_limit_waits_for_a_person(stack):
    """max_members 5000 (the local config): 5001 plain addresses make the message wait, with the reason
    in the stage's log and metrics; once a person shrinks the group it goes on (after the cache TTL)."""
    members = [f"schueler{i}@gross.example" for i in range(5001)]
    group = _add_group(stack, "riesig", ["nisMailAlias"], {"rfc822MailMember": members})
    test_id = new_test_id()
    send(make_message(test_id, to=group), [group], port=stack.smtp_port)
    log = stack.log_of("expand")
    reason = f"group {group}: more than max_members 5000 members (5001 after 1 level(s))"
    stack.wait_for(lambda: reason in log.read_text(errors="replace"), what="the reason in the stage's log")
    assert stack.scrape(stack.component_of("expand")).get(("poststelle_expand_limit_total", (("action", "tempfail"),)), 0) >= 1
    assert _copies(stack, MAX, test_id) == 0
    with _admin(stack) as conn:  # the person: the group was meant for max alone
        assert conn.modify(f"cn=riesig,{GROUPS}", {"rfc822MailMember": [(ldap3.MODIFY_REPLACE, [MAX])]})
    stack.wait_for(lambda: _copies(stack, MAX, test_id), timeout=120, what="delivery once the group is fixed")
