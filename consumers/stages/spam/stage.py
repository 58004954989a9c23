"""spam: score every message with rules, Bayes and the earlier checks' signals; tag, hold or refuse per recipient.

For each message the stage reads the shared parsed view with its content, scores it (`scorer.py`:
the rules of deploy/spam/rules/ and the site's files, the Bayes model folded from the learn topic,
the results of the stages before it) and maps the score to a spam probability in %
(`actions.probability`). Then each recipient in play gets one action (`actions.action_for`) from
their own settings (`pipeline.state.users`: quarantine on/off, own thresholds, allow and block
lists) or the site's:

- `reject` and `blocked` → the recipient is refused (`Outcome.rejected`): a 554 at DATA when every
  recipient is refused within the verdict wait; a verdict that comes after the 250 is quarantined
  by the verdict service, never bounced;
- `quarantine` → held for that recipient (`Outcome.quarantined`);
- `tag_probable` / `tag_certain` → the copy gets `X-Spam-Flag: YES` and the subject tag;
- every copy gets `X-Spam-Score` and `X-Spam-Status`, after fields of those names from outside are
  removed.

Messages the gateway writes itself (DSNs, attachment notices, quarantine digests:
`pipeline.mail.inject.sent_by_gateway`) are scored for the headers, but every recipient's action is
`none`: a digest quotes the subjects of held spam and must reach its user.

Recipients outside the local domains (mail of the site's users going out) are only refused at
`reject_score`; they are never tagged or held (they have no settings here, and a tag would reach
someone who did not ask for it).

"Authenticated" for an allow list: the listed sender's domain passed SPF (the envelope sender),
DKIM (d= the domain or a parent) or DMARC in the auth stage, or the client logged in. Autolearn
(`[stages.spam.bayes.autolearn]`, off by default) writes a learn event like `poststelle spam learn`.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from consumers.stages.spam.actions import action_for, spam_edits
from consumers.stages.spam.autolearn import autolearn_label
from consumers.stages.spam.model import BayesModel, kafka_transport, learned_event, publish
from consumers.stages.spam.scorer import Scored, Scorer
from consumers.stages.spam.settings import SpamSettings
from consumers.stages.spam.tokens import token_digest
from pipeline.bus import Topics
from pipeline.mail.inject import sent_by_gateway
from pipeline.mail.reader import message_reader
from pipeline.registry import register
from pipeline.settings import Settings
from pipeline.stage import Outcome, StageContext, TemporaryFailure, Work
from pipeline.state.users import UserPrefs, UserSettings, UserSettingsUnavailable
from schemas.codec import plain
from schemas.events import Result, Verdict
from schemas.stages.spam import RecipientAction, RuleHit, SpamDetails

__all__ = ["SpamStage", "SpamSettings", "authenticated_senders"]

log = logging.getLogger(__name__)

OUTSIDE = UserPrefs()  # a recipient outside the local domains: the site's thresholds, nothing of their own


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _within(domain: str, parent: str) -> bool:
    return bool(domain) and bool(parent) and (domain == parent or domain.endswith("." + parent))


def authenticated_senders(senders: tuple[str, ...], mail_from: str, auth: Result | None,
                          logged_in: bool) -> frozenset[str]:
    """The senders whose domain the auth stage confirmed (see the module docstring), lower case."""
    if logged_in:
        return frozenset(s.lower() for s in senders)
    details: dict[str, Any] = auth.details if auth is not None else {}
    spf, dmarc = details.get("spf") or {}, details.get("dmarc") or {}
    dkim = [d.get("domain", "").lower() for d in details.get("dkim") or [] if d.get("result") == "pass"]
    confirmed = set()
    for sender in senders:
        domain = _domain(sender)
        if (spf.get("result") == "pass" and sender.lower() == mail_from.lower()
                or dmarc.get("result") == "pass" and domain == (dmarc.get("from_domain") or "").lower()
                or any(_within(domain, d) for d in dkim)):
            confirmed.add(sender.lower())
    return frozenset(confirmed)


@register
class SpamStage:
    name = "spam"
    description = "rules, Bayes and earlier signals to a spam score; score headers, subject tags, per-user quarantine"
    Settings = SpamSettings

    def __init__(self, settings: SpamSettings, context: StageContext) -> None:
        self.settings = settings
        site = context.settings
        self.reader = message_reader(context.blobs, site.message)
        self.model = None
        if settings.bayes.enabled:
            self.model = BayesModel(settings.bayes, kafka_transport(site, client_id="spam-bayes"),
                                    topic=Topics.from_settings(site).spam_learn, snapshot_dir=site.home / "spam")
        self.scorer = Scorer.load(settings, site.source, self.model)  # a broken rule file stops start-up here
        self.users = UserSettings.from_settings(site, client_id="spam-users")
        self.local_domains = frozenset(d.lower() for d in site.ingress.local_domains)

    @classmethod
    def check_config(cls, site: Settings) -> None:
        """Compile the rule files (`poststelle config check` and `up`): RuleFileError with file, line, reason."""
        Scorer.load(site.stages.get(cls.name) or SpamSettings(), site.source)

    async def start(self) -> None:
        log.info("spam: %d rules loaded", len(self.scorer.rules))
        if self.model is not None:
            await self.model.start()
        await self.users.start()

    async def close(self) -> None:
        if self.model is not None:
            await self.model.close()
        await self.users.close()

    async def _prefs(self, recipients: list[str]) -> list[UserPrefs]:
        async def one(recipient: str) -> UserPrefs:
            if _domain(recipient) not in self.local_domains:
                return OUTSIDE
            return await self.users.prefs(recipient)

        try:
            return list(await asyncio.gather(*(one(r) for r in recipients)))
        except UserSettingsUnavailable as exc:
            raise TemporaryFailure(f"per-user settings: {exc}") from None

    async def process(self, work: Work) -> Outcome:
        message = work.message
        parsed = await self.reader.parsed(message.blob, content=True)
        learning = self.model is not None and self.settings.bayes.autolearn.enabled
        scored = await asyncio.to_thread(self.scorer.score, parsed, message, work.history, want_hashes=learning)
        senders = tuple(dict.fromkeys(a for a in (message.envelope.mail_from, *parsed.authors.addresses) if a))
        confirmed = authenticated_senders(senders, message.envelope.mail_from, work.result_of("auth"),
                                          bool(message.client.authenticated_as))
        if sent_by_gateway(message):  # a DSN, a notice, a digest quoting spam subjects: scored, never acted on
            why = f"written by the gateway itself ({message.listener})"
            actions = [RecipientAction(recipient=r, action="none", why=why) for r in work.recipients]
            return self._outcome(scored, actions, "", gateway=True)
        actions = []
        for recipient, prefs in zip(work.recipients, await self._prefs(work.recipients)):
            action = action_for(recipient, scored.score, scored.probability, prefs, senders, confirmed, self.settings)
            if prefs is OUTSIDE and action.action != "reject":
                action = RecipientAction(recipient=recipient, action="none", why="not a local recipient")
            actions.append(action)
        autolearned = await self._autolearn(scored, message.message_id) if learning else ""
        return self._outcome(scored, actions, autolearned)

    async def _autolearn(self, scored: Scored, message_id: str) -> str:
        assert self.model is not None
        if not len(scored.hashes):
            return ""
        label = autolearn_label(self.settings.bayes.autolearn, scored.score, scored.hits, bayes=scored.bayes,
                                learned=(self.model.nspam, self.model.nham), min_learned=self.settings.bayes.min_learned,
                                already=self.model.label_of(token_digest(scored.hashes)))
        if label is None:
            return ""
        delivery = await publish(self.model.transport, learned_event(scored.hashes, label, source="autolearn",
                                                                     message_id=message_id))
        if delivery is not None:
            await delivery  # a learn event is idempotent (keyed by the digest): a retry writes the same again
        return label

    def _outcome(self, scored: Scored, actions: list[RecipientAction], autolearned: str, gateway: bool = False
                 ) -> Outcome:
        s = self.settings
        rejected, quarantined = {}, {}
        why = f"spam: {scored.top()}" if scored.top() else "spam"
        summary = f"{why} (score {scored.score:.1f}, probability {scored.probability:g}%)"
        for action in actions:
            if action.action == "reject":
                rejected[action.recipient] = summary
            elif action.action == "blocked":
                rejected[action.recipient] = action.why
            elif action.action == "quarantine":
                quarantined[action.recipient] = summary
        hits = [RuleHit(name=h.name, score=h.score, description=h.description) for h in scored.hits]
        details = SpamDetails(score=scored.score, probability=scored.probability, required_score=s.required_score,
                              rules=hits, bayes=scored.bayes, actions=actions, autolearned=autolearned)
        verdict = Verdict.FAIL if scored.probability >= s.tag_probable and not gateway else Verdict.PASS
        return Outcome(verdict=verdict, score=scored.score, details=plain(details),
                       edits=spam_edits(scored.score, scored.probability, hits, scored.bayes, actions, s),
                       rejected=rejected, quarantined=quarantined)
