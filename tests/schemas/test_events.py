"""Events: encode/decode round trips, time-ordered ids, and strict but forward-tolerant decoding."""
from __future__ import annotations

import dataclasses
import time
import uuid

import orjson
import pytest

from schemas.codec import MAX_DEPTH, DecodeError
from schemas.events import (
    EVENT_TYPES,
    AcceptedEarly,
    BlobRef,
    Bounced,
    Client,
    Deadlettered,
    DeadletterReplayed,
    Deferred,
    Delivered,
    DeliveryAttempt,
    DigestSent,
    Discarded,
    Edit,
    Envelope,
    Event,
    HeaderSummary,
    Held,
    MessageOutcome,
    QuarantineAction,
    Quarantined,
    Received,
    Rejected,
    Replacement,
    Reply,
    Result,
    Routed,
    SmtpCheck,
    SmtpConnect,
    SmtpReject,
    SpamLearned,
    StageResult,
    UserPrefValues,
    UserSettingsChanged,
    Verdict,
    decode_event,
    encode_event,
    event_type_name,
    version_of,
)
from schemas.ids import id_time_ms, new_id


def received() -> Received:
    return Received(
        message_id=new_id(),
        envelope=Envelope(mail_from="alice@ext.test", rcpt_to=["bob@school.test", "carol@ext.test"],
                          smtputf8=True, body="8BITMIME"),
        client=Client(ip="192.0.2.7", port=40312, helo="mail.ext.test", reverse_name="mail.ext.test",
                      authenticated_as="", tls=True),
        blob=BlobRef(sha256="0f" * 32, size=2048),
        headers=HeaderSummary(subject="Elternabend am Dienstag", header_from="Alice <alice@ext.test>",
                              header_to="bob@school.test", message_id_header="<x1@ext.test>",
                              date="Mon, 24 Nov 2025 09:00:00 +0100"),
        session_id=new_id(),
        ingress_host="mx.school.test",
    )


