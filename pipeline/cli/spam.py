"""`poststelle spam learn|forget|stats`: training the spam stage's Bayes model, and what it holds.

    poststelle spam learn --spam PATH...     learn messages as spam (files, directories, mbox, maildir, - for stdin)
    poststelle spam learn --ham PATH...      learn messages as ham
    poststelle spam forget PATH...           undo the learning of these messages
    poststelle spam stats [--json]           learned messages per class, tokens, memory, model age
    poststelle spam check [--rules-only] [--json] PATH...
                                             score messages as the stage would, and say why

Training writes learn events (`spam_learned`: the message's token hashes, never the message) to the
compacted topic ``<prefix>.spam.learn``; every spam stage instance folds them into its model within
about a second (consumers/stages/spam/model.py). A command returns once the broker has every event.
Before writing, it replays the model (from the snapshot under ``<home>/spam/`` when there is one),
so a message already learned in that class is counted as "already known" and not written again;
learning it in the other class moves it. On a terminal a progress line shows how far it got; at the
end a summary: learned, moved, already known, unreadable (and why, for the first few). Exit 0 when
every event reached the broker (unreadable files are reported, not fatal), 1 when Kafka failed.

`spam check` runs the stage's own scorer (consumers/stages/spam/scorer.py: the same rule files and,
unless --rules-only or Kafka is not reachable, the same Bayes model) over messages from files: the
score, the probability, what the site's thresholds do with it, every rule that fired. A file has no
SMTP session and no earlier stage results, so the signals of the SMTP-time checks and of the
blocklist and auth stages do not fire: the score is that of the content alone.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
from aiokafka.errors import KafkaError

from consumers.stages.spam.actions import SITE, action_for
from consumers.stages.spam.bayes import BayesSettings
from consumers.stages.spam.model import BayesModel, kafka_transport, learned_event, publish
from consumers.stages.spam.rules import RuleSet
from consumers.stages.spam.scorer import Scored, Scorer, rule_paths
from consumers.stages.spam.scorer import tokenizer_options as site_tokenizer_options
from consumers.stages.spam.settings import SpamSettings
from consumers.stages.spam.tokens import TokenizerOptions, token_digest, token_hashes, tokenize
from pipeline.broker import BrokerUnavailable
from pipeline.bus import Topics, ensure_topics
from pipeline.cli.common import settings_of
from pipeline.mail.message import parse_message
from pipeline.mail.sources import MailItem, read_messages, total_bytes
from pipeline.settings import ConfigError, Settings
from schemas.events import Received, SpamLearned
from schemas.parts import BlobRef, Client, Envelope

__all__ = ["add_parsers", "ham_learner", "spam_settings", "tokenizer_options", "rule_stats", "file_event", "train"]

REPLAY_TIMEOUT = 60.0
IN_FLIGHT = 2000  # learn events handed to the producer before waiting for their acknowledgements
SHOWN_ERRORS = 10
CHECK_TIMEOUT = 10.0  # `spam check` waits this long for Kafka, then scores with the rules alone


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `spam` with its actions to the `poststelle` parser."""
    spam = sub.add_parser("spam", help="the spam stage's Bayes model: learn, forget, stats")
    actions = spam.add_subparsers(dest="action", required=True)
    learn = actions.add_parser("learn", help="learn messages as spam or ham")
    label = learn.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", dest="label", action="store_const", const="spam")
    label.add_argument("--ham", dest="label", action="store_const", const="ham")
    forget = actions.add_parser("forget", help="undo the learning of messages")
    forget.set_defaults(label="forget")
    for parser in (learn, forget):
        parser.add_argument("paths", nargs="+", metavar="PATH", help="message file, directory, mbox, maildir, or -")
        parser.set_defaults(func=cmd_train)
    stats = actions.add_parser("stats", help="learned messages per class, tokens, memory, model age")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=cmd_stats)
    check = actions.add_parser("check", help="score messages as the spam stage would, and say why")
    check.add_argument("paths", nargs="+", metavar="PATH", help="message file, directory, mbox, maildir, or -")
    check.add_argument("--rules-only", action="store_true", help="leave the Bayes model out (no Kafka needed)")
    check.add_argument("--json", action="store_true", help="one JSON object per message")
    check.set_defaults(func=cmd_check)


def spam_settings(settings: Settings) -> SpamSettings:
    """`[stages.spam]` (its defaults when the topology does not run the stage)."""
    return settings.stages.get("spam") or SpamSettings()


def bayes_settings(settings: Settings) -> BayesSettings:
    return spam_settings(settings).bayes


def tokenizer_options(settings: Settings) -> TokenizerOptions:
    """What the tokenizer leaves out at this site: the same for the stage and for training."""
    return site_tokenizer_options(spam_settings(settings))


