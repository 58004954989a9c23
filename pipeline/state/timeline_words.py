"""One event → one step of a message's timeline: who did it, what happened in plain words, and the details.

The summary is for the person whose mail it is ("Held in quarantine by the spam check (score 9.1)");
the details are for an administrator (the stage's own result, replies, durations, edits). Nothing
here decides which events belong to a message: that is `pipeline.state.timeline`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from schemas.events import (
    Bounced,
    Deadlettered,
    DeadletterReplayed,
    Deferred,
    Delivered,
    DeliveryAttempt,
    Discarded,
    Edit,
    Event,
    Held,
    Quarantined,
    Received,
    Rejected,
    Replacement,
    Result,
    Routed,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    StageResult,
)
from schemas.quarantine import DigestSent, QuarantineAction

__all__ = ["Words", "describe", "plain"]


@dataclasses.dataclass(frozen=True, slots=True)
class Words:
    """What a step says: the component that acted, a summary for users, details for administrators."""

    component: str
    summary: str
    details: dict[str, Any]


def plain(value: Any) -> Any:
    """Dataclasses and enums as JSON-shaped values (for `details`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, str):
        return str(value)  # a StrEnum as its text
    return value


def _who(addresses: list[str]) -> str:
    return ", ".join(addresses) if addresses else "no one"


def _reply(code: int, enhanced: str, text: str) -> str:
    return " ".join(part for part in (str(code), enhanced, text) if part)


_GREYLIST_NOTES = {
    "delayed": "greylisting: first attempt from this server, asked it to retry later",
    "too_early": "greylisting: the server retried too early, asked it to wait",
    "passed_after_retry": "greylisting: passed, the server retried after the delay",
    "passed": "greylisting: passed (this server and sender passed before)",
    "auto_whitelisted": "greylisting: skipped, the server is known to retry",
    "whitelisted": "greylisting: skipped, the server is on the greylisting whitelist",
    "skipped": "greylisting: not applied to this connection",
    "unavailable": "greylisting: state not available yet",
}
# check "reputation": why the reputation checks (DNS lists, FCrDNS, sender domain, greylisting) did
# not apply to the session (reported once a session, each check's note says the same)
_STANDING_NOTES = {
    "allowlisted": "reputation checks not applied: the client is on the allowlist",
    "authenticated": "reputation checks not applied: the session is authenticated",
    "not_mx": "reputation checks not applied: not the MX listener",
}


def _connect(e: SmtpConnect) -> Words:
    return Words("ingress", f"Connection from {e.client_ip} ({e.listener})",
                 {"session": e.session_id, "client_ip": e.client_ip, "client_port": e.client_port})


def _check(e: SmtpCheck) -> Words:
    notes = {"greylist": _GREYLIST_NOTES, "reputation": _STANDING_NOTES}.get(e.check, {})
    summary = notes.get(e.result)
    summary = summary or f"SMTP check {e.check} at {e.phase}: {e.result}"
    return Words("ingress", summary[0].upper() + summary[1:],
                 {"session": e.session_id, "check": e.check, "phase": e.phase, "result": e.result,
                  "sender": e.sender, "recipient": e.recipient})


def _reject(e: SmtpReject) -> Words:
    reply = _reply(e.reply.code, e.reply.enhanced, e.reply.text)
    rcpt = f" for {e.recipient}" if e.recipient else ""
    if e.check == "greylist":
        summary = f"Greylisted{rcpt}: the sending server was asked to try again later ({reply})"
    elif e.reply.code < 500:
        summary = f"Refused for now{rcpt} by the {e.check} check ({reply})"
    else:
        summary = f"Refused{rcpt} by the {e.check} check ({reply})"
    return Words("ingress", summary, {"session": e.session_id, "client_ip": e.client_ip, "phase": e.phase,
                                      "check": e.check, "reason_code": e.reason_code, "reply": reply,
                                      "helo": e.helo, "sender": e.sender, "recipient": e.recipient})


