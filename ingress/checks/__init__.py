"""SMTP-time checks: the contract, the registry and the chain that runs them.

Every check is one module in this package with one class that has a `name`, a `description`, a
`Settings` dataclass (its `[checks.<name>]` config section) and async hooks for the phases it cares
about: `connect`, `helo`, `mail`, `rcpt`, `data`. A hook returns one `Decision` (Haraka's rule: one
result per check per transaction): `PASS`, or a reply that refuses the command. The order of the
checks is data (`ingress.checks` for the MX listener, `submission.checks` for submission), and so
are their settings.

The chain (`CheckChain`) runs the hooks of one phase in order and stops at the first refusal. A
check that raises or exceeds `ingress.check_timeout` answers `451 4.3.0` (a temporary failure:
the client retries; a message is never accepted past a check that did not answer). Checks never
see the network directly: DNS and LDAP are services handed in through `CheckServices`, so unit
tests can swap the transport.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.mail.headers import MessageHeader, parse_header
from pipeline.registry import CHECKS
from pipeline.settings import MessageSettings

__all__ = [
    "PHASES",
    "Phase",
    "Decision",
    "PASS",
    "refuse",
    "CheckContext",
    "CheckServices",
    "Check",
    "CheckChain",
    "ChainOutcome",
    "register_check",
    "get_check",
    "check_names",
    "check_settings_types",
    "Networks",
]

log = logging.getLogger(__name__)

Phase = Literal["connect", "helo", "mail", "rcpt", "data"]
PHASES: tuple[Phase, ...] = ("connect", "helo", "mail", "rcpt", "data")

@dataclass(frozen=True, slots=True)
class Decision:
    """A check's answer for one phase.

    `reply` is None when the check lets the command through; otherwise the full SMTP reply with its
    enhanced status code ("554 5.7.1 ..."). `reason_code` is the stable machine-readable reason
    that lands in analytics ("dnsbl_listed"); `detail` is for the operator (zone and answer, the
    rule that matched), never sent to the client.
    """

    reply: str | None = None
    reason_code: str = ""
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.reply is not None

    @property
    def temporary(self) -> bool:
        return self.reply is not None and self.reply.startswith("4")


PASS = Decision()


def refuse(reply: str, reason_code: str, detail: str = "") -> Decision:
    return Decision(reply=reply, reason_code=reason_code, detail=detail)


@dataclass(slots=True)
class CheckContext:
    """What the checks know about one SMTP session; they read it and may note results in it."""

    session_id: str
    client_ip: str
    listener: str = "mx"  # "mx" (port 25) or "submission"
    helo: str = ""
    tls: bool = False
    authenticated_as: str = ""  # the LDAP login of an authenticated submission session
    auth_addresses: frozenset[str] = frozenset()  # addresses that user may send as (own + aliases)
    allowlisted: bool = False  # client in ingress.client_allowlist: reputation checks are skipped
    trusted: bool = False  # client in ingress.relay_networks: may relay, skips greylisting
    reverse_name: str = ""  # the forward-confirmed PTR name (set by fcrdns), "" when none
    sender: str | None = None  # None before MAIL FROM; "" for the null sender <>
    recipients: list[str] = field(default_factory=list)  # accepted so far in this transaction
    # results worth keeping that are not refusals (e.g. {"greylist": "passed_after_retry"}); they
    # are copied into the `received` event and into `smtp_check` events
    notes: dict[str, str] = field(default_factory=dict)
    # checks that let the client through without an answer (on_error = "skip" after a DNS timeout),
    # with the phase they ran in; copied into the `received` event so a stage can look again
    skipped: dict[str, str] = field(default_factory=dict)
    # every check's last note in this session (connect, helo) and transaction (mail, rcpt, data), with
    # its phase: copied into the `received` event, where the spam stage weighs them
    results: dict[str, tuple[str, str]] = field(default_factory=dict)
    # the checks of this phase whose note is the session's standing (`skip_for_standing`), and the
    # standing already reported for this session (the handler reports it once, as check "reputation")
    standing_notes: set[str] = field(default_factory=set)
    standing_reported: str = ""
    message_caps: MessageSettings = field(default_factory=MessageSettings)  # [message], for message_header
    _header: tuple[bytes, MessageHeader] | None = field(default=None, init=False, repr=False)

    def message_header(self, raw: bytes) -> MessageHeader:
        """The header section of the DATA bytes, parsed once per transaction (`pipeline.mail.headers`)
        and shared by every check and the `received` event's header summary, so they cannot
        disagree about the From. Only the header: a full parse of a large body would hold up every
        other session on this event loop; the stages parse the stored message (the same header
        code) off the loop."""
        if self._header is None or self._header[0] is not raw:
            self._header = (raw, parse_header(raw, self.message_caps))
        return self._header[1]

    @property
    def authenticated(self) -> bool:
        return bool(self.authenticated_as)

    def reputation_skip(self) -> str:
        """Why the reputation checks (DNS lists, FCrDNS, sender domain, greylisting) do not apply
        to this session: "allowlisted", "authenticated" or "not_mx"; "" when they do."""
        if self.allowlisted:
            return "allowlisted"
        if self.authenticated:
            return "authenticated"
        if self.listener != "mx":
            return "not_mx"
        return ""

    def skip_for_standing(self, check: str) -> bool:
        """Whether `check`, a reputation check, does not apply to this session (`reputation_skip`).
        If so, its note is the reason: kept per check in the `received` event, but reported once
        per session, as check "reputation", not once per check and transaction."""
        skip = self.reputation_skip()
        if skip:
            self.notes[check] = skip
            self.standing_notes.add(check)
        return bool(skip)

    def reset_transaction(self) -> None:
        """RSET, or a new MAIL FROM: the envelope starts over, the session facts stay."""
        self.sender = None
        self.recipients = []
        self._header = None
        self.skipped = {check: phase for check, phase in self.skipped.items() if phase in ("connect", "helo")}
        self.results = {check: kept for check, kept in self.results.items() if kept[1] in ("connect", "helo")}

    def check_results(self) -> dict[str, str]:
        """Each check's last note in this session and transaction ({"fcrdns": "fail", "greylist": ...})."""
        return {check: result for check, (result, _) in self.results.items()}

    def skipped_checks(self) -> list[str]:
        """The checks skipped after a temporary failure in this session and transaction, in order."""
        return list(self.skipped)


