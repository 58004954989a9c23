"""No lost mail: kill -9 and SIGTERM of pipeline processes mid-run, scaling out and in.

A broker outage is tested in test_broker_outage.py.
"""
from __future__ import annotations

import signal
import threading
import time

from tests.integration.conftest import BulkSender, make_message, new_test_id

MAILBOXES = ["anna.schmidt@school.test", "lena.mueller@school.test", "tom.becker@school.test"]
INFLIGHT = 16  # sinks.lmtp.inflight of the local config: the bound on duplicates after a kill -9


def _items(run: str, count: int) -> list[tuple[str, str, bytes]]:
    items = []
    for i in range(count):
        test_id = f"{run}-{i:05d}"
        rcpt = MAILBOXES[i % len(MAILBOXES)]
        items.append((test_id, rcpt, make_message(test_id, to=rcpt, subject=f"load {i}")))
    return items


def _arrivals(stack, run: str):
    counts = {}
    for box in MAILBOXES:
        for test_id, n in stack.test_ids(box).items():
            if test_id.startswith(run):
                counts[test_id] = counts.get(test_id, 0) + n
    return counts


def _send_with_interruptions(stack, run: str, count: int, actions: list[tuple[int, str, int]]):
    """Send `count` messages; when `n` were accepted, send `sig` to `component` (in order)."""
    sender = BulkSender(stack.smtp_port, threads=8)
    done = threading.Event()
    done_actions: list[tuple[str, int]] = []

    def interrupter():
        for at, component, sig in actions:
            while len(sender.accepted) < at and not done.is_set():
                time.sleep(0.01)
            if done.is_set():
                return
            done_actions.append((component, stack.kill(component, sig)))

    thread = threading.Thread(target=interrupter)
    thread.start()
    sender.run(_items(run, count))
    done.set()
    thread.join()
    return sender, done_actions


def _await_all(stack, run: str, count: int, timeout: float = 240):
    def complete():
        arrived = _arrivals(stack, run)
        return arrived if len(arrived) == count else None

    try:
        return stack.wait_for(complete, timeout=timeout, interval=1.0, what=f"all {count} messages of {run}")
    except AssertionError:
        arrived = _arrivals(stack, run)
        missing = sorted({f"{run}-{i:05d}" for i in range(count)} - set(arrived))
        raise AssertionError(f"{len(missing)} of {count} messages missing, e.g. {missing[:5]}") from None


def test_kill_9_of_stage_and_sink_mid_run_loses_nothing(stack):
    run, count = f"k9{new_test_id()[:8]}", 1000
    sender, kills = _send_with_interruptions(
        stack, run, count, [(300, "stage:route", signal.SIGKILL), (600, "sink:lmtp", signal.SIGKILL)])
    assert not sender.failed, sender.failed
    assert len(set(sender.accepted)) == count
    assert [c for c, _ in kills] == ["stage:route", "sink:lmtp"]
    for component, pid in kills:
        stack.wait_restarted(component, pid)

    arrived = _await_all(stack, run, count)
    duplicates = sum(n - 1 for n in arrived.values())
    print(f"\nkill -9 run: {count} accepted, {count} delivered, {duplicates} duplicates "
          f"(bound: sink in-flight window {INFLIGHT}), {sender.retries} client retries")
    assert duplicates <= INFLIGHT


def test_sigterm_of_every_pipeline_process_mid_run_gives_no_duplicates(stack):
    run, count = f"st{new_test_id()[:8]}", 400
    components = ["ingress", "stage:route", "sink:lmtp", "sink:analytics"]
    actions = [(60 + 80 * i, name, signal.SIGTERM) for i, name in enumerate(components)]
    sender, stops = _send_with_interruptions(stack, run, count, actions)
    assert not sender.failed, sender.failed
    assert [c for c, _ in stops] == components
    for component, pid in stops:
        stack.wait_restarted(component, pid)

    arrived = _await_all(stack, run, count)
    duplicates = {k: n for k, n in arrived.items() if n > 1}
    print(f"\nSIGTERM run: {count} delivered, {len(duplicates)} duplicates, {sender.retries} client retries")
    assert duplicates == {}


def test_scaling_out_and_in_mid_run_rebalances_without_loss_or_duplicates(stack):
    """Second instances of the stage and the sink join mid-run and leave again (SIGTERM):
    partitions move twice each way; every message arrives exactly once."""
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    run, count = f"sc{new_test_id()[:8]}", 400
    extra: list[subprocess.Popen] = []

    def scale_out():
        for component in ("stage:route", "sink:lmtp"):
            env = {**stack.env, "POSTSTELLE_INSTANCE": "1"}
            extra.append(subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", component], cwd=REPO,
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    sender = BulkSender(stack.smtp_port, threads=4)
    items = _items(run, count)
    first, second = items[:200], items[200:]
    scale_out()
    sender.run(first)
    time.sleep(3)  # the newcomers have joined and taken partitions
    for process in extra:
        process.send_signal(signal.SIGTERM)
    sender.run(second)
    for process in extra:
        assert process.wait(30) == 0, "a scaled-in instance exits cleanly"
    assert not sender.failed, sender.failed

    arrived = _await_all(stack, run, count)
    duplicates = {k: n for k, n in arrived.items() if n > 1}
    print(f"\nscale out/in run: {count} delivered, {len(duplicates)} duplicates")
    assert duplicates == {}
