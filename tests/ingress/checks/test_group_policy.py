"""The group policy check with the demo school's two rules, against the real slapd."""
from __future__ import annotations

import dataclasses
import socket
import tomllib

import pytest

from ingress.checks import PASS, CheckContext, CheckServices
from ingress.checks.group_policy import LOOKUP_FAILED, GroupPolicyCheck, GroupPolicySettings
from pipeline.clients.directory import Directory
from pipeline.config import parse_section
from pipeline.settings import ConfigError
from tests.servers import SLAPD_HOST

# the rules of deploy/local/poststelle.toml
DEMO_RULES = """
[checks.group_policy]
local_senders_need_auth = true

[[checks.group_policy.rules]]
name = "parents"
recipients = ["parents@school.test"]
recipients_in = ["parents@school.test"]
allow_senders_in = ["parents@school.test"]
allow_sender_domains = ["school.test"]
reason = "Recipient address rejected: parents receive mail only from the school and from other parents"

[[checks.group_policy.rules]]
name = "class-lists"
recipients = ["9a@school.test", "9b@school.test"]
allow_senders_in = ["staff@school.test"]
reason = "Recipient address rejected: class lists receive mail only from staff"
"""
PARENTS_REFUSED = "550 5.7.1 Recipient address rejected: parents receive mail only from the school and from other parents"
CLASS_REFUSED = "550 5.7.1 Recipient address rejected: class lists receive mail only from staff"
LOCAL = frozenset({"school.test"})
ACCOUNTS = {
    "anna.schmidt": {"anna.schmidt@school.test", "sekretariat@school.test"},
    "max.mustermann": {"max.mustermann@school.test"},
    "eltern.mueller": {"eltern.mueller@school.test"},
}


def settings(toml: str = DEMO_RULES, **changes) -> GroupPolicySettings:
    section = tomllib.loads(toml)["checks"]["group_policy"]
    return dataclasses.replace(parse_section(GroupPolicySettings, section, "checks.group_policy"), **changes)


def policy(directory: Directory | None, config: GroupPolicySettings | None = None) -> GroupPolicyCheck:
    return GroupPolicyCheck(config or settings(), CheckServices(directory=directory, local_domains=LOCAL))


def outside(sender: str, trusted: bool = False) -> CheckContext:
    """An unauthenticated session on the MX listener."""
    return CheckContext(session_id="mx", client_ip="198.51.100.7", sender=sender, trusted=trusted)


def logged_in(uid: str, sender: str | None = None) -> CheckContext:
    """An authenticated submission session of `uid`."""
    addresses = frozenset(ACCOUNTS[uid])
    return CheckContext(session_id="sub", client_ip="192.0.2.20", listener="submission", authenticated_as=uid,
                        auth_addresses=addresses, sender=sender or min(addresses))


# ---- rule "parents": members of parents@ receive only from parents and the school's domains ----------


async def test_parent_mailbox_from_an_outside_address_is_refused(directory: Directory) -> None:
    decision = await policy(directory).rcpt(outside("stranger@example.org"), "eltern.mustermann@school.test")
    assert decision.reply == PARENTS_REFUSED
    assert (decision.reason_code, decision.detail) == ("group_policy", "parents")


async def test_parent_mailbox_from_another_parent_is_accepted(directory: Directory) -> None:
    assert await policy(directory).rcpt(logged_in("eltern.mueller"), "eltern.mustermann@school.test") == PASS


async def test_parent_mailbox_from_the_school_is_accepted(directory: Directory) -> None:
    # anna is staff; any school address passes this rule (allow_sender_domains)
    assert await policy(directory).rcpt(logged_in("anna.schmidt"), "eltern.mustermann@school.test") == PASS
    assert await policy(directory).rcpt(logged_in("max.mustermann"), "Eltern.Mueller@School.Test") == PASS


async def test_the_parents_list_itself_is_protected(directory: Directory) -> None:
    assert (await policy(directory).rcpt(outside("stranger@example.org"), "parents@school.test")).reply == PARENTS_REFUSED
    assert await policy(directory).rcpt(logged_in("eltern.mueller"), "parents@school.test") == PASS


async def test_a_claimed_local_sender_needs_authentication(directory: Directory) -> None:
    # on port 25 anyone may write a parent's or a teacher's address into MAIL FROM
    for forged in ("eltern.mueller@school.test", "anna.schmidt@school.test"):
        decision = await policy(directory).rcpt(outside(forged), "eltern.mustermann@school.test")
        assert decision.reply == PARENTS_REFUSED, forged
    # from ingress.relay_networks the envelope counts, and so it does with the setting off
    assert await policy(directory).rcpt(outside("eltern.mueller@school.test", trusted=True),
                                        "eltern.mustermann@school.test") == PASS
    trusting = policy(directory, settings(local_senders_need_auth=False))
    assert await trusting.rcpt(outside("eltern.mueller@school.test"), "eltern.mustermann@school.test") == PASS


async def test_null_sender_to_a_protected_recipient_is_refused_unless_allowed(directory: Directory) -> None:
    assert (await policy(directory).rcpt(outside(""), "eltern.mueller@school.test")).reply == PARENTS_REFUSED
    allowing = settings(DEMO_RULES.replace('name = "parents"', 'name = "parents"\nallow_null_sender = true'))
    assert await policy(directory, allowing).rcpt(outside(""), "eltern.mueller@school.test") == PASS
    assert (await policy(directory, allowing).rcpt(outside(""), "9a@school.test")).reply == CLASS_REFUSED