def all_events() -> list[Event]:
    rec = received()
    result = Result(stage="spam", verdict=Verdict.FAIL, score=7.5,
                    details={"rules": ["BAYES_99", "URIBL"], "scores": {"BAYES_99": 3.5}, "ok": False},
                    duration_ms=42.125)
    route = Result(stage="route", verdict=Verdict.PASS, details={"routes": {"lmtp": ["bob@school.test"]}})
    edits = [Edit(stage="spam", kind="subject_tag", value="[SPAM]", recipients=["bob@school.test"]),
             Edit(stage="attachment", kind="replace_part", part="2", sha256="cd" * 32, value="held"),
             Edit(stage="spam", kind="add_header", name="X-Spam-Score", value="7.5")]
    routed = Routed(message_id=rec.message_id, destination="lmtp", recipients=["bob@school.test"],
                    message=rec, results=[result, route], edits=edits, attempt=2)
    return [
        rec,
        StageResult(message_id=rec.message_id, result=route, message=rec, recipients=["bob@school.test"],
                    history=[result], edits=edits,
                    replacements=[Replacement(stage="expand", recipient="9a@school.test",
                                              into=["bob@school.test", "max@school.test"], reason="group 9a")]),
        routed,
        DeliveryAttempt(message_id=rec.message_id, destination="lmtp", recipient="bob@school.test", attempt=1,
                        reply=Reply(code=452, enhanced="4.2.2", text="Mailbox full"), duration_ms=8.5),
        Delivered(message_id=rec.message_id, destination="lmtp", recipient="bob@school.test", attempt=3,
                  reply=Reply(code=250, enhanced="2.0.0", text="<x1@ext.test> Saved"), received_time=rec.time),
        Deferred(message_id=rec.message_id, destination="lmtp", recipient="bob@school.test", attempt=1,
                 reply=Reply(code=451, enhanced="4.3.0", text="Temporary failure"),
                 next_attempt_time="2025-11-24T09:05:00.000Z", routed=routed),
        Bounced(message_id=rec.message_id, destination="smarthost", recipient="carol@ext.test", attempt=12,
                reply=Reply(code=451, text="timeout"), reason="expired", mail_from="alice@ext.test"),
        Discarded(message_id=rec.message_id, destination="smarthost", recipient="spam@ext.test", attempt=4,
                  by="helpdesk: ticket 4711, outbreak from a stolen password"),
        Quarantined(message_id=rec.message_id, stage="virus", reason="Eicar-Test-Signature FOUND",
                    recipients=list(rec.envelope.rcpt_to), message=rec, results=[result]),
        Held(message_id=rec.message_id, stage="attachment", part="1.2", sha256="ab" * 32,
             filename="Rechnung.pdf            .exe", content_type="application/octet-stream",
             reasons=["blocked_extension: .exe", "space_run: 12 spaces"],
             recipients=list(rec.envelope.rcpt_to), message=rec),
        Rejected(message_id=rec.message_id, stage="blocklist", reason="sender domain blocked",
                 recipients=list(rec.envelope.rcpt_to), message=rec, results=[]),
        Deadlettered(message_id="", consumer="route", source_topic="poststelle.received", partition=3,
                     offset=99, reason="undecodable", error="not JSON: unexpected character",
                     key="k1", payload="Z2FyYmFnZSD/", payload_encoding="base64"),
        DeadletterReplayed(message_id="", deadletter_id=new_id(), source_topic="poststelle.received",
                           partition=3, offset=120),
        MessageOutcome(message_id=rec.message_id, stage="virus", disposition="rejected",
                       recipients=list(rec.envelope.rcpt_to), reason="infected: Eicar-Test-Signature"),
        AcceptedEarly(message_id=rec.message_id, waited_ms=20001.5),
        SmtpConnect(session_id=rec.session_id, client_ip="2001:db8::25", client_port=51000, listener="submission"),
        SmtpReject(session_id=rec.session_id, client_ip="192.0.2.7", phase="data", check="smuggling",
                   reason_code="illegal_line_ending",
                   reply=Reply(code=521, enhanced="5.5.2", text="Error: bare <CR> or <LF> received"),
                   helo="mail.ext.test", sender="alice@ext.test"),
        SmtpCheck(session_id=rec.session_id, client_ip="127.0.2.10", phase="rcpt", check="greylist",
                  result="passed_after_retry", sender="alice@good.test", recipient="bob@school.test"),
        UserSettingsChanged(address="bob@school.test", changed=["quarantine", "allow_senders"], by="cli:root@mx1",
                            settings=UserPrefValues(quarantine=True, tag_probable=42.5,
                                                    allow_senders=["@partner.example", "max@ext.test"], language="en")),
        SpamLearned(message_id=rec.message_id, digest="5e" * 32, label="spam", tokens="AQAAAAAAAAACAAAAAAAAAA==",
                    tokenizer_version=1, source="autolearn"),
        QuarantineAction(message_id=rec.message_id, entry="0123456789abcdef0123", recipient="lena@school.test",
                         action="release", by="link:lena@school.test", learn_ham=True, released_as=rec.message_id,
                         topic="poststelle.checked.spam", token="ab12"),
        DigestSent(user="lena@school.test", entries=["0123456789abcdef0123"], digest_message_id="d1", language="en"),
    ]


def _encoded(event: Event) -> dict:
    return orjson.loads(encode_event(event))


# ---- round trips ----------------------------------------------------------------------------


