"""SRS check: bounces to this site's SRS addresses must carry a valid hash and be recent (hook `rcpt`).

Forwarded copies leave with an SRS0 envelope sender (`pipeline.mail.srs`, the route stage); a
bounce of one comes back to ``SRS0=HHHH=TT=domain=local@<srs domain>``. Such a recipient is checked
here, before the `recipient` check (which lets SRS addresses of the SRS domain through to this one,
since no directory entry has them):

- the hash does not verify with any key of ``[srs] key_file``: ``550 5.7.1 Recipient address
  rejected: forged SRS address`` (reason ``srs_forged``): nobody may use the site as a relay by
  making up SRS addresses;
- older than ``[srs] max_age_days``: ``550 5.1.1 Recipient address rejected: expired SRS address``
  (reason ``srs_expired``);
- SRS-shaped but not parseable: ``550 5.1.1 Recipient address rejected: not a valid SRS address``
  (reason ``srs_malformed``).

Every other recipient passes. The route stage reverses the accepted ones to the original sender.
"""
from __future__ import annotations

from dataclasses import dataclass

from ingress.checks import PASS, Check, CheckContext, CheckServices, Decision, refuse, register_check
from pipeline.mail.srs import SrsError, is_srs, srs_signer

__all__ = ["SrsCheck", "SRS_FORGED", "SRS_EXPIRED", "SRS_MALFORMED"]

SRS_FORGED = "550 5.7.1 Recipient address rejected: forged SRS address"
SRS_EXPIRED = "550 5.1.1 Recipient address rejected: expired SRS address"
SRS_MALFORMED = "550 5.1.1 Recipient address rejected: not a valid SRS address"
_REPLIES = {"forged": SRS_FORGED, "expired": SRS_EXPIRED, "malformed": SRS_MALFORMED}


@dataclass(frozen=True, slots=True)
class SrsCheckSettings:
    pass  # the keys and limits are [srs], shared with the route stage


@register_check
class SrsCheck(Check):
    name = "srs"
    description = "bounces to SRS addresses must verify (hash and age, [srs])"
    Settings = SrsCheckSettings

    def __init__(self, settings: SrsCheckSettings, services: CheckServices) -> None:
        super().__init__(settings, services)
        self.signer = srs_signer(services.settings) if services.settings is not None else None

    async def start(self) -> None:
        if self.signer is None:
            raise RuntimeError("the srs check needs [srs] enabled = true with a key_file")

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        assert self.signer is not None
        if recipient.rpartition("@")[2].rstrip(".").lower() != self.signer.domain or not is_srs(recipient):
            return PASS
        try:
            original = self.signer.reverse(recipient)
        except SrsError as exc:
            return refuse(_REPLIES[exc.reason], f"srs_{exc.reason}", str(exc))
        ctx.notes["srs"] = original
        return PASS
