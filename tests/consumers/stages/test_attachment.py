"""The attachment stage: name rules, zip entries, held parts, notices, the MIME caps."""
from __future__ import annotations

import dataclasses
import email
import email.policy
import io
import zipfile
from email.message import EmailMessage

import pytest

from consumers.stages.attachment import AttachmentSettings, AttachmentStage, name_problems, zip_problems
from pipeline.blobstore import FileBlobStore
from pipeline.config import load_settings
from pipeline.mail.mime import leaf_at, walk
from pipeline.mail.render import render
from pipeline.stage import PoisonMessage, StageContext, Work
from schemas.events import BlobRef, Client, Envelope, HeaderSummary, Received, Verdict
from schemas.ids import new_id

DEFAULTS = AttachmentSettings()


# ---- name rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("rechnung.pdf", []),
    ("Bericht 2025.docx", []),
    ("archiv.tar.gz", []),
    ("foto.jpg.png", []),
    ("v1.2.pdf", []),
    ("rechnung.pdf.zip", []),
    ("setup.EXE", ["blocked_extension: .exe"]),
    ("setup.exe. . ", ["blocked_extension: .exe"]),
    ("a.pdf.exe", ["blocked_extension: .exe", "double_extension: .pdf.exe"]),
    ("rechnung.pdf.iso", ["double_extension: .pdf.iso"]),
    ("Rechnung.pdf            .exe", ["space_run: 12 spaces in a row hide the end of the name",
                                      "blocked_extension: .exe", "double_extension: .pdf.exe"]),
    ("Rechnung    x.pdf", []),
    ("..\\..\\autoexec.bat", ["path_separator", "blocked_extension: .bat"]),
    ("dir/file.txt", ["path_separator"]),
    ("bild\u202egpj.exe", ["control_character: U+202E", "blocked_extension: .exe"]),
    ("a\x00b.txt", ["control_character: U+0000"]),
])
def test_name_rules(name, expected):
    assert name_problems(name, DEFAULTS) == expected


def test_rules_are_configurable():
    settings = AttachmentSettings(blocked_extensions=["iso"], double_extension=False, space_run=3)
    assert name_problems("a.pdf.exe", settings) == []
    assert name_problems("a.iso", settings) == ["blocked_extension: .iso"]
    assert name_problems("a   .txt", settings)[0].startswith("space_run: 3")
    assert name_problems("a   .txt", AttachmentSettings(space_run=0)) == []


# ---- zip entries -------------------------------------------------------------------------------


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_entries_get_the_name_rules_and_a_path_check():
    data = make_zip({"docs/ok.pdf": b"%PDF", "docs/": b"", "x/invoice.js": b"alert(1)",
                     "../../etc/cron.d/job": b"x", "a.pdf.exe": b"MZ"})
    problems = zip_problems(data, DEFAULTS)
    assert problems == [
        "zip entry 'x/invoice.js': blocked_extension: .js",
        "zip entry '../../etc/cron.d/job': path_traversal",
        "zip entry 'a.pdf.exe': blocked_extension: .exe",
        "zip entry 'a.pdf.exe': double_extension: .pdf.exe",
    ]


def test_zip_guards_entry_count_and_ratio_and_broken_archives():
    assert zip_problems(make_zip({f"{i}.txt": b"" for i in range(30)}), AttachmentSettings(zip_max_entries=20)) == [
        "zip_too_many_entries: 30 > 20"]
    (ratio,) = zip_problems(make_zip({"zeros.bin": b"\0" * 2_000_000}), DEFAULTS)
    assert ratio.startswith("zip entry 'zeros.bin': zip_ratio: declares 2000000 bytes from ")
    assert zip_problems(make_zip({"small.bin": b"\0" * 100_000}), DEFAULTS) == []  # under the minimum size
    assert zip_problems(b"PK\x03\x04 truncated", DEFAULTS) == ["zip_broken: no end of central directory record"]


# ---- the stage ---------------------------------------------------------------------------------


