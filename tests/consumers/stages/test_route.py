"""The route stage: the site table, the directory's six cases, the defaults; its outcome applied as the runner does.

The demo entries are read from the real slapd (paul.wagner on store2, the alumni forward
ex.schueler); the table of six cases uses a directory that answers from a dict (the LDAP client is
the transport here, the stage's decisions are what is tested).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from consumers.stages.route import RouteStage
from pipeline.blobstore import FileBlobStore
from pipeline.clients.directory import DirectoryUnavailable
from pipeline.config import load_settings
from pipeline.recipients import apply_outcome
from pipeline.settings import ConfigError
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from schemas.events import BlobRef, Client, Envelope, Received
from schemas.ids import new_id
from tests.servers import SlapdServer

CONFIG = Path(__file__).resolve().parents[3] / "deploy/local/poststelle.toml"
ANNA, PAUL, EX = "anna.schmidt@school.test", "paul.wagner@school.test", "ex.schueler@school.test"


def _settings(home: Path, slapd_port: int = 1, **env: str):
    environ = {"POSTSTELLE_HOME": str(home), "POSTSTELLE_TOPOLOGY__STAGES": "route", "POSTSTELLE_TOPOLOGY__CHAINS": "[]",
               "POSTSTELLE_LDAP__PORT": str(slapd_port), "POSTSTELLE_LDAP__TIMEOUT": "1", **env}
    return load_settings(CONFIG, environ=environ)


def _stage(home: Path, slapd_port: int = 1, directory=None, **env: str) -> RouteStage:
    settings = _settings(home, slapd_port, **env)
    context = StageContext(settings=settings, blobs=FileBlobStore(home))
    return RouteStage(settings.stage_settings("route"), context, directory=directory)


def _work(*rcpt: str) -> Work:
    return Work(message=Received(message_id=new_id(), envelope=Envelope(mail_from="a@example.org", rcpt_to=list(rcpt)),
                                 client=Client(ip="192.0.2.7", port=40000), blob=BlobRef(sha256="0" * 64, size=0)))


async def _process(stage: RouteStage, work: Work) -> Outcome:
    await stage.start()
    try:
        return await stage.process(work)
    finally:
        await stage.close()


class DictDirectory:
    """Answers `attributes` from a dict (address -> attributes); None for addresses it does not have."""

    def __init__(self, entries: dict[str, dict[str, tuple[str, ...]]], down: bool = False) -> None:
        self.entries, self.down, self.asked = entries, down, []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def attributes(self, address: str, names):
        self.asked.append(address)
        if self.down:
            raise DirectoryUnavailable("slapd: timed out")
        found = self.entries.get(address.lower())
        return None if found is None else {n: found.get(n, ()) for n in names}


async def test_site_table_address_domain_and_sub_domain_before_the_defaults(tmp_path) -> None:
    stage = _stage(tmp_path, directory=DictDirectory({}), POSTSTELLE_STAGES__ROUTE__DIRECTORY="false")
    work = _work("prof@physik.school.test", "x@labor.physik.school.test", ANNA, "friend@example.org")
    outcome = await _process(stage, work)
    assert outcome.routes == {"physik": ["prof@physik.school.test", "x@labor.physik.school.test"],
                              "lmtp": [ANNA], "smarthost": ["friend@example.org"]}
    assert outcome.details["reasons"] == {"prof@physik.school.test": "domain route physik.school.test",
                                          "x@labor.physik.school.test": "domain route .physik.school.test"}
    assert outcome.replace == [] and outcome.rejected == {}


async def test_an_address_route_wins_over_its_domain_and_the_longest_domain_wins(tmp_path) -> None:
    settings = tmp_path / "extra.toml"
    settings.write_text(CONFIG.read_text() + '\n[[stages.route.routes]]\nmatch = "Chef@Physik.School.Test"\n'
                        'destination = "store2"\n[[stages.route.routes]]\nmatch = ".labor.physik.school.test"\n'
                        'destination = "smarthost"\n')
    loaded = load_settings(settings, environ={"POSTSTELLE_HOME": str(tmp_path), "POSTSTELLE_TOPOLOGY__STAGES": "route",
                                              "POSTSTELLE_TOPOLOGY__CHAINS": "[]",
                                              "POSTSTELLE_STAGES__ROUTE__DIRECTORY": "false"})
    stage = RouteStage(loaded.stage_settings("route"), StageContext(settings=loaded, blobs=FileBlobStore(tmp_path)))
    outcome = await _process(stage, _work("chef@physik.school.test", "x@a.labor.physik.school.test",
                                          "y@physik.school.test"))
    assert outcome.routes == {"store2": ["chef@physik.school.test"], "smarthost": ["x@a.labor.physik.school.test"],
                              "physik": ["y@physik.school.test"]}


# mailHost, mailRoutingAddress -> (destination, the address delivered to): the draft's six cases
SIX_CASES = {
    "here@school.test": ({"mailHost": ("mx.school.test",)}, "lmtp", "here@school.test"),
    "here-rw@school.test": ({"mailHost": ("MX.school.test",), "mailRoutingAddress": ("Box7@school.test",)},
                            "lmtp", "Box7@school.test"),
    "there@school.test": ({"mailHost": ("store2.school.test",)}, "store2", "there@school.test"),
    "there-rw@school.test": ({"mailHost": ("store2.school.test",), "mailRoutingAddress": ("t.rw@school.test",)},
                             "store2", "t.rw@school.test"),
    "fwd@school.test": ({"mailRoutingAddress": ("fwd@alumni.test",)}, "smarthost", "fwd@alumni.test"),
    "plain@school.test": ({}, "lmtp", "plain@school.test"),
}


async def test_the_six_cases_of_the_inet_local_mail_recipient_model(tmp_path) -> None:
    entries = {address: attributes for address, (attributes, _, _) in SIX_CASES.items()}
    stage = _stage(tmp_path, directory=DictDirectory(entries))
    work = _work(*SIX_CASES, "nobody@school.test", "friend@example.org")
    outcome = await _process(stage, work)
    fan = apply_outcome(work, outcome, "route")  # the runner's view: valid, every recipient routed once
    where = {r: d for d, rs in fan.routed.items() for r in rs}
    for address, (_, destination, delivered) in SIX_CASES.items():
        assert where[delivered] == destination, address
    assert where["nobody@school.test"] == "lmtp" and where["friend@example.org"] == "smarthost"
    assert {r.recipient: r.into for r in fan.replacements} == {
        "here-rw@school.test": ["Box7@school.test"], "there-rw@school.test": ["t.rw@school.test"],
        "fwd@school.test": ["fwd@alumni.test"]}
    assert all(r.stage == "route" and r.reason == "mailRoutingAddress" for r in fan.replacements)
    assert outcome.details["reasons"]["there@school.test"] == "mailHost store2.school.test"
    assert fan.remaining == [] and fan.rejected == {}


async def test_a_mail_host_no_destination_serves_refuses_that_recipient_only(tmp_path) -> None:
    entries = {"lost@school.test": {"mailHost": ("old-exchange.school.test",), "mailRoutingAddress": ("l@x.test",)}}
    stage = _stage(tmp_path, directory=DictDirectory(entries))
    work = _work("lost@school.test", ANNA)
    outcome = await _process(stage, work)
    fan = apply_outcome(work, outcome, "route")
    assert list(fan.rejected.values()) == [["lost@school.test"]]
    assert "old-exchange.school.test, which no destination serves" in outcome.rejected["lost@school.test"]
    assert outcome.replace == [] and fan.routed == {"lmtp": [ANNA]}


async def test_two_addresses_rewritten_into_one_get_one_copy(tmp_path) -> None:
    entries = {"a@school.test": {"mailRoutingAddress": ("box@school.test",)},
               "b@school.test": {"mailRoutingAddress": ("box@school.test",)}}
    work = _work("a@school.test", "b@school.test", "box@school.test")
    outcome = await _process(_stage(tmp_path, directory=DictDirectory(entries)), work)
    fan = apply_outcome(work, outcome, "route")
    assert fan.routed == {"lmtp": ["box@school.test"]}


async def test_directory_down_is_a_temporary_failure_and_the_table_asks_it_nothing(tmp_path) -> None:
    directory = DictDirectory({}, down=True)
    with pytest.raises(TemporaryFailure, match="directory"):
        await _process(_stage(tmp_path, directory=directory), _work(ANNA))
    outcome = await _process(_stage(tmp_path, directory=directory), _work("p@physik.school.test", "f@example.org"))
    assert outcome.routes == {"physik": ["p@physik.school.test"], "smarthost": ["f@example.org"]}
    assert directory.asked == [ANNA]  # only the local, not table-routed recipient was looked up


async def test_demo_directory_store2_the_alumni_forward_and_lisas_forward(tmp_path, slapd: SlapdServer) -> None:
    work = _work(PAUL, EX, ANNA, "Sekretariat@school.test", "lisa.koch@school.test")
    outcome = await _process(_stage(tmp_path, slapd.port), work)
    fan = apply_outcome(work, outcome, "route")
    assert fan.routed == {"store2": [PAUL], "smarthost": ["ex.schueler@alumni.test", "lisa.koch@privat.test"],
                          "lmtp": [ANNA, "Sekretariat@school.test", "lisa.koch@school.test"]}
    assert [(r.recipient, r.into) for r in fan.replacements] == [
        (EX, ["ex.schueler@alumni.test"]),
        ("lisa.koch@school.test", ["lisa.koch@school.test", "lisa.koch@privat.test"])]
    assert outcome.details["rewritten"] == {EX: "ex.schueler@alumni.test"}


@pytest.mark.parametrize(("env", "key"), [
    ({"POSTSTELLE_STAGES__ROUTE__LOCAL_DESTINATION": "store3"}, "stages.route.local_destination"),
    ({"POSTSTELLE_DESTINATIONS__PHYSIK__KIND": "uucp"}, "destinations.physik.kind"),
    ({"POSTSTELLE_DESTINATIONS__PHYSIK__TLS": "maybe"}, "destinations.physik.tls"),
    ({"POSTSTELLE_DESTINATIONS__PHYSIK__USERNAME": "u"}, "destinations.physik.password_file"),
    ({"POSTSTELLE_DESTINATIONS__ANALYTICS__KIND": "smtp"}, "destinations.analytics"),
    ({"POSTSTELLE_DESTINATIONS__BAD.NAME__KIND": "smtp"}, "destinations.bad.name"),
    ({"POSTSTELLE_LOCAL__DOVECOT_DESTINATIONS": "physik"}, "local.dovecot_destinations"),
    ({"POSTSTELLE_SUPERVISOR__SINKS": "lmtp,store3"}, "supervisor.sinks"),
])
def test_destination_config_errors_name_the_key(tmp_path, env, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _settings(tmp_path, **env)


def test_a_route_to_an_unknown_destination_is_refused_at_load(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[stages.route.routes]]\nmatch = "lists.school.test"\ndestination = "lists"\n')
    with pytest.raises(ConfigError, match=r"stages\.route\.routes\[0\]\.destination"):
        load_settings(path, environ={})
    path.write_text('[destinations.lists]\nport = 2529\n[[stages.route.routes]]\nmatch = "lists.school.test"\n'
                    'destination = "lists"\n')
    settings = load_settings(path, environ={})
    assert settings.destination("lists").kind == "smtp" and settings.supervisor.sinks == [
        "lmtp", "smarthost", "lists", "analytics"]


# ---- SRS ------------------------------------------------------------------------------------------


def _srs_env(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "srs.keys"
    keys.write_text("route-test-key\n")
    return {"POSTSTELLE_SRS__ENABLED": "true", "POSTSTELLE_SRS__KEY_FILE": str(keys)}


def _from(sender: str, *rcpt: str) -> Work:
    work = _work(*rcpt)
    envelope = Envelope(mail_from=sender, rcpt_to=list(rcpt))
    return Work(message=Received(message_id=work.message.message_id, envelope=envelope, client=work.message.client,
                                 blob=work.message.blob))


async def test_a_forwarded_copy_gets_an_srs_sender_that_reverses_to_the_original(tmp_path) -> None:
    from pipeline.mail.render import envelope_sender_of
    from pipeline.mail.srs import srs_signer
    from pipeline.recipients import copies
    from schemas.events import Routed

    env = _srs_env(tmp_path)
    entries = {"fwd@school.test": {"mailRoutingAddress": ("fwd@alumni.test",)},
               "inside@school.test": {"mailRoutingAddress": ("box@school.test",)}}
    stage = _stage(tmp_path, directory=DictDirectory(entries), **env)
    work = _from("Vater@Example.ORG", "fwd@school.test", "inside@school.test", ANNA)
    outcome = await _process(stage, work)
    fan = apply_outcome(work, outcome, "route")
    by_copy = {tuple(r): e for r, e in copies(fan.routed["smarthost"], fan.edits)}
    [edits] = by_copy.values()
    routed = Routed(message_id=work.message.message_id, destination="smarthost", recipients=["fwd@alumni.test"],
                    message=work.message, edits=edits)
    sender = envelope_sender_of(routed)
    assert sender.startswith("SRS0=") and sender.endswith("=Example.ORG=Vater@school.test")
    assert srs_signer(_settings(tmp_path, **env)).reverse(sender) == "Vater@Example.ORG"
    # the local rewrite and the untouched recipient keep the original sender
    assert [e.recipients for e in fan.edits if e.kind == "envelope_sender"] == [["fwd@alumni.test"]]
    # the null sender and a local sender are never rewritten
    for sender in ("", ANNA):
        stage = _stage(tmp_path, directory=DictDirectory(entries), **env)
        out = await _process(stage, _from(sender, "fwd@school.test"))
        assert out.edits == [] and out.replace[0].into == ["fwd@alumni.test"]


async def test_a_bounce_to_an_srs_address_goes_to_the_original_sender_forged_ones_are_refused(tmp_path) -> None:
    from pipeline.mail.srs import srs_signer

    env = _srs_env(tmp_path)
    signer = srs_signer(_settings(tmp_path, **env))
    valid = signer.forward("vater@example.org")
    forged = valid.replace("=vater@", "=mallory@")
    work = _from("", valid, forged, ANNA)
    outcome = await _process(_stage(tmp_path, directory=DictDirectory({}), **env), work)
    fan = apply_outcome(work, outcome, "route")
    assert fan.routed == {"smarthost": ["vater@example.org"], "lmtp": [ANNA]}
    assert [(r.recipient, r.into) for r in fan.replacements] == [(valid, ["vater@example.org"])]
    assert "the SRS hash does not verify" in outcome.rejected[forged]
    assert outcome.edits == []  # a bounce keeps the null sender


async def test_per_user_forwards_with_and_without_a_copy_and_srs_for_the_outside_ones(tmp_path) -> None:
    env = {**_srs_env(tmp_path), "POSTSTELLE_STAGES__ROUTE__FORWARD_ATTRIBUTE": "fwd",
           "POSTSTELLE_STAGES__ROUTE__KEEP_COPY_ATTRIBUTE": "keep"}
    entries = {"both@school.test": {"fwd": ("both@privat.test", "max.mustermann@school.test")},
               "gone@school.test": {"fwd": ("gone@privat.test",), "keep": ("FALSE",)},
               "there@school.test": {"mailHost": ("store2.school.test",), "fwd": ("there@privat.test",),
                                     "keep": ("TRUE",)}}
    work = _from("vater@example.org", "both@school.test", "gone@school.test", "there@school.test")
    outcome = await _process(_stage(tmp_path, directory=DictDirectory(entries), **env), work)
    fan = apply_outcome(work, outcome, "route")
    assert fan.routed == {"smarthost": ["both@privat.test", "gone@privat.test", "there@privat.test"],
                          "lmtp": ["max.mustermann@school.test", "both@school.test"], "store2": ["there@school.test"]}
    assert {r.recipient: (r.into, r.reason) for r in fan.replacements} == {
        "both@school.test": (["both@school.test", "both@privat.test", "max.mustermann@school.test"],
                             "forward, keeping a copy"),
        "gone@school.test": (["gone@privat.test"], "forward"),
        "there@school.test": (["there@school.test", "there@privat.test"], "forward, keeping a copy")}
    [srs] = [e for e in fan.edits if e.kind == "envelope_sender"]
    assert sorted(srs.recipients) == ["both@privat.test", "gone@privat.test", "there@privat.test"]
    assert srs.value.startswith("SRS0=") and srs.value.endswith("=example.org=vater@school.test")
    assert outcome.details["forwarded"]["gone@school.test"] == ["gone@privat.test"]
