"""The one-pass decoder (msgspec) against the long way (orjson, then checked field by field):
whatever the payload, the fast way either gives up or gives exactly what the long way gives, and it
takes every valid event of the current version."""
from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from schemas.codec import MAX_DEPTH, DecodeError, from_dict, json_decoder
from schemas.events import EVENT_TYPES, _decode_checked, _decode_current, decode_event, encode_event, event_type_name
from tests.schemas.test_events import _nest, all_events


@pytest.mark.parametrize("event", all_events(), ids=lambda e: event_type_name(type(e)))
def test_every_current_event_takes_the_fast_way(event) -> None:
    payload = encode_event(event)
    assert _decode_current(payload, None) == event
    assert _decode_current(payload.decode(), (type(event),)) == event
    assert _decode_current(payload, ()) is None  # not expected: the long way says why


def test_every_event_type_has_a_fast_decoder() -> None:
    assert all(json_decoder(cls) is not None for cls in EVENT_TYPES.values())


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


REPLACEMENTS: list[Any] = [0, 1, -7, 2**63 - 1, 1.5, -0.0, "", "x", "received", "stage_result", "pass", True, False,
                           None, [], {}, [1], ["a"], {"a": 1}, {"stage": "x"}, _nest(20), _nest(40)]


def _mutate(data: dict, rng: random.Random) -> dict:
    data = orjson.loads(orjson.dumps(data))
    path = rng.choice(_paths(data)[1:])
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    roll = rng.random()
    if roll < 0.2 and isinstance(parent, dict):
        del parent[last]
    elif roll < 0.3 and isinstance(parent, dict):
        parent[f"new_{rng.randrange(3)}"] = rng.choice(REPLACEMENTS)
    else:
        parent[last] = rng.choice(REPLACEMENTS)
    return data


def _without_defaults(event: Any) -> Any:
    """The event as JSON without the fields whose defaults are made fresh for each decode (`id`, `time`)."""
    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in ("id", "time")}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value
    return scrub(orjson.loads(encode_event(event)))


def _long_way(payload: bytes) -> Any:
    try:
        return _decode_checked(payload, None)
    except DecodeError:
        return DecodeError


def test_the_fast_way_gives_up_or_agrees_on_mutated_events() -> None:
    rng = random.Random(20261204)
    originals = [orjson.loads(encode_event(e)) for e in all_events()]
    taken = refused = 0
    for _ in range(4000):
        data = rng.choice(originals)
        for _ in range(rng.choice((1, 1, 2, 3))):
            data = _mutate(data, rng)
        payload = orjson.dumps(data)
        fast, long = _decode_current(payload, None), _long_way(payload)
        if fast is None:
            refused += 1
            continue
        taken += 1
        assert type(fast) is type(long), payload
        assert _without_defaults(fast) == _without_defaults(long), payload
    assert taken > 500 and refused > 500  # both ways were tried often


@pytest.mark.parametrize("payload", [
    b'{"type":"received","type":"held","schema_version":1}',
    b'{"type":"received","schema_version":true}',
    b'{"type":"received","schema_version":1.0}',
    b'{"type":["received"],"schema_version":1}',
    b'{"type":"received","schema_version":1,"envelope":{"mail_from":"\\ud800","rcpt_to":[]}}',
    b'{"type":"received","schema_version":1,"extra":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"type":"received","schema_version":1} trailing',
    b"[]", b"", b"nul", "\u00fc".encode("latin-1"),
])
def test_odd_payloads_are_refused_or_agree(payload: bytes) -> None:
    fast, long = _decode_current(payload, None), _long_way(payload)
    assert fast is None or fast == long
    if long is DecodeError:
        with pytest.raises(DecodeError):
            decode_event(payload)


def _deepest(value: Any, level: int) -> int:
    """The level of the deepest value (scalar, or container however empty) in `value`."""
    children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
    return max([level] + [_deepest(child, level + 1) for child in children])


def _random_value(rng: random.Random, levels: int) -> Any:
    """A value about `levels` deep: one deep branch, the others shallow, containers empty or not."""
    if levels <= 0 or rng.random() < 0.03:
        return rng.choice([1, "x", None, 2.5, [], {}])
    children = [_random_value(rng, levels - 1)] + [_random_value(rng, min(levels - 1, 2))
                                                   for _ in range(rng.choice((0, 0, 1, 2)))]
    rng.shuffle(children)
    return children if rng.random() < 0.5 else {str(i): child for i, child in enumerate(children)}


def test_the_nesting_limit_holds_exactly_at_max_depth() -> None:
    rng = random.Random(7)
    refused = 0
    for _ in range(3000):
        value, start = _random_value(rng, rng.randrange(MAX_DEPTH - 6, MAX_DEPTH + 4)), rng.randrange(4)
        too_deep = _deepest(value, start) > MAX_DEPTH
        try:
            from_dict(dict[str, Any], {"v": value}, depth=start - 1)
        except DecodeError as exc:
            assert too_deep and "deeper" in str(exc)
            refused += 1
        else:
            assert not too_deep
    assert 300 < refused < 2700