def _stage(tmp_path, **overrides) -> tuple[AttachmentStage, FileBlobStore]:
    env = {f"POSTSTELLE_STAGES__ATTACHMENT__{k.upper()}": str(v) for k, v in overrides.items()}
    settings = load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "attachment,route",
                                            "POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["school.test"]', **env})
    blobs = FileBlobStore(tmp_path / "blobs")
    return AttachmentStage(settings.stage_settings("attachment"), StageContext(settings=settings, blobs=blobs)), blobs


def _work(blobs: FileBlobStore, raw: bytes, rcpt: list[str] | None = None) -> Work:
    ref = blobs.put(raw)
    return Work(message=Received(
        message_id=new_id(),
        envelope=Envelope(mail_from="alice@ext.test", rcpt_to=rcpt or ["max.mustermann@school.test", "bob@ext.test"]),
        client=Client(ip="192.0.2.7", port=40000, helo="mail.ext.test"),
        blob=ref, headers=HeaderSummary(subject="Rechnung", message_id_header="<m1@ext.test>")))


def message_with(*attachments: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@ext.test", "max.mustermann@school.test", "Rechnung"
    msg.set_content("Hallo Max,\nanbei die Rechnung.\n")
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


async def test_a_harmless_message_passes_without_edits(tmp_path):
    stage, blobs = _stage(tmp_path)
    raw = message_with(("rechnung.pdf", b"%PDF-1.4"), ("fotos.zip", make_zip({"a.jpg": b"\xff\xd8"})))
    outcome = await stage.process(_work(blobs, raw))
    assert outcome.verdict == Verdict.PASS and not outcome.edits and not outcome.held and not outcome.inject
    assert outcome.details == {"parts": 4, "named": 2, "archives": 1, "held": [], "limit": ""}


async def test_a_flagged_attachment_is_held_replaced_and_the_recipients_notified(tmp_path):
    stage, blobs = _stage(tmp_path)
    raw = message_with(("rechnung.pdf", b"%PDF-1.4"), ("Rechnung.pdf            .exe", b"MZ\x90\x00"))
    work = _work(blobs, raw)
    outcome = await stage.process(work)
    assert outcome.verdict == Verdict.FAIL and not outcome.quarantine
    (held,) = outcome.held
    assert (held.part, held.filename, held.stage) == ("3", "Rechnung.pdf            .exe", "attachment")
    assert "blocked_extension: .exe" in held.reasons and held.message == work.message
    (edit,) = outcome.edits
    assert (edit.kind, edit.part, edit.sha256) == ("replace_part", "3", held.sha256)
    assert work.message.message_id in edit.value and "part: 3" in edit.value
    assert "postmaster@school.test" in edit.value

    delivered = render(raw, outcome.edits)
    leaves = [p for p in walk(delivered) if p.is_leaf]
    assert [p.content_type for p in leaves] == ["text/plain", "application/octet-stream", "text/plain"]
    cut = leaf_at(walk(raw), "3")
    assert delivered.startswith(raw[:cut.start]) and delivered.endswith(raw[cut.end:])

    assert [n.envelope.rcpt_to for n in outcome.inject] == [["max.mustermann@school.test"], ["bob@ext.test"]]
    notice = outcome.inject[0]
    assert notice.envelope.mail_from == "" and notice.listener == "notice"
    mail = email.message_from_bytes(blobs.get(notice.blob), policy=email.policy.default)
    assert mail["To"] == "max.mustermann@school.test" and mail["In-Reply-To"] == "<m1@ext.test>"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "Rechnung.pdf            .exe" in mail["Subject"]
    assert work.message.message_id in mail.get_content() and "(part 3)" in mail.get_content()


async def test_processing_again_gives_the_same_ids(tmp_path):
    stage, blobs = _stage(tmp_path)
    work = _work(blobs, message_with(("a.pdf.exe", b"MZ")))
    first, second = await stage.process(work), await stage.process(work)
    assert [h.id for h in first.held] == [h.id for h in second.held]
    assert [(n.id, n.message_id, n.blob) for n in first.inject] == [(n.id, n.message_id, n.blob) for n in second.inject]


async def test_rfc2231_names_and_zip_entries_are_held(tmp_path):
    stage, blobs = _stage(tmp_path, notify="false")
    exe = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''Pr%C3%BCfung%2Eexe\r\n\r\nTVo=\r\n")
    raw = message_with(("bilder.zip", make_zip({"urlaub/bild.js": b"x"})))
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    raw = raw.replace(b"--" + boundary + b"--", b"--" + boundary + b"\r\n" + exe + b"--" + boundary + b"--")
    outcome = await stage.process(_work(blobs, raw))
    assert [(h.part, h.filename, h.reasons) for h in outcome.held] == [
        ("2", "bilder.zip", ["zip entry 'urlaub/bild.js': blocked_extension: .js"]),
        ("3", "Prüfung.exe", ["blocked_extension: .exe"])]
    assert outcome.inject == []


async def test_a_zip_renamed_to_pdf_is_still_listed(tmp_path):
    stage, blobs = _stage(tmp_path)
    outcome = await stage.process(_work(blobs, message_with(("scan.pdf", make_zip({"scan.vbs": b"x"})))))
    assert outcome.held[0].reasons == ["zip entry 'scan.vbs': blocked_extension: .vbs"]


async def test_too_deep_and_too_many_parts_are_quarantined_with_the_reason(tmp_path):
    from tests.pipeline.mail.test_mime import many_parts, nested_message

    stage, blobs = _stage(tmp_path)
    deep = await stage.process(_work(blobs, nested_message(200)))
    assert deep.quarantine == "mime_too_deep: nested deeper than 20 levels" and deep.verdict == Verdict.FAIL
    many = await stage.process(_work(blobs, many_parts(10_000)))
    assert many.quarantine == "mime_too_many_parts: more than 1000 MIME parts"


async def test_limits_can_dead_letter_instead(tmp_path):
    from tests.pipeline.mail.test_mime import nested_message

    stage, blobs = _stage(tmp_path, on_limit="deadletter")
    with pytest.raises(PoisonMessage) as info:
        await stage.process(_work(blobs, nested_message(30)))
    assert info.value.reason == "mime_too_deep"


async def test_a_missing_blob_is_a_poison_message(tmp_path):
    stage, blobs = _stage(tmp_path)
    work = _work(blobs, b"Subject: x\r\n\r\ny\r\n")
    gone = dataclasses.replace(work.message, blob=BlobRef(sha256="ee" * 32, size=3))
    with pytest.raises(PoisonMessage) as info:
        await stage.process(Work(message=gone))
    assert info.value.reason == "blob_missing"


def test_bad_settings_are_refused():
    from pipeline.settings import ConfigError

    with pytest.raises(ConfigError, match="on_limit"):
        AttachmentSettings(on_limit="ignore")
    with pytest.raises(ConfigError, match=r"stages\.attachment\.max_depth: no longer a key here: .*\[message\] max_depth"):
        load_settings(None, environ={"POSTSTELLE_TOPOLOGY__STAGES": "attachment,route",
                                     "POSTSTELLE_STAGES__ATTACHMENT__MAX_DEPTH": "10"})
    with pytest.raises(ConfigError, match=r"message\.max_depth: expected 1\.\.64, got 0"):
        load_settings(None, environ={"POSTSTELLE_MESSAGE__MAX_DEPTH": "0"})


async def test_the_caps_of_the_message_section_apply(tmp_path):
    from tests.pipeline.mail.test_mime import nested_message

    env = {"POSTSTELLE_TOPOLOGY__STAGES": "attachment,route", "POSTSTELLE_MESSAGE__MAX_DEPTH": "40"}
    settings = load_settings(None, environ=env)
    blobs = FileBlobStore(tmp_path / "blobs")
    stage = AttachmentStage(settings.stage_settings("attachment"), StageContext(settings=settings, blobs=blobs))
    assert not (await stage.process(_work(blobs, nested_message(15)))).quarantine  # 30 levels: under 40
    deep = await stage.process(_work(blobs, nested_message(30)))
    assert deep.quarantine == "mime_too_deep: nested deeper than 40 levels"
