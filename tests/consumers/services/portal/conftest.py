"""A portal on in-memory parts: the real application, quarantine state, actions and user settings;
Kafka is a `MemoryTransport` (reads) and a recording producer (writes), the directory a table of
demo accounts. Requests go through httpx's ASGITransport, cookies and all."""
from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from consumers.services.portal.app import create_app
from consumers.services.portal.core import Portal
from pipeline.blobstore import FileBlobStore
from pipeline.clients.directory import Account
from pipeline.producers import TransactionalProducer
from pipeline.quarantine_settings import QuarantineSettings, WebSettings
from pipeline.settings import KafkaSettings, Settings, TopologySettings, UsersSettings
from pipeline.state.quarantine import QuarantineView, entry_id
from pipeline.state.quarantine_actions import QuarantineActions
from pipeline.state.users import UserSettings
from pipeline.tables import MemoryLog, MemoryTransport
from schemas.events import (
    Client,
    Envelope,
    HeaderSummary,
    Held,
    Quarantined,
    Received,
    Result,
    SpamLearned,
)
from tests.pipeline.state.test_quarantine_state import Recorder

LENA, MAX, ADMIN = "lena.mueller@school.test", "max.mustermann@school.test", "it.admin@school.test"
PASSWORDS = {"lena.mueller": "Lena2026!", "max.mustermann": "Max2026!", "it.admin": "Admin2026!"}
# The site's language is English here, so the page tests read English; test_language.py tests both.
SETTINGS = Settings(topology=TopologySettings(stages=["virus", "attachment", "spam", "route"]),
                    kafka=KafkaSettings(request_timeout_ms=200), users=UsersSettings(language="en"))
KEY = b"k" * 32
SPAM_RAW = (b"From: Prize Office <winner@example.org>\r\nTo: lena.mueller@school.test\r\n"
            b"Subject: EARN MONEY <b>now</b>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n"
            b"<p>Work from home!</p><script>alert('x')</script><img src=\"http://192.0.2.55/track.gif\">\r\n")
EXE_RAW = (b'From: a@ext.test\r\nSubject: Rechnung\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
           b'--b\r\n\r\nanbei die Rechnung\r\n--b\r\n'
           b'Content-Type: application/octet-stream; name="a.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           b'TVqQAAMAAAA=\r\n--b--\r\n')


class DemoAccounts:
    """The directory as the portal asks it: login → account, and the admin group."""

    def __init__(self) -> None:
        self.binds = 0

    async def authenticate(self, login: str, password: str) -> Account | None:
        self.binds += 1
        uid = login.split("@")[0]
        if PASSWORDS.get(uid) != password:
            return None
        mail = f"{uid}@school.test"
        return Account(uid=uid, dn=f"uid={uid},ou=people,dc=school,dc=test", mail=mail, addresses=frozenset({mail}))

    async def is_admin(self, account: Account) -> bool:
        return account.uid == "it.admin"


@dataclass
class Harness:
    portal: Portal
    client: httpx.AsyncClient
    recorder: Recorder
    blobs: FileBlobStore
    accounts: DemoAccounts
    learned: list = field(default_factory=list)

    @property
    def state(self):
        return self.portal.view.state

    def spam(self, recipients=(LENA, MAX), raw: bytes = SPAM_RAW, subject: str = "EARN MONEY <b>now</b>") -> dict:
        """A spam held for `recipients`; their entry ids by address."""
        message = Received(message_id=f"m{len(self.state.entries)}", client=Client(ip="192.0.2.1", port=1),
                           envelope=Envelope(mail_from="winner@example.org", rcpt_to=list(recipients)),
                           blob=self.blobs.put(raw),
                           headers=HeaderSummary(subject=subject, header_from="winner@example.org"))
        event = Quarantined(message_id=message.message_id, stage="spam", reason="spam: score 9.2",
                            recipients=list(recipients), message=message,
                            results=[Result(stage="virus", verdict="pass"),
                                     Result(stage="spam", verdict="fail", score=9.2)])
        self.state.apply_event(event)
        return {r: entry_id(event.id, r) for r in recipients}

    def exe(self, recipient: str = MAX) -> str:
        import hashlib

        from pipeline.mail.mime import leaf_at, walk
        message = Received(message_id=f"x{len(self.state.entries)}", client=Client(ip="192.0.2.1", port=1),
                           envelope=Envelope(mail_from="a@ext.test", rcpt_to=[recipient]),
                           blob=self.blobs.put(EXE_RAW), headers=HeaderSummary(subject="Rechnung",
                                                                               header_from="a@ext.test"))
        sha = hashlib.sha256(leaf_at(walk(EXE_RAW), "2").body(EXE_RAW)).hexdigest()
        held = Held(message_id=message.message_id, stage="attachment", part="2", sha256=sha, filename="a.exe",
                    content_type="application/octet-stream", reasons=["blocked_extension: .exe"],
                    recipients=[recipient], message=message, results=[Result(stage="virus", verdict="pass")])
        self.state.apply_event(held)
        return entry_id(held.id, recipient)

    async def csrf(self, path: str = "/login") -> str:
        page = await self.client.get(path)
        return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)

    async def sign_in(self, login: str, password: str | None = None) -> httpx.Response:
        token = await self.csrf("/login")
        return await self.client.post("/login", data={"csrf": token, "login": login,
                                                      "password": password or PASSWORDS[login.split("@")[0]]})

    async def post(self, path: str, data: dict | None = None, page: str = "/quarantine") -> httpx.Response:
        return await self.client.post(path, data={"csrf": await self.csrf(page), **(data or {})})

    def transactions(self) -> list[list[str]]:
        return [[topic for topic, _, _ in t] for t in self.recorder.committed]


def make_harness(tmp_path, web: WebSettings | None = None, clock=time.time, language: str = "en"
                 ) -> tuple[Harness, list]:
    """`language`: the site's `[users] language` (what a user who set none gets)."""
    blobs = FileBlobStore(tmp_path / "blobs")
    view = QuarantineView(SETTINGS, "test", transport=MemoryTransport(MemoryLog(["quarantine"])))
    users = UserSettings(MemoryTransport(MemoryLog(["users"])), dataclasses.replace(SETTINGS.users, language=language))
    recorder = Recorder()
    learned: list = []

    def learn(raw: bytes, message_id: str) -> SpamLearned:
        learned.append(message_id)
        return SpamLearned(message_id=message_id, digest="ab" * 32, label="ham", tokens="", tokenizer_version=1)

    producer = TransactionalProducer(SETTINGS.kafka, "portal-test", make=lambda *_: recorder)
    actions = QuarantineActions(SETTINGS, view, producer, blobs, users=users, learn_ham=learn)
    accounts = DemoAccounts()
    portal = Portal(web=web or WebSettings(secure_cookies=False), quarantine=QuarantineSettings(), view=view,
                    actions=actions, accounts=accounts, users=users, blobs=blobs, link_key=KEY, clock=clock)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(portal), client=("192.0.2.9", 4000)),
                               base_url="http://127.0.0.1:8025")
    return Harness(portal, client, recorder, blobs, accounts, learned), [view, users, client]


@contextlib.asynccontextmanager
async def running_portal(tmp_path, **harness) -> AsyncIterator[Harness]:
    """A started harness (`make_harness`'s arguments), closed after."""
    h, closing = make_harness(tmp_path, **harness)
    await h.portal.view.start(1)
    await h.portal.users.start(1)
    try:
        yield h
    finally:
        await closing[2].aclose()
        await closing[1].close()
        await closing[0].close()


@pytest.fixture
async def portal(tmp_path):
    async with running_portal(tmp_path) as harness:
        yield harness