# ---- rule "class-lists": 9a@ and 9b@ accept only from members of staff@ ----------------------------------


async def test_class_list_from_staff_is_accepted(directory: Directory) -> None:
    assert await policy(directory).rcpt(logged_in("anna.schmidt"), "9a@school.test") == PASS
    assert await policy(directory).rcpt(logged_in("anna.schmidt", "sekretariat@school.test"), "9b@school.test") == PASS


async def test_class_list_from_a_student_is_refused(directory: Directory) -> None:
    decision = await policy(directory).rcpt(logged_in("max.mustermann"), "9a@school.test")
    assert decision.reply == CLASS_REFUSED
    assert (decision.reason_code, decision.detail) == ("group_policy", "class-lists")
    for spelling in ("9A@School.Test", "9a@school.test.", "9b@school.test"):
        assert (await policy(directory).rcpt(logged_in("max.mustermann"), spelling)).reply == CLASS_REFUSED, spelling


async def test_class_list_from_outside_or_a_forged_teacher_is_refused(directory: Directory) -> None:
    for sender in ("stranger@example.org", "anna.schmidt@school.test"):
        assert (await policy(directory).rcpt(outside(sender), "9a@school.test")).reply == CLASS_REFUSED, sender


async def test_students_mailboxes_are_not_protected_by_the_class_list_rule(directory: Directory) -> None:
    assert await policy(directory).rcpt(outside("stranger@example.org"), "max.mustermann@school.test") == PASS
    assert await policy(directory).rcpt(logged_in("max.mustermann"), "lena.mueller@school.test") == PASS


# ---- general ------------------------------------------------------------------------------------------


async def test_a_protected_address_is_protected_under_its_aliases(directory: Directory) -> None:
    config = settings('[checks.group_policy]\n[[checks.group_policy.rules]]\nname = "head"\n'
                      'recipients = ["anna.schmidt@school.test"]\nallow_sender_domains = ["school.test"]\n'
                      'reason = "Not from outside"\n')
    decision = await policy(directory, config).rcpt(outside("stranger@example.org"), "sekretariat@school.test")
    assert (decision.reply, decision.detail) == ("550 5.7.1 Not from outside", "head")


async def test_every_applying_rule_must_allow_the_sender(directory: Directory) -> None:
    # a second rule on parents' mailboxes that only staff passes: a parent no longer does
    both = DEMO_RULES + ('[[checks.group_policy.rules]]\nname = "staff-only"\nrecipients_in = ["parents"]\n'
                         'allow_senders_in = ["staff"]\nreason = "Staff only"\n')
    config = settings(both)
    assert await policy(directory, config).rcpt(logged_in("anna.schmidt"), "eltern.mueller@school.test") == PASS
    decision = await policy(directory, config).rcpt(logged_in("eltern.mueller"), "eltern.mustermann@school.test")
    assert (decision.reply, decision.detail) == ("550 5.7.1 Staff only", "staff-only")


async def test_unprotected_recipients_cost_no_sender_lookup(directory: Directory) -> None:
    assert await policy(directory).rcpt(logged_in("max.mustermann"), "friend@example.org") == PASS
    assert directory.requests == 0  # not local: nothing to resolve, no rule applies


async def test_no_rules_pass_without_a_directory() -> None:
    check = policy(None, GroupPolicySettings())
    await check.start()
    assert await check.rcpt(outside("stranger@example.org"), "9a@school.test") == PASS


async def test_directory_down_is_451_4_4_3() -> None:
    with socket.socket() as s:
        s.bind((SLAPD_HOST, 0))
        port = s.getsockname()[1]
    down = Directory(SLAPD_HOST, port, "dc=school,dc=test", timeout=1.0)
    try:
        decision = await policy(down).rcpt(outside("stranger@example.org"), "eltern.mueller@school.test")
        assert decision.reply == LOOKUP_FAILED == "451 4.4.3 Policy lookup failed, try again later"
        assert decision.reason_code == "ldap_unavailable"
        assert str(port) not in decision.reply
        # 9a@ is listed by address, yet it is resolved too (its aliases would be protected as well)
        assert (await policy(down).rcpt(logged_in("anna.schmidt"), "9a@school.test")).reply == LOOKUP_FAILED
        # postmaster and abuse stay reachable from anyone, without asking the directory
        for address in ("postmaster@school.test", "Abuse@School.Test"):
            assert await policy(down).rcpt(outside("stranger@example.org"), address) == PASS
    finally:
        await down.close()


@pytest.mark.parametrize("rule, message", [
    ('recipients = ["9a@school.test"]', "needs a name"),
    ('name = "x"\nallow_senders_in = ["staff"]', "protects nobody"),
    ('name = "x"\nrecipients = ["9a@school.test"]\nreason = "two\\nlines"', "one line"),
    ('name = "x"\nrecipients = ["9a@school.test"]\nreason = "Zutritt verboten für Fremde"', "ASCII"),
    ('name = "x"\nrecipient = ["9a@school.test"]', "unknown key"),
    ('name = "x"\nrecipients = "9a@school.test"', "list of strings"),
])
def test_bad_rules_stop_the_config(rule: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(f"[checks.group_policy]\n[[checks.group_policy.rules]]\n{rule}\n")


def test_rule_names_are_unique() -> None:
    rule = '[[checks.group_policy.rules]]\nname = "x"\nrecipients = ["9a@school.test"]\n'
    with pytest.raises(ConfigError, match="unique"):
        settings("[checks.group_policy]\n" + rule + rule)