@dataclass(slots=True)
class CheckServices:
    """The network services checks use; built once per ingress process and shared."""

    settings: Any = None  # the whole pipeline.settings.Settings (Kafka, paths) for checks that need it
    resolver: Any = None  # pipeline.dns.Resolver
    directory: Any = None  # pipeline.directory.Directory
    greylist: Any = None  # ingress.greylist_store.GreylistStore
    local_domains: frozenset[str] = frozenset()
    notify: Callable[[Any], None] | None = None  # best-effort event sink (EventSink.notify)


class Check:
    """Base class: every hook lets everything through. Subclasses override what they check."""

    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any, services: CheckServices) -> None:
        self.settings = settings
        self.services = services

    async def start(self) -> None:
        """Open connections, load state (called once before the listener accepts)."""

    async def close(self) -> None:
        """Release what `start` opened."""

    async def connect(self, ctx: CheckContext) -> Decision:
        return PASS

    async def helo(self, ctx: CheckContext, hostname: str) -> Decision:
        return PASS

    async def mail(self, ctx: CheckContext, sender: str) -> Decision:
        """`sender` is "" for the null sender <>."""
        return PASS

    async def rcpt(self, ctx: CheckContext, recipient: str) -> Decision:
        """`recipient` is the address as the client gave it (without angle brackets)."""
        return PASS

    async def data(self, ctx: CheckContext, raw: bytes) -> Decision:
        """`raw` is the message as received (headers and body, CRLF line endings)."""
        return PASS


# ---- registry -------------------------------------------------------------------------------------
# checks register in the runtime's registry, so the settings loader can validate [checks.<name>]
# without importing this package; which check modules are loaded is the composition root's choice

