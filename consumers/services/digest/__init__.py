"""The quarantine digest service: each user's new entries mailed once a day (or week), expired entries removed.

`compose.py` writes the mail, `schedule.py` says when, `service.py` sends (one Kafka transaction per
digest) and cleans up. `poststelle run digest` runs `run_digest_service`; `poststelle digest send`
uses `DigestSender` once.
"""
from consumers.services.digest.compose import compose_digest, entry_links
from consumers.services.digest.service import Cleanup, DigestSender, Planned, run_digest_service

__all__ = ["compose_digest", "entry_links", "Cleanup", "DigestSender", "Planned", "run_digest_service"]
