"""Which groups a runner takes offsets over from, and which offsets (the Kafka side: tests/integration/test_chain.py)."""
from __future__ import annotations

from aiokafka import TopicPartition

from pipeline.cli.components import load_config
from pipeline.handover import furthest, groups_running

RECEIVED = [TopicPartition("poststelle.received", p) for p in range(3)]


def test_the_groups_that_ran_a_stage_are_its_own_and_every_chain_of_the_prefix():
    settings = load_config(None, environ={})
    known = ["poststelle.route", "poststelle.virus", "poststelle.chain.blocklist-route", "poststelle.chain.a-b",
             "poststelle.analytics", "poststelle.sink.lmtp", "other.chain.blocklist-route", "poststelle.routed"]
    assert groups_running(settings, "route", known) == ["poststelle.route", "poststelle.chain.blocklist-route",
                                                        "poststelle.chain.a-b"]


def test_per_partition_the_furthest_offset_past_the_own_one():
    own = {RECEIVED[0]: 10, RECEIVED[1]: 50}
    stage_alone = {RECEIVED[0]: 40, RECEIVED[1]: 30}  # stopped earlier on partition 1
    old_chain = {RECEIVED[0]: 20, RECEIVED[2]: 7}
    assert furthest(own, [stage_alone, old_chain]) == {RECEIVED[0]: 40, RECEIVED[2]: 7}
    assert furthest(own, []) == {}