def test_every_event_type_is_covered():
    assert {event_type_name(type(e)) for e in all_events()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", all_events(), ids=lambda e: event_type_name(type(e)))
def test_round_trip(event):
    payload = encode_event(event)
    assert isinstance(payload, bytes)
    decoded = decode_event(payload)
    assert type(decoded) is type(event)
    assert decoded == event
    assert encode_event(decoded) == payload  # stable
    data = orjson.loads(payload)
    assert data["type"] == event_type_name(type(event))
    assert data["schema_version"] == version_of(type(event))


def test_round_trip_from_str_and_with_expect():
    event = received()
    assert decode_event(encode_event(event).decode(), expect=(Received,)) == event
    with pytest.raises(DecodeError, match="unexpected event type 'received'"):
        decode_event(encode_event(event), expect=(StageResult,))


def test_decoded_types_are_real_types():
    event = all_events()[1]  # stage_result
    decoded = decode_event(encode_event(event))
    assert isinstance(decoded, StageResult)
    assert isinstance(decoded.result.verdict, Verdict) and decoded.result.verdict is Verdict.PASS
    assert isinstance(decoded.message, Received) and isinstance(decoded.message.blob, BlobRef)
    assert isinstance(decoded.edits[0], Edit)


def test_enum_encodes_as_its_value():
    data = _encoded(all_events()[1])
    assert data["result"]["verdict"] == "pass"
    assert data["history"][0]["verdict"] == "fail"


def test_integer_score_decodes_as_float():
    data = _encoded(all_events()[1])
    data["result"]["score"] = 3
    decoded = decode_event(orjson.dumps(data))
    assert decoded.result.score == 3.0 and isinstance(decoded.result.score, float)


def test_deferred_without_routed():
    event = Deferred(destination="lmtp", recipient="b@school.test", attempt=1, reply=Reply(code=450))
    assert decode_event(encode_event(event)).routed is None


# ---- ids ------------------------------------------------------------------------------------


def test_ids_are_time_ordered():
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert sorted(ids) == ids


def test_ids_are_uuid7_with_the_creation_time():
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    # the counter may borrow a millisecond when more than 4096 ids are made in one
    assert before <= id_time_ms(value) <= after + 5
    assert abs(id_time_ms(value) - time.time() * 1000) < 2000


def test_event_ids_and_times_default():
    a, b = received(), received()
    assert a.id != b.id and a.id < b.id
    assert a.time.endswith("Z") and len(a.time) == len("2025-11-24T09:00:00.000Z")


# ---- decode errors --------------------------------------------------------------------------


def test_not_json():
    with pytest.raises(DecodeError, match="not JSON"):
        decode_event(b"\x00\xffnot json")


def test_not_an_object():
    with pytest.raises(DecodeError, match="JSON object"):
        decode_event(b"[1, 2]")


def test_unknown_type():
    data = _encoded(received())
    data["type"] = "teleported"
    with pytest.raises(DecodeError, match="unknown event type 'teleported'"):
        decode_event(orjson.dumps(data))
    del data["type"]
    with pytest.raises(DecodeError, match="unknown event type None"):
        decode_event(orjson.dumps(data))


@pytest.mark.parametrize("version", [version_of(Received) + 1, 0, "1", None, True])
def test_schema_version_newer_or_malformed(version):
    data = _encoded(received())
    data["schema_version"] = version
    with pytest.raises(DecodeError, match="unsupported schema_version"):
        decode_event(orjson.dumps(data))


def test_missing_schema_version():
    data = _encoded(received())
    del data["schema_version"]
    with pytest.raises(DecodeError, match="unsupported schema_version"):
        decode_event(orjson.dumps(data))


@pytest.mark.parametrize(
    "remove, path",
    [
        (("blob",), "$.blob: missing"),
        (("envelope", "rcpt_to"), "$.envelope.rcpt_to: missing"),
        (("client", "ip"), "$.client.ip: missing"),
    ],
)
def test_missing_field_names_the_path(remove, path):
    data = _encoded(received())
    node = data
    for key in remove[:-1]:
        node = node[key]
    del node[remove[-1]]
    with pytest.raises(DecodeError) as info:
        decode_event(orjson.dumps(data))
    assert str(info.value) == path


def test_missing_field_deep_inside_a_list():
    data = _encoded(all_events()[2])  # routed
    del data["results"][1]["verdict"]
    with pytest.raises(DecodeError, match=r"^\$\.results\[1\]\.verdict: missing$"):
        decode_event(orjson.dumps(data))


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d["client"].__setitem__("port", "25"), "$.client.port: expected int, got str"),
        (lambda d: d["client"].__setitem__("port", True), "$.client.port: expected int, got bool"),
        (lambda d: d["client"].__setitem__("tls", 1), "$.client.tls: expected bool, got int"),
        (lambda d: d["blob"].__setitem__("size", 1.5), "$.blob.size: expected int, got float"),
        (lambda d: d["envelope"].__setitem__("rcpt_to", "bob@school.test"), "$.envelope.rcpt_to: expected a list"),
        (lambda d: d["envelope"]["rcpt_to"].__setitem__(1, 7), "$.envelope.rcpt_to[1]: expected str, got int"),
        (lambda d: d["envelope"].__setitem__("body", "QUOTED"), "$.envelope.body: expected one of"),
        (lambda d: d.__setitem__("headers", []), "$.headers: expected an object"),
    ],
)
def test_wrong_type_names_the_path(mutate, fragment):
    data = _encoded(received())
    mutate(data)
    with pytest.raises(DecodeError) as info:
        decode_event(orjson.dumps(data))
    assert str(info.value).startswith(fragment)