def rule_stats(settings: Settings) -> list[tuple[str, str]]:
    """The lines `spam stats` adds about the rules: how many, from how many files."""
    paths = rule_paths(spam_settings(settings), settings.source)
    return [("rules", f"{len(RuleSet.load(paths))} with a score, from {len(paths)} files")]


def _model(settings: Settings) -> BayesModel:
    """A read-only model (it uses the stage's snapshot on this host, and writes none)."""
    return BayesModel(bayes_settings(settings), kafka_transport(settings, client_id="spam-cli"),
                      topic=Topics.from_settings(settings).spam_learn, snapshot_dir=settings.home / "spam",
                      write_snapshots=False)


async def _replayed(settings: Settings, timeout: float = REPLAY_TIMEOUT) -> BayesModel:
    await ensure_topics(settings, timeout=timeout)
    model = _model(settings)
    if not await model.start(timeout):
        await model.close()
        raise ConnectionError(f"could not read the learn topic from Kafka at {settings.kafka.bootstrap} "
                              f"within {timeout:.0f}s")
    return model


# ---- learn and forget ---------------------------------------------------------------------------


@dataclass
class Tally:
    written: int = 0  # learn events written
    moved: int = 0  # of those: the message was in the other class
    known: int = 0  # already in that class (or, for forget, not learned)
    unreadable: int = 0
    errors: list[str] = field(default_factory=list)
    bytes_read: int = 0
    messages: int = 0