def _received(e: Received) -> Words:
    subject = f', subject "{e.headers.subject}"' if e.headers.subject else ""
    summary = (f"Accepted from {e.client.ip}: from <{e.envelope.mail_from}> to {_who(e.envelope.rcpt_to)}"
               f"{subject}, {e.blob.size} bytes")
    return Words("ingress", summary, {
        "message_id": e.message_id, "message_id_header": e.headers.message_id_header, "session": e.session_id,
        "client": plain(e.client), "envelope": plain(e.envelope), "header_from": e.headers.header_from,
        "size": e.blob.size, "checks": dict(e.checks), "skipped_checks": list(e.skipped_checks),
        "listener": e.listener})


def _edit_words(edit: Edit) -> str:
    if edit.kind == "subject_tag":
        return f"tagged the subject {edit.value!r}"
    if edit.kind == "add_header":
        return f"added the header {edit.name}"
    if edit.kind == "remove_header":
        return f"removed {edit.name} header fields"
    if edit.kind == "envelope_sender":
        return f"bounces for {_who(edit.recipients)} go to {edit.value}"
    return f"replaced part {edit.part} by a notice"


def _replacement_words(r: Replacement) -> str:
    return f"{r.recipient} became {_who(r.into)}"


def _result_words(result: Result) -> str:
    verdicts = {"pass": "passed", "fail": "failed", "skip": "skipped", "error": "had an error",
                "tempfail": "failed for now"}
    score = f" (score {result.score:g})" if result.score else ""
    return f"The {result.stage} check {verdicts.get(str(result.verdict), str(result.verdict))}{score}"


def result_details(result: Result) -> dict[str, Any]:
    return {"verdict": str(result.verdict), "score": result.score, "duration_ms": result.duration_ms,
            "details": plain(result.details)}


def _stage_result(e: StageResult) -> Words:
    stage = e.result.stage
    edits = [x for x in e.edits if x.stage == stage]
    replaced = [r for r in e.replacements if r.stage == stage]
    extra = [_edit_words(x) for x in edits] + [_replacement_words(r) for r in replaced]
    first = "Routing decided" if stage == "route" else _result_words(e.result)
    summary = first + (f"; {'; '.join(extra)}" if extra else "")
    return Words(stage, summary, {**result_details(e.result), "recipients": list(e.recipients),
                                  "edits": plain(edits), "replacements": plain(replaced)})


def _routed(e: Routed) -> Words:
    again = f" (after {e.attempt} attempt{'s' if e.attempt != 1 else ''})" if e.attempt else ""
    return Words("retry" if e.attempt else "route", f"Handed to {e.destination} for {_who(e.recipients)}{again}",
                 {"destination": e.destination, "recipients": list(e.recipients), "attempt": e.attempt,
                  "edits": plain(e.edits)})


def _delivery(e: DeliveryAttempt | Delivered | Deferred | Bounced) -> Words:
    reply = _reply(e.reply.code, e.reply.enhanced, e.reply.text)
    details: dict[str, Any] = {"destination": e.destination, "recipient": e.recipient, "attempt": e.attempt,
                               "reply": reply}
    if isinstance(e, DeliveryAttempt):
        details["duration_ms"] = e.duration_ms
        summary = f"Delivery attempt {e.attempt} to {e.recipient}: {reply} ({e.duration_ms:.0f} ms)"
    elif isinstance(e, Delivered):
        summary = f"Delivered to {e.recipient} ({reply})"
    elif isinstance(e, Deferred):
        details["next_attempt_time"] = e.next_attempt_time
        summary = f"Delivery to {e.recipient} failed for now ({reply}); next try at {e.next_attempt_time}"
        if e.delay_notice:
            details["delay_notice"] = True
            summary += "; the sender is told of the delay"
    else:
        details["reason"] = e.reason
        why = "gave up after retrying" if e.reason == "expired" else "failed permanently"
        summary = f"Delivery to {e.recipient} {why} ({reply}); the sender gets a bounce"
    return Words(f"sink:{e.destination}", summary, details)


def _stage_of(results: list[Result], stage: str) -> Result | None:
    return next((r for r in reversed(results) if r.stage == stage), None)


