"""Handing a stage's input over between consumer groups when the topology's chains change.

Whether a stage runs alone (group `<prefix>.<stage>`) or in a chain (group `<prefix>.chain.<name>`,
`pipeline.chain`) is a deployment choice, and changing it moves the stage's input topic to another
group. A group new to a topic starts at its beginning (`auto_offset_reset=earliest`): without a
handover, turning chaining on would run every retained message through the stages again, and
deliver it again.

So before a stage or chain runner joins its group, `take_over` looks at every group that has run
the same stage on the same input topic — the stage's own group and every chain group — and, per
partition, commits for the runner's group the furthest offset any of them committed, when that is
further than its own. The groups of the old topology are stopped (`poststelle up` with the new
config stops them), so the furthest offset is where the work stopped; the group that ran it before
lies behind. Records between the offsets that a chain wrote and already took further carry the
`CHAINED_HEADER` and are skipped by the stage they name (`pipeline.runner.ran_already`).

A group with members cannot be committed to from outside (the broker refuses): that is an instance
of the same runner already consuming, which took over when it started; the refusal is logged and
the runner goes on.
"""
from __future__ import annotations

import logging

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from pipeline.bus import Topics, kafka_bound, make_consumer, start_or_release, stop_quietly
from pipeline.settings import KafkaSettings, Settings

__all__ = ["take_over", "groups_running", "furthest"]

log = logging.getLogger(__name__)


def groups_running(settings: Settings, stage: str, known_groups: list[str]) -> list[str]:
    """The groups that run (or ran) `stage` on its input topic: its own group and every chain group."""
    prefix = settings.kafka.topic_prefix
    return [g for g in known_groups if g == f"{prefix}.{stage}" or g.startswith(f"{prefix}.chain.")]


def furthest(own: dict[TopicPartition, int], others: list[dict[TopicPartition, int]]) -> dict[TopicPartition, int]:
    """Per partition, the offset of `others` past `own` (only the partitions where one is further)."""
    taken: dict[TopicPartition, int] = {}
    for offsets in others:
        for tp, offset in offsets.items():
            if offset > max(own.get(tp, -1), taken.get(tp, -1)):
                taken[tp] = offset
    return taken


async def take_over(settings: Settings, group_id: str, readers: dict[str, str]) -> dict[TopicPartition, int]:
    """Commit for `group_id` the furthest offsets of the groups that ran the same stages on the same
    topics (`readers`: input topic → the stage that reads it). Returns what it committed."""
    k = settings.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap, client_id=f"{k.client_id}-handover",
                                request_timeout_ms=k.request_timeout_ms)
    await start_or_release(admin, kafka_bound(k))  # type: ignore[arg-type]
    try:
        known = sorted({str(g[0]) for g in await admin.list_consumer_groups()} - {group_id})
        own = _offsets(await admin.list_consumer_group_offsets(group_id), readers)
        others: list[dict[TopicPartition, int]] = []
        for stage in dict.fromkeys(readers.values()):
            topics = {t for t, s in readers.items() if s == stage}
            for group in groups_running(settings, stage, known):
                committed = await admin.list_consumer_group_offsets(group)
                others.append({tp: o for tp, o in _offsets(committed, readers).items() if tp.topic in topics})
    finally:
        await admin.close()
    taken = furthest(own, others)
    if taken:
        await _commit(k, group_id, taken)
    return taken


def _offsets(committed: dict[TopicPartition, OffsetAndMetadata], readers: dict[str, str]) -> dict[TopicPartition, int]:
    return {tp: meta.offset for tp, meta in committed.items() if tp.topic in readers and meta.offset >= 0}


async def _commit(k: KafkaSettings, group_id: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = make_consumer(k, group_id, "handover")
    await start_or_release(consumer, kafka_bound(k))
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
        log.warning("%s: took over the offsets of the topology before: %s", group_id,
                    ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items())))
    except KafkaError as exc:  # the group has members: an instance already consuming took over
        log.info("%s: not taking over offsets (%s): the group is consuming already", group_id, exc)
    finally:
        await stop_quietly(consumer, kafka_bound(k))