def test_wrong_enum_value():
    data = _encoded(all_events()[1])
    data["result"]["verdict"] = "maybe"
    with pytest.raises(DecodeError, match=r"\$\.result\.verdict: 'maybe' is not a Verdict"):
        decode_event(orjson.dumps(data))


def test_wrong_type_in_an_optional_field():
    data = _encoded(all_events()[5])  # deferred
    data["routed"] = "not an event"
    with pytest.raises(DecodeError, match=r"^\$\.routed: expected an object"):
        decode_event(orjson.dumps(data))


def _nest(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = {"x": value}
    return value


def test_nesting_deeper_than_max_depth_in_details():
    data = _encoded(all_events()[1])
    data["result"]["details"] = {"deep": _nest(MAX_DEPTH + 5)}
    with pytest.raises(DecodeError) as info:
        decode_event(orjson.dumps(data))
    assert "deeper" in str(info.value)
    assert str(info.value).startswith("$.result.details")


def test_nesting_deeper_than_max_depth_with_lists():
    data = _encoded(all_events()[1])
    deep: object = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    data["history"][0]["details"] = {"deep": deep}
    with pytest.raises(DecodeError, match="deeper"):
        decode_event(orjson.dumps(data))


def test_moderate_nesting_in_details_is_fine():
    data = _encoded(all_events()[1])
    data["result"]["details"] = {"deep": _nest(10)}
    decoded = decode_event(orjson.dumps(data))
    assert decoded.result.details == {"deep": _nest(10)}


def test_unknown_extra_fields_are_ignored():
    event = all_events()[1]
    data = _encoded(event)
    data["added_in_v1_5"] = {"anything": [1, 2]}
    data["message"]["client"]["asn"] = 64496
    data["result"]["confidence"] = 0.9
    decoded = decode_event(orjson.dumps(data))
    assert decoded == event
    assert not hasattr(decoded, "added_in_v1_5")


def test_fields_with_defaults_may_be_absent():
    data = _encoded(received())
    for key in ("headers", "session_id", "listener", "ingress_host", "id", "time", "message_id"):
        del data[key]
    decoded = decode_event(orjson.dumps(data))
    assert decoded.headers == HeaderSummary()
    assert decoded.listener == "smtp"
    assert decoded.id  # a fresh id from the default factory


def test_events_are_frozen():
    event = received()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.message_id = "x"  # type: ignore[misc]


def _deferred_with_routed(routed_json: str) -> str:
    text = encode_event(Deferred(destination="lmtp", recipient="b@school.test", attempt=1,
                                 reply=Reply(code=450))).decode()
    return text[:-1] + ',"routed":' + routed_json + "}"


def test_too_deep_inside_an_optional_field_is_reported_as_deeper():
    deep = '{"x":' * (MAX_DEPTH + 5) + "1" + "}" * (MAX_DEPTH + 5)
    routed = orjson.loads(encode_event(all_events()[2]))
    routed_json = orjson.dumps(routed).decode().replace('"details":{"rules"', '"details":{"deep":' + deep + ',"rules"', 1)
    with pytest.raises(DecodeError, match="deeper"):
        decode_event(_deferred_with_routed(routed_json))


def test_very_deep_value_in_an_optional_field_is_a_decode_error():
    deep = '{"x":' * 1020 + "1" + "}" * 1020
    with pytest.raises(DecodeError):
        decode_event(_deferred_with_routed(deep))


# ---- versions: older events replay, upgraded ----------------------------------------------


def test_a_version_1_stage_result_passes_every_envelope_recipient():
    rec = received()
    v1 = {"type": "stage_result", "schema_version": 1, "id": new_id(), "time": rec.time,
          "message_id": rec.message_id, "result": {"stage": "virus", "verdict": "pass"},
          "message": orjson.loads(encode_event(rec)), "history": [],
          "edits": [{"stage": "auth", "kind": "add_header", "name": "X-A", "value": "1"}]}
    event = decode_event(orjson.dumps(v1))
    assert isinstance(event, StageResult) and event.schema_version == 2
    assert event.recipients == ["bob@school.test", "carol@ext.test"]
    assert event.edits[0].recipients == []  # applies to all of them, as in v1
    assert event.replacements == []


def test_a_version_1_outcome_and_a_short_version_1_dead_letter_decode():
    outcome = decode_event(orjson.dumps({"type": "outcome", "schema_version": 1, "message_id": "m", "stage": "virus",
                                         "disposition": "rejected", "recipients": ["a@x.test"], "reason": "virus"}))
    assert isinstance(outcome, MessageOutcome) and outcome.into == [] and outcome.schema_version == 2
    base = {"type": "deadlettered", "schema_version": 1, "consumer": "route", "source_topic": "t", "partition": 0,
            "offset": 5, "reason": "undecodable", "error": "e"}
    short = decode_event(orjson.dumps({**base, "payload": "{not json"}))
    assert isinstance(short, Deadlettered) and short.payload_complete and short.payload_encoding == "utf-8"
    cut = decode_event(orjson.dumps({**base, "payload": "x" * 4096}))
    assert isinstance(cut, Deadlettered) and not cut.payload_complete
    replaced = decode_event(orjson.dumps({**base, "payload": "bad \ufffd byte"}))
    assert not replaced.payload_complete


def test_an_unknown_disposition_is_refused():
    data = _encoded(MessageOutcome(message_id="m", stage="s", disposition="routed", recipients=["a@x.test"]))
    data["disposition"] = "teleported"
    with pytest.raises(DecodeError, match="disposition"):
        decode_event(orjson.dumps(data))


def test_a_wrong_value_deep_in_a_dict_or_a_union_names_its_whole_path() -> None:
    from schemas.codec import DecodeError, from_dict
    from schemas.events import StageResult
    from tests.pipeline.state.timeline_scenario import scenario

    event = next(e for e in scenario().events if isinstance(e, StageResult))
    data = orjson.loads(encode_event(event))
    data["history"] = [dict(data["result"], verdict="maybe")]
    with pytest.raises(DecodeError, match=r"^\$\.history\[0\]\.verdict: 'maybe' is not a Verdict$"):
        from_dict(StageResult, data)
    data = orjson.loads(encode_event(event))
    data["result"]["details"] = {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
    with pytest.raises(DecodeError, match=r"^\$\.result\.details\.a: nested deeper than 32 levels$"):
        from_dict(StageResult, data)
