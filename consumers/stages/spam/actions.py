"""From a score to what happens to each recipient's copy: the probability, the actions, the edits.

The score is the sum of the scores of the rules that fired. It becomes a spam probability in %
(`probability`: 50 × score / required_score, clamped to 0–100, so SpamAssassin's 5 points are 50 %
and 7 points 70 %: the seed site's `{SPAM?}` and `{SPAM!}` bands). Each recipient then gets one
action (`action_for`), from their own settings where they have any, else the site's:

| action | when | what happens |
|---|---|---|
| `blocked` | a sender (envelope or From) is on the recipient's block list | rejected for this recipient |
| `allowed` | a sender is on the recipient's allow list and the message is authenticated | headers only |
| `reject` | score >= `reject_score` (or probability >= the user's `reject_at`) | rejected: 554 at DATA, or quarantine |
| `quarantine` | probability >= `quarantine_at` and the recipient turned their quarantine on | held for the recipient |
| `tag_certain` | probability >= `tag_certain` | subject tagged `{SPAM!}`, `X-Spam-Flag: YES` |
| `tag_probable` | probability >= `tag_probable` | subject tagged `{SPAM?}`, `X-Spam-Flag: YES` |
| `none` | below | headers only |

"Authenticated" is an SPF, DKIM or DMARC pass for the sender: a forged From does not get through on
an allow list. Every copy gets `X-Spam-Score` and `X-Spam-Status` (clean ones too, with their low score); header
fields of those names that came from outside are removed first, so a sender cannot pose as scored.
"""
from __future__ import annotations

from collections.abc import Collection

from consumers.stages.spam.settings import SpamSettings
from pipeline.state.users import UserPrefs
from schemas.events import Edit
from schemas.stages.spam import RecipientAction, RuleHit

__all__ = ["probability", "action_for", "spam_edits", "SITE"]

STAGE = "spam"


SITE = UserPrefs()  # a recipient with no settings of their own: the site's thresholds, no quarantine, no lists


def probability(score: float, required_score: float) -> float:
    """The spam probability in % (one decimal) of a score."""
    return round(min(100.0, max(0.0, 50.0 * score / required_score)), 1)


def action_for(recipient: str, score: float, prob: float, prefs: UserPrefs, senders: tuple[str, ...],
               authenticated: bool | Collection[str], s: SpamSettings) -> RecipientAction:
    """The one action for `recipient` (see the module docstring); `why` says which threshold or list.

    `authenticated`: whether the senders are authenticated, or which of them are (lower case)."""
    def act(action: str, why: str = "") -> RecipientAction:
        return RecipientAction(recipient=recipient, action=action, why=why)

    blocked = next((sender for sender in senders if prefs.blocks(sender)), "")
    if blocked:
        return act("blocked", f"{blocked} is on the recipient's block list")
    allowed = next((sender for sender in senders if prefs.allows(sender) and (
        authenticated if isinstance(authenticated, bool) else sender.lower() in authenticated)), "")
    if allowed:
        return act("allowed", f"{allowed} is on the recipient's allow list")
    if score >= s.reject_score:
        return act("reject", f"score {score:g} >= reject_score {s.reject_score:g}")
    if prefs.reject_at is not None and prob >= prefs.reject_at:
        return act("reject", f"probability {prob:g}% >= the recipient's reject_at {prefs.reject_at:g}%")
    quarantine_at = _own(prefs.quarantine_at, s.quarantine_at)
    if prefs.quarantine and prob >= quarantine_at:
        return act("quarantine", f"probability {prob:g}% >= quarantine_at {quarantine_at:g}%")
    for action, threshold in (("tag_certain", _own(prefs.tag_certain, s.tag_certain)),
                              ("tag_probable", _own(prefs.tag_probable, s.tag_probable))):
        if prob >= threshold:
            return act(action, f"probability {prob:g}% >= {action} {threshold:g}%")
    return act("none")


def _own(value: float | None, site: float) -> float:
    return site if value is None else value


def _status(score: float, prob: float, hits: list[RuleHit], bayes: float | None, s: SpamSettings) -> str:
    tests = ",".join(f"{h.name}={h.score:g}" for h in hits) or "none"
    verdict = "Yes" if prob >= s.tag_probable else "No"
    text = f"{verdict}, score={score:.1f} required={s.required_score:g} probability={prob:g}% tests={tests}"
    return text + (f" bayes={bayes:.4f}" if bayes is not None else "")


def spam_edits(score: float, prob: float, hits: list[RuleHit], bayes: float | None, actions: list[RecipientAction],
               s: SpamSettings) -> list[Edit]:
    """The edits for every copy (score headers, forged ones removed first) and for the tagged recipients."""
    edits: list[Edit] = []
    if s.remove_forged_headers:
        edits.extend(Edit(stage=STAGE, kind="remove_header", name=name)
                     for name in (s.header_score, s.header_status, s.header_flag))
    edits.append(Edit(stage=STAGE, kind="add_header", name=s.header_score, value=f"{score:.1f}"))
    edits.append(Edit(stage=STAGE, kind="add_header", name=s.header_status, value=_status(score, prob, hits, bayes, s)))
    for action, tag in (("tag_certain", s.tag_certain_text), ("tag_probable", s.tag_probable_text)):
        tagged = [a.recipient for a in actions if a.action == action]
        if tagged:
            edits.append(Edit(stage=STAGE, kind="add_header", name=s.header_flag, value="YES", recipients=tagged))
            edits.append(Edit(stage=STAGE, kind="subject_tag", value=tag, recipients=tagged))
    return edits