class Progress:
    """One line on a terminal (stderr), redrawn at most ten times a second; nothing elsewhere."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.started = self.drawn = time.monotonic()

    def show(self, tally: Tally, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        share = f"{100 * tally.bytes_read / self.total:3.0f}% " if self.total else ""
        rate = tally.messages / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{share}{tally.messages} messages, {tally.bytes_read / 1e6:.1f} MB, {rate:.0f}/s ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _hashes(item: MailItem, options: TokenizerOptions) -> np.ndarray | str:
    """The token hashes of a message, or the reason it cannot be learned."""
    if item.error:
        return item.error
    parsed = parse_message(item.raw)
    if not parsed.header.fields:
        return "no header fields: not a message"
    tokens = tokenize(parsed, None, options)
    return token_hashes(tokens) if tokens else "no tokens"


async def train(model: BayesModel, items: Iterable[MailItem], label: str, options: TokenizerOptions,
                progress: Progress) -> Tally:
    """Write the learn (or forget) events of `items`; returns once the broker has all of them."""
    tally, pending, decided = Tally(), [], {}
    for item in items:
        tally.messages += 1
        tally.bytes_read += item.size
        hashes = _hashes(item, options)
        if isinstance(hashes, str):
            tally.unreadable += 1
            tally.errors.append(f"{item.origin}: {hashes}")
        else:
            digest = token_digest(hashes)
            current = decided.get(digest, model.label_of(digest))
            if current == label or (label == "forget" and current is None):
                tally.known += 1
            else:
                tally.moved += current is not None and label != "forget"
                decided[digest] = None if label == "forget" else label
                delivery = await publish(model.transport, learned_event(hashes, label, source="cli"))
                if delivery is not None:
                    pending.append(delivery)
                tally.written += 1
        if len(pending) >= IN_FLIGHT:
            await asyncio.gather(*pending)
            pending = []
        progress.show(tally)
    await asyncio.gather(*pending)
    progress.show(tally, final=True)
    return tally


def ham_learner(settings: Settings) -> Callable[[bytes, str], SpamLearned | None]:
    """For the quarantine's "release and learn as ham": raw message → its `spam_learned` ham event
    (None when it has no tokens). Built here, in the composition root, because the portal and the
    digest service are services and never import the spam stage."""
    options = tokenizer_options(settings)

    def learn(raw: bytes, message_id: str) -> SpamLearned | None:
        hashes = _hashes(MailItem(origin=message_id, raw=raw), options)
        return None if isinstance(hashes, str) else learned_event(hashes, "ham", source="portal",
                                                                  message_id=message_id)

    return learn


def _summary(label: str, tally: Tally) -> str:
    if label == "forget":
        text = f"forgot {tally.written}, {tally.known} not learned"
    else:
        moved = f" ({tally.moved} moved from {'ham' if label == 'spam' else 'spam'})" if tally.moved else ""
        text = f"learned {tally.written} as {label}{moved}, {tally.known} already known"
    return f"{text}, {tally.unreadable} unreadable ({tally.messages} messages read)"


async def _train(settings: Settings, args: argparse.Namespace) -> int:
    model = await _replayed(settings)
    try:
        progress = Progress(total_bytes(args.paths), sys.stderr.isatty())
        tally = await train(model, read_messages(args.paths), args.label, tokenizer_options(settings), progress)
    finally:
        await model.close()
    for error in tally.errors[:SHOWN_ERRORS]:
        print(f"poststelle spam: unreadable: {error}", file=sys.stderr)
    if len(tally.errors) > SHOWN_ERRORS:
        print(f"poststelle spam: ... and {len(tally.errors) - SHOWN_ERRORS} more unreadable", file=sys.stderr)
    print(_summary(args.label, tally))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return _run(_train(settings_of(args), args))


# ---- stats ----------------------------------------------------------------------------------------


def _age(last: str) -> str:
    if not last:
        return "nothing learned yet"
    learned = dt.datetime.fromisoformat(last.replace("Z", "+00:00"))
    hours = (dt.datetime.now(dt.timezone.utc) - learned).total_seconds() / 3600
    return f"last learned {last} ({hours:.1f} h ago)" if hours < 48 else f"last learned {last} ({hours / 24:.0f} days ago)"


async def _stats(settings: Settings, args: argparse.Namespace) -> int:
    model = await _replayed(settings)
    try:
        stats = model.stats()
    finally:
        await model.close()
    minimum = model.settings.min_learned
    extra = rule_stats(settings)
    if args.json:
        print(orjson.dumps({**asdict(stats), "min_learned": minimum, **dict(extra)}).decode())
        return 0
    votes = "votes" if min(stats.nspam, stats.nham) >= minimum else f"does not vote yet: {minimum} of each needed"
    rows = [("learned", f"{stats.nspam} spam, {stats.nham} ham ({votes})"),
            ("tokens", f"{stats.counted} counted, {stats.tokens} held of at most {stats.capacity} "
                       f"({100 * stats.tokens / stats.capacity:.1f} %), {stats.memory_bytes / 2**20:.0f} MiB"),
            ("model age", _age(stats.last_learned)),
            *([("skipped records", f"{stats.invalid} invalid, {stats.other_version} of another tokenizer version")]
              if stats.invalid or stats.other_version else []),
            *extra]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name + ':':{width + 1}}  {value}" for name, value in rows))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    return _run(_stats(settings_of(args), args))


# ---- check ----------------------------------------------------------------------------------------


def file_event(raw: bytes) -> Received:
    """A `received` event for a message from a file: no client, no recipients (see the module docstring)."""
    first = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    path = next((line[12:].strip().strip(b"<>").decode("utf-8", "replace") for line in first.splitlines()
                 if line[:12].lower() == b"return-path:"), "")
    return Received(envelope=Envelope(mail_from=path, rcpt_to=[]), client=Client(ip="", port=0),
                    blob=BlobRef(sha256="", size=len(raw)))


def _report(origin: str, scored: Scored, s: SpamSettings) -> dict:
    action = action_for("", scored.score, scored.probability, SITE, (), False, s)
    return {"file": origin, "score": scored.score, "probability": scored.probability, "action": action.action,
            "why": action.why, "bayes": scored.bayes,
            "rules": [{"name": h.name, "score": h.score, "description": h.description} for h in scored.hits]}


def _print_report(report: dict) -> None:
    bayes = "does not vote" if report["bayes"] is None else f"{report['bayes']:.4f}"
    print(f"{report['file']}: score {report['score']:.1f}, probability {report['probability']:g}%, "
          f"{report['action']}{' (' + report['why'] + ')' if report['why'] else ''}; bayes {bayes}")
    for rule in report["rules"]:
        print(f"  {rule['score']:7.1f}  {rule['name']:<24} {rule['description']}")


async def _check(settings: Settings, args: argparse.Namespace) -> int:
    s = spam_settings(settings)
    model = None
    if not args.rules_only and s.bayes.enabled:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # one line below says it, not one per retry
        try:
            model = await _replayed(settings, CHECK_TIMEOUT)
        except (ConnectionError, OSError, TimeoutError, KafkaError, BrokerUnavailable) as exc:
            print(f"poststelle spam: Bayes left out (the learn topic is not readable: {exc})", file=sys.stderr)
    try:
        scorer = Scorer.load(s, settings.source, model)
        unreadable = 0
        for item in read_messages(args.paths):
            if item.error:
                unreadable += 1
                print(f"poststelle spam: {item.origin}: {item.error}", file=sys.stderr)
                continue
            parsed = parse_message(item.raw, settings.message)
            scored = await asyncio.to_thread(scorer.score, parsed, file_event(item.raw))
            report = _report(item.origin, scored, s)
            print(orjson.dumps(report).decode()) if args.json else _print_report(report)
    finally:
        if model is not None:
            await model.close()
    return 1 if unreadable else 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        return _run(_check(settings_of(args), args))
    except ConfigError as exc:  # a broken rule file of the site: file, line and reason
        print(f"poststelle spam: {exc}", file=sys.stderr)
        return 2


def _run(work) -> int:
    try:
        return asyncio.run(work)
    except (ConnectionError, OSError, TimeoutError, KafkaError, BrokerUnavailable) as exc:
        print(f"poststelle spam: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