register_check = CHECKS.register
get_check = CHECKS.get
check_names = CHECKS.names
check_settings_types = CHECKS.settings_types


# ---- the chain ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainOutcome:
    """The chain's answer for one phase: the refusing check (or "") and its decision."""

    check: str
    decision: Decision

    @property
    def refused(self) -> bool:
        return self.decision.refused


PASSED = ChainOutcome("", PASS)


TEMPORARY_FAILURE = "451 4.3.0 Temporary failure checking this request, try again later"
RESTART_AFTER = 0.05  # seconds of a phase after which the next check's timer starts afresh (CheckChain.run)


class CheckChain:
    """Runs the checks of one listener in their configured order."""

    def __init__(self, checks: list[Check], timeout: float) -> None:
        self.checks = checks
        self.timeout = timeout
        # per phase, the checks that look at it: a hook a check does not override lets everything
        # through, so it is not called (nine checks, five phases: 9 hooks run per message, not 45)
        self._hooks = {phase: [check for check in checks if _looks_at(check, phase)] for phase in PHASES}

    @classmethod
    def build(cls, names: list[str], configs: Mapping[str, Any], services: CheckServices,
              timeout: float) -> CheckChain:
        checks = [get_check(name)(configs.get(name) or get_check(name).Settings(), services) for name in names]
        return cls(checks, timeout)

    async def start(self) -> None:
        for check in self.checks:
            await check.start()

    async def close(self) -> None:
        for check in reversed(self.checks):
            try:
                await check.close()
            except Exception as exc:  # closing must go on for the others
                log.warning("check %s close: %s", check.name, exc)

    async def run(self, phase: Phase, ctx: CheckContext, *args: Any) -> ChainOutcome:
        """The first refusal of this phase's checks, else a pass; each check may take `timeout` seconds.

        One timer serves the whole phase (a timer costs more than a check answered from a cache):
        its deadline moves to `timeout` after the start of the next check only once the phase has
        used more than `RESTART_AFTER` of it, so each check still gets its full time, give or take that."""
        hooks = self._hooks[phase]
        if not hooks:
            return PASSED
        loop = asyncio.get_running_loop()
        check = hooks[0]
        try:
            async with asyncio.timeout(self.timeout) as budget:
                for check in hooks:
                    deadline = loop.time() + self.timeout
                    if deadline - (budget.when() or deadline) > RESTART_AFTER:
                        budget.reschedule(deadline)
                    try:
                        decision = await getattr(check, phase)(ctx, *args)
                    except TimeoutError:  # the check's own (the phase's timer cancels, see below)
                        decision = self._timed_out(check, phase, ctx)
                    except Exception as exc:
                        log.exception("check %s failed in %s (%s)", check.name, phase, ctx.client_ip)
                        decision = refuse(TEMPORARY_FAILURE, f"{check.name}_error", f"{type(exc).__name__}: {exc}")
                    if decision.refused:
                        return ChainOutcome(check.name, decision)
        except TimeoutError:
            return ChainOutcome(check.name, self._timed_out(check, phase, ctx))
        return PASSED

    def _timed_out(self, check: Check, phase: Phase, ctx: CheckContext) -> Decision:
        log.warning("check %s timed out in %s (%s)", check.name, phase, ctx.client_ip)
        return refuse(TEMPORARY_FAILURE, f"{check.name}_timeout", f"no answer in {self.timeout}s")


def _looks_at(check: Check, phase: Phase) -> bool:
    """False when `check`'s hook for `phase` is the base class's, which passes everything."""
    hook = getattr(check, phase)
    return getattr(hook, "__func__", None) is not getattr(Check, phase)


# ---- helpers for checks ---------------------------------------------------------------------------


class Networks:
    """A set of CIDRs (IPv4 and IPv6) with a membership test; bad entries raise ValueError."""

    MEMO_SIZE = 4096  # answers remembered per address (client addresses repeat; parsing one takes µs)

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]
        self._memo: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        known = self._memo.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        inside = any(address in net for net in self.networks if net.version == address.version)
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[ip] = inside
        return inside

    def __bool__(self) -> bool:
        return bool(self.networks)
