"""Greylisting by (client network, sender, recipient), with auto-whitelisting; state shared over Kafka.

Runs at RCPT, last in the MX chain (after the recipient was found valid). The first attempt of a
new triplet — client IP masked to `netmask_v4` / `netmask_v6`, the envelope sender lower-cased
("" for <>), the recipient lower-cased — is answered ``451 4.7.1 Greylisted, please try again in
300 seconds``. A retry after `delay` and within `retry_window` of the first attempt passes; earlier
it gets the same 451 again (the first attempt's time is kept); after the window the triplet starts
over. A passed triplet stays passed for `whitelist_lifetime`, refreshed by use. After
`auto_whitelist_after` passed retries from a client network, that network skips greylisting for
`whitelist_lifetime` (refreshed by use); separately, after `auto_whitelist_domain_after` passed
retries from one sender domain on a client network, that pair does. There is no automatic /24
grouping: set `netmask_v4 = 24` for that. The null sender is greylisted like any other.

Not greylisted: authenticated sessions, `ingress.client_allowlist` and any listener but "mx" (note
the standing: "authenticated", "allowlisted", "not_mx"), `ingress.relay_networks` (trusted; note
"skipped"); clients in the static whitelist — `whitelist` (CIDRs) and
the file `whitelist_file` (one CIDR per line, `#` comments; relative to the source tree) — (note
"whitelisted").

The state lives in `ingress.greylist_store.GreylistStore` (two compacted topics, replayed at
start). Until it has been replayed the check answers ``451 4.7.1`` (reason "greylist_unavailable"),
or lets mail pass when `on_unavailable = "pass"`. Once replayed, a broker outage only means other
instances do not learn this instance's decisions until it is back.

Notes (`ctx.notes["greylist"]`, for analytics): "delayed", "too_early", "passed_after_retry",
"passed", "auto_whitelisted", "whitelisted", "skipped", "unavailable", or the session's standing.

Settings (`[checks.greylist]`; durations are strings such as "90s", "5m", "24h", "35d"):
  delay = "5m", retry_window = "24h", whitelist_lifetime = "35d", auto_whitelist_after = 5,
  auto_whitelist_domain_after = 5 (0 turns either off), netmask_v4 = 32, netmask_v6 = 64,
  whitelist = [], whitelist_file = "", on_unavailable = "tempfail" | "pass",
  startup_timeout = "15s" (how long the ingress waits for the replay at start),
  sweep_interval = "1m" (how often expired entries are removed and tombstoned).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ingress.checks import PASS, Check, CheckContext, CheckServices, Decision, Networks, refuse, register_check
from ingress.greylist_store import (
    CLIENTS,
    DELAYED,
    TRIPLETS,
    GreylistPolicy,
    GreylistStore,
    KafkaTransport,
    mask_client,
)
from pipeline.bus import Topics
from pipeline.settings import REPO_ROOT, ConfigError, parse_duration

__all__ = ["GreylistCheck", "GreylistSettings", "read_whitelist_file", "build_store"]

GREYLISTED = "451 4.7.1 Greylisted, please try again in {seconds} seconds"
UNAVAILABLE = "451 4.7.1 Greylisting state unavailable, please try again later"
ON_UNAVAILABLE = ("tempfail", "pass")
_KEY = "checks.greylist"


@dataclass(frozen=True, slots=True)
class GreylistSettings:
    delay: str = "5m"  # a retry earlier than this after the first attempt is refused again
    retry_window: str = "24h"  # a retry later than this after the first attempt starts over
    whitelist_lifetime: str = "35d"  # passed triplets and auto-whitelisted clients, refreshed by use
    auto_whitelist_after: int = 5  # passed retries from a client network; 0: off
    auto_whitelist_domain_after: int = 5  # passed retries from a sender domain + client network; 0: off
    netmask_v4: int = 32  # prefix length the client's IPv4 address is masked to
    netmask_v6: int = 64  # prefix length the client's IPv6 address is masked to
    whitelist: list[str] = field(default_factory=list)  # CIDRs never greylisted
    whitelist_file: str = ""  # a file of such CIDRs, one per line, # comments
    on_unavailable: str = "tempfail"  # state not replayed yet: "tempfail" (451) or "pass"
    startup_timeout: str = "15s"  # how long start() waits for the replay before going on
    sweep_interval: str = "1m"  # how often expired entries are removed and tombstoned

    def __post_init__(self) -> None:
        for name in ("delay", "retry_window", "whitelist_lifetime", "startup_timeout", "sweep_interval"):
            parse_duration(f"{_KEY}.{name}", getattr(self, name))
        if self.seconds("delay") >= self.seconds("retry_window"):
            raise ConfigError(f"{_KEY}.retry_window: must be longer than {_KEY}.delay")
        if not 0 <= self.netmask_v4 <= 32:
            raise ConfigError(f"{_KEY}.netmask_v4: expected a prefix length 0..32, got {self.netmask_v4}")
        if not 0 <= self.netmask_v6 <= 128:
            raise ConfigError(f"{_KEY}.netmask_v6: expected a prefix length 0..128, got {self.netmask_v6}")
        for name in ("auto_whitelist_after", "auto_whitelist_domain_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_KEY}.{name}: expected 0 (off) or more")
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise ConfigError(f"{_KEY}.on_unavailable: expected tempfail or pass, got {self.on_unavailable!r}")
        for i, text in enumerate(self.whitelist):
            _parse_network(f"{_KEY}.whitelist[{i}]", text)

    def seconds(self, name: str) -> float:
        return parse_duration(f"{_KEY}.{name}", getattr(self, name))

    def policy(self) -> GreylistPolicy:
        return GreylistPolicy(
            delay=self.seconds("delay"),
            retry_window=self.seconds("retry_window"),
            auto_whitelist_after=self.auto_whitelist_after,
            auto_whitelist_domain_after=self.auto_whitelist_domain_after,
            whitelist_lifetime=self.seconds("whitelist_lifetime"),
        )


def _parse_network(where: str, text: str) -> str:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{where}: expected a network such as 192.0.2.0/24, got {text!r}") from None
    return text.strip()


def read_whitelist_file(path_setting: str) -> list[str]:
    """The CIDRs in the whitelist file ([] without one); a bad line is a ConfigError."""
    if not path_setting:
        return []
    path = Path(path_setting)
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{_KEY}.whitelist_file: cannot read {path}: {exc.strerror}") from None
    cidrs = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            cidrs.append(_parse_network(f"{_KEY}.whitelist_file: {path}:{number}", text))
    return cidrs


def build_store(settings, check_settings: GreylistSettings) -> GreylistStore:
    """The store on the Kafka topics of `settings` (the whole pipeline Settings)."""
    topics = Topics.from_settings(settings)
    transport = KafkaTransport(settings.kafka, {TRIPLETS: topics.greylist_triplets,
                                                CLIENTS: topics.greylist_clients}, client_id="greylist")
    return GreylistStore(transport, check_settings.policy(), sweep_every=check_settings.seconds("sweep_interval"))


@register_check
class GreylistCheck(Check):
    name = "greylist"
    description = "greylisting by (client, sender, recipient) with auto-whitelisting"
    Settings = GreylistSettings

    def __init__(self, settings: GreylistSettings, services: CheckServices) -> None:
        super().__init__(settings, services)
        # a store handed in through the services belongs to whoever made it (started and closed there)
        self.store: GreylistStore | None = services.greylist
        self._owns_store = False
        self.whitelist = Networks(settings.whitelist)

    async def start(self) -> None:
        self.whitelist = Networks([*self.settings.whitelist, *read_whitelist_file(self.settings.whitelist_file)])
        if self.store is None:
            if self.services.settings is None:
                raise RuntimeError("the greylist check needs services.settings (Kafka) or services.greylist")
            self.store = build_store(self.services.settings, self.settings)
            self._owns_store = True
            await self.store.start(self.settings.seconds("startup_timeout"))

    async def close(self) -> None:
        if self._owns_store and self.store is not None:
            await self.store.close()

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        if ctx.skip_for_standing("greylist"):
            return PASS
        if ctx.trusted:  # relay networks are not greylisted
            return _note(ctx, "skipped")
        if ctx.client_ip in self.whitelist:
            return _note(ctx, "whitelisted")
        if self.store is None or not self.store.ready:
            return self._unavailable(ctx)
        net = mask_client(ctx.client_ip, self.settings.netmask_v4, self.settings.netmask_v6)
        sender, recipient = (ctx.sender or "").lower(), recipient.lower()
        verdict = self.store.decide(net, sender, recipient)
        ctx.notes["greylist"] = verdict.outcome
        if not verdict.delayed:
            return PASS
        reply = GREYLISTED.format(seconds=verdict.retry_in)
        triplet = f"{net} <{sender}> -> <{recipient}>"
        if verdict.outcome == DELAYED:
            return refuse(reply, "greylisted", f"{triplet}: first attempt")
        return refuse(reply, "greylisted_too_early", f"{triplet}: retried {verdict.retry_in}s too early")

    def _unavailable(self, ctx: CheckContext) -> Decision:
        ctx.notes["greylist"] = "unavailable"
        if self.settings.on_unavailable == "pass":
            return PASS
        return refuse(UNAVAILABLE, "greylist_unavailable", "greylisting state not replayed from Kafka yet")


def _note(ctx: CheckContext, result: str) -> Decision:
    ctx.notes["greylist"] = result
    return PASS
