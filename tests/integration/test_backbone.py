"""Acceptance of the backbone: SMTP → Kafka → route → LMTP → Dovecot, analytics, bad input."""
from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.cli.components import load_config
from tests.integration.conftest import REPO, make_message, new_test_id, send, strip_trace

RCPT = "max.mustermann@school.test"


def test_swaks_mail_reaches_maildir_and_analytics(stack, tmp_path):
    test_id = new_test_id()
    sent = make_message(test_id, subject="Hallo Max", body="Erste Zeile.\r\n.Punkt am Anfang\r\nEnde.\r\n")
    data = tmp_path / "message.eml"
    data.write_bytes(sent[:-2])  # swaks sends CRLF before the final dot itself
    done = subprocess.run(["swaks", "--server", f"127.0.0.1:{stack.smtp_port}", "--from", "sender@example.org",
                           "--to", RCPT, "--data", str(data)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    message_id = re.search(r"250 2\.0\.0 Ok: queued as (\S+)", done.stdout).group(1)

    delivered = stack.wait_for(lambda: [m for m in stack.messages(RCPT) if test_id.encode() in m],
                               what="delivery to the maildir")
    assert len(delivered) == 1
    # stages add header fields on top (auth: Authentication-Results); everything else arrives unchanged
    added = re.compile(rb"^Authentication-Results:[^\n]*\n(?:[ \t][^\n]*\n)*", re.MULTILINE | re.IGNORECASE)
    trace, rest = strip_trace(added.sub(b"", delivered[0].replace(b"\r\n", b"\n")))
    assert rest == sent.replace(b"\r\n", b"\n"), "the body and headers must arrive unchanged"
    ours = [t for t in trace if b"(poststelle)" in t]
    assert len(ours) == 1 and message_id.encode() in ours[0]
    assert {t.split(b":")[0].lower() for t in trace} <= {b"return-path", b"delivered-to", b"received", b"x-spam-score",
                                                             b"x-spam-status"}

    wanted = {"received", "stage_result", "routed", "delivered"}

    def recorded():
        rows = stack.sql(f"SELECT DISTINCT type FROM poststelle.events WHERE message_id = '{message_id}'")
        types = {r[0] for r in rows}
        return types if wanted <= types else None

    assert wanted <= stack.wait_for(recorded, what="analytics rows")
    table = stack.cli("sql", f"SELECT type, recipient FROM poststelle.events WHERE message_id = '{message_id}' "
                             "AND type = 'delivered'").stdout
    assert RCPT in table and "(1 row" in table


def _raw_session(port: int, script: bytes, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes in one go after the greeting; return everything the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.recv(1024)  # greeting
        sock.sendall(script)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except socket.timeout:
            pass
        return answer


def test_smuggling_inputs_are_refused_and_never_make_two_messages(stack):
    marker = new_test_id()
    envelope = f"EHLO evil.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
    smuggled = (f"\r\nMAIL FROM:<admin@school.test>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
                f"X-Test-Id: smuggled-{marker}\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n").encode()
    head = f"X-Test-Id: outer-{marker}\r\nSubject: smuggling\r\n\r\nhello".encode()
    variants = {
        "lf-dot-crlf": envelope + head + b"\n.\r\n" + smuggled,
        "cr-dot-cr": envelope + head + b"\r.\r" + smuggled,
        "lf-dot-lf": envelope + head + b"\n.\n" + smuggled,
        "nul": envelope + head + b"\x00\r\n.\r\nQUIT\r\n",
    }
    for name, script in variants.items():
        answer = _raw_session(stack.smtp_port, script)
        replies = [line for line in answer.split(b"\r\n") if line]
        assert any(r.startswith(b"5") for r in replies), (name, replies)
        assert not any(r.startswith(b"250 2.0.0 Ok: queued") for r in replies), (name, replies)
    bare_lf_command = _raw_session(stack.smtp_port, b"EHLO evil.test\n")
    assert bare_lf_command.startswith(b"521 5.5.2"), bare_lf_command

    # a clean message sent afterwards arrives; nothing of the smuggling attempts does
    probe = new_test_id()
    send(make_message(probe), [RCPT], port=stack.smtp_port)
    stack.wait_for(lambda: stack.test_ids(RCPT)[probe], what="the probe message")
    ids = stack.test_ids(RCPT)
    assert not [i for i in ids if marker in i], ids


def test_poison_event_is_deadlettered_and_the_stage_keeps_consuming(stack):
    marker = new_test_id()
    poison = [b"not json " + marker.encode(),
              orjson.dumps({"type": "received", "schema_version": 1, "message_id": marker})]

    async def produce_and_read() -> list[dict]:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            for value in poison:
                await producer.send_and_wait("poststelle.received", value, key=marker.encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("poststelle.deadletter", bootstrap_servers=stack.bootstrap,
                                    auto_offset_reset="earliest", isolation_level="read_committed")
        await consumer.start()
        found: list[dict] = []
        try:
            deadline = time.monotonic() + 60
            while len(found) < len(poison) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = orjson.loads(record.value)
                        if marker in event["payload"]:
                            found.append(event)
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(produce_and_read())
    assert sorted(e["reason"] for e in found) == ["undecodable", "undecodable"]
    first_stage = load_config(environ=stack.env).topology.stages[0]  # the stage reading `received`
    assert all(e["consumer"] == first_stage and e["source_topic"] == "poststelle.received" for e in found)
    assert any("missing" in e["error"] for e in found), "the reason names what is wrong"

    after = new_test_id()
    send(make_message(after), [RCPT], port=stack.smtp_port)
    stack.wait_for(lambda: stack.test_ids(RCPT)[after], what="delivery after the poison events")


def test_config_typo_stops_start_up_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[ingress]\nprot = 2525\n')
    for args in (["up"], ["run", "ingress"], ["status"]):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--config", str(bad), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert "ingress.prot" in done.stderr and "unknown key" in done.stderr
    wrong_type = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "ingress"], cwd=REPO,
                                capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "POSTSTELLE_INGRESS__PORT": "twenty-five"})
    assert wrong_type.returncode == 2
    assert "ingress.port" in wrong_type.stderr and "integer" in wrong_type.stderr
