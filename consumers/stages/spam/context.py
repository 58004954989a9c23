"""What the spam rules see of one message: the same for every rule, built once per message."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.mail.message import ParsedMessage
from schemas.events import Received, Result

__all__ = ["ScanContext"]


@dataclass(frozen=True, slots=True)
class ScanContext:
    """One message as the spam stage scores it.

    - `message`: the shared parsed view with its content (header fields, texts with HTML rendered,
      links, attachments; `message.raw` is the stored bytes), the same view every stage sees;
    - `received`: the `received` event: envelope, client (ip, helo, reverse name, authenticated
      user, TLS), `checks` (what the SMTP-time checks noted: {"fcrdns": "fail", "dnsbl":
      "score=2", "greylist": "passed_after_retry", ...}) and `skipped_checks`;
    - `history`: the results of the earlier stages in topology order (blocklist, virus, attachment,
      auth; their `details` are the dataclasses of `schemas/stages/<stage>.py` as dicts);
    - `bayes`: the Bayes classifier's spam probability in [0, 1], or None when it does not vote
      (fewer than the minimum learned messages per class).
    """

    message: ParsedMessage
    received: Received
    history: tuple[Result, ...] = ()
    bayes: float | None = None

    def result_of(self, stage: str) -> Result | None:
        """The result of an earlier stage, or None when that stage did not run."""
        return next((r for r in self.history if r.stage == stage), None)
