"""route: decide where each recipient's copy goes (the last stage of every topology).

Each recipient still in play goes to a destination: those in a local domain to the local mailbox
destination (LMTP), all others to the remote destination (the smarthost sink, or with
`remote_destination = "mx"` the MX sink, which delivers to the recipient domains' MX hosts). The runner makes one
`routed` event per destination and set of edits (recipients whose edits differ get their own copy).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.registry import register
from pipeline.settings import DESTINATIONS, ConfigError
from pipeline.stage import Outcome, StageContext, Work
from schemas.events import Verdict
from schemas.stages.route import RouteDetails

__all__ = ["RouteStage"]


@dataclass(frozen=True, slots=True)
class RouteSettings:
    local_destination: str = "lmtp"
    remote_destination: str = "smarthost"
    # empty: the ingress's local domains
    local_domains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("local_destination", "remote_destination"):
            if getattr(self, key) not in DESTINATIONS:
                raise ConfigError(f"stages.route.{key}: expected one of {', '.join(DESTINATIONS)}, "
                                  f"got {getattr(self, key)!r}")


@register
class RouteStage:
    name = "route"
    description = "Routes each recipient to the local mailbox server or to the smarthost"
    Settings = RouteSettings

    def __init__(self, settings: RouteSettings, context: StageContext) -> None:
        self.settings = settings
        domains = settings.local_domains or context.settings.ingress.local_domains
        self.local_domains = {d.lower() for d in domains}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def destination_of(self, recipient: str) -> str:
        domain = recipient.rpartition("@")[2].lower()
        if domain in self.local_domains:
            return self.settings.local_destination
        return self.settings.remote_destination

    async def process(self, work: Work) -> Outcome:
        routes: dict[str, list[str]] = {}
        for recipient in work.recipients:
            routes.setdefault(self.destination_of(recipient), []).append(recipient)
        details = dataclasses.asdict(RouteDetails(routes=routes))
        return Outcome(verdict=Verdict.PASS, details=details, routes=routes)