def _decision(e: Quarantined | Rejected) -> Words:
    result = _stage_of(e.results, e.stage)
    score = f" (score {result.score:g})" if result and result.score and "score" not in e.reason else ""
    what = "Held in quarantine" if isinstance(e, Quarantined) else "Rejected"
    details: dict[str, Any] = {"reason": e.reason, "recipients": list(e.recipients)}
    if result is not None:
        details["result"] = result_details(result)
    return Words(e.stage, f"{what} by the {e.stage} check for {_who(e.recipients)}{score}: {e.reason}", details)


def _held(e: Held) -> Words:
    return Words(e.stage, f"Attachment {e.filename!r} (part {e.part}) held in quarantine for {_who(e.recipients)}: "
                          f"{'; '.join(e.reasons)}; the rest of the message went on",
                 {"part": e.part, "filename": e.filename, "content_type": e.content_type, "reasons": list(e.reasons),
                  "recipients": list(e.recipients)})


def _deadlettered(e: Deadlettered) -> Words:
    return Words(e.consumer, f"{e.consumer} could not handle the message ({e.reason}); kept for an administrator",
                 {"reason": e.reason, "error": e.error, "topic": e.source_topic, "partition": e.partition,
                  "offset": e.offset})


def _replayed(e: DeadletterReplayed) -> Words:
    return Words("deadletter", f"Put back on {e.source_topic} by an administrator",
                 {"deadletter_id": e.deadletter_id, "topic": e.source_topic})


_ACTIONS = {
    "release": "Released for {rcpt} by {who}",
    "request_release": "Release requested for {rcpt} by {who}",
    "approve": "Release approved for {rcpt} by {who}",
    "deny": "Release request denied for {rcpt} by {who}",
    "delete": "Deleted from the quarantine for {rcpt} by {who}",
    "expire": "Removed from the quarantine for {rcpt}: its time there was over",
}


def _action(e: QuarantineAction) -> Words:
    summary = _ACTIONS.get(e.action, e.action + " for {rcpt} by {who}").format(rcpt=e.recipient, who=e.by or "?")
    also = [text for flag, text in ((e.learn_ham, "learned as wanted mail"),
                                    (e.allow_sender, "the sender is allowed from now on")) if flag]
    if also:
        summary += f" ({'; '.join(also)})"
    return Words("quarantine", summary, {"entry": e.entry, "action": e.action, "by": e.by, "recipient": e.recipient,
                                         "learn_ham": e.learn_ham, "allow_sender": e.allow_sender,
                                         "released_as": e.released_as, "topic": e.topic, "note": e.note})


def _discarded(e: Discarded) -> Words:
    by = f" by {e.by}" if e.by else ""
    return Words(f"sink:{e.destination}", f"Taken out of the queue{by}: {e.recipient} does not get it, and no "
                 "DSN goes to the sender", {"destination": e.destination, "recipient": e.recipient,
                                             "attempt": e.attempt, "by": e.by})


def _digest(e: DigestSent) -> Words:
    return Words("digest", f"Listed in the quarantine digest mailed to {e.user}",
                 {"user": e.user, "entries": list(e.entries), "digest_message_id": e.digest_message_id})


_DESCRIBE: dict[type[Event], Callable[[Any], Words]] = {
    SmtpConnect: _connect, SmtpCheck: _check, SmtpReject: _reject, Received: _received,
    StageResult: _stage_result, Routed: _routed, DeliveryAttempt: _delivery, Delivered: _delivery,
    Deferred: _delivery, Bounced: _delivery, Discarded: _discarded, Quarantined: _decision, Rejected: _decision,
    Held: _held, Deadlettered: _deadlettered, DeadletterReplayed: _replayed, QuarantineAction: _action,
    DigestSent: _digest,
}


def describe(event: Event) -> Words | None:
    """The step an event makes, or None for events that are no step of their own (e.g. `outcome`)."""
    fn = _DESCRIBE.get(type(event))
    return fn(event) if fn is not None else None
