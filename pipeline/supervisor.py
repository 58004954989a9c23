"""The supervisor behind `poststelle up`, in the spirit of Postfix's master(8).

It starts the infrastructure (Kafka, Dovecot, smtp-sink, slapd, NSD, clamd) and waits until each accepts connections, creates the
topics, then starts the ingress, every stage and every sink as separate processes. A child that
dies is restarted with a growing backoff. SIGINT/SIGTERM stop everything in reverse order: the
pipeline processes drain and commit, then Dovecot, then the broker; whatever has not exited when
its time is up is killed. Children die with the supervisor even if it is killed (PDEATHSIG).

State lives in ``<home>/run/status.json`` (read by `poststelle status`); children write
``<home>/run/<name>.ready`` once they are consuming/listening, and ``<home>/run/<name>.state`` while
they wait for the broker (shown as ``waiting for kafka``: alive, not ready, and not restarted, see
pipeline/broker.py); logs go to ``<home>/log/<name>.log``.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipeline.bus import ensure_topics
from pipeline.localstack import ServiceSpec
from pipeline.settings import Settings

__all__ = ["Supervisor", "Child", "ready_file", "state_file", "status_file", "hold_file", "component_argv"]

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
STABLE_AFTER = 10.0  # a child up this long has its restart backoff reset


def run_dir(settings: Settings) -> Path:
    return settings.home / "run"


def status_file(settings: Settings) -> Path:
    return run_dir(settings) / "status.json"


def ready_file(settings: Settings, name: str, instance: str = "0") -> Path:
    """Written by a component once it serves; instances other than the supervisor's ("0") have their own."""
    suffix = "" if instance == "0" else f".{instance}"
    return run_dir(settings) / f"{name.replace(':', '-')}{suffix}.ready"


def state_file(settings: Settings, name: str, instance: str = "0") -> Path:
    """Written by a component while it waits for the broker (`pipeline.broker.BrokerWatch`)."""
    return ready_file(settings, name, instance).with_suffix(".state")


def hold_file(settings: Settings, name: str) -> Path:
    """While this file exists the supervisor keeps the component stopped (`poststelle stop NAME`)."""
    return run_dir(settings) / f"{name.replace(':', '-')}.hold"


def component_argv(name: str) -> list[str]:
    """How the supervisor starts a pipeline component: `poststelle run <name>` in this interpreter."""
    return [sys.executable, "-m", "pipeline.cli", "run", name]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the supervisor goes away, however it goes."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Child:
    spec: ServiceSpec
    process: asyncio.subprocess.Process | None = None
    state: str = "stopped"  # starting | ready | restarting | held | stopped
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.0
    waiter: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, settings: Settings, infrastructure: list[ServiceSpec], pipeline: list[ServiceSpec],
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.infra = [Child(s) for s in infrastructure]
        self.pipeline = [Child(s) for s in pipeline]
        self.env = {**os.environ, **(env or {})}
        self.stopping = False
        self.log_dir = settings.home / "log"

    @property
    def children(self) -> list[Child]:
        return [*self.infra, *self.pipeline]

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        run_dir(self.settings).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for f in [*run_dir(self.settings).glob("*.ready"), *run_dir(self.settings).glob("*.hold"),
                  *run_dir(self.settings).glob("*.state")]:
            f.unlink()
        status_task = asyncio.create_task(self._write_status_forever())
        try:
            for child in self.infra:
                await self._start(child)
                await self._wait_port_ready(child, stop)
                if stop.is_set():
                    return
            await ensure_topics(self.settings)
            for child in self.pipeline:
                await self._start(child)
            await stop.wait()
        finally:
            self.stopping = True
            await self.shutdown()
            status_task.cancel()
            self._write_status()

    async def _start(self, child: Child) -> None:
        spec = child.spec
        ready_file(self.settings, spec.name).unlink(missing_ok=True)
        state_file(self.settings, spec.name).unlink(missing_ok=True)
        logfile = open(self.log_dir / f"{spec.name.replace(':', '-')}.log", "ab")
        child.process = await asyncio.create_subprocess_exec(
            *spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile,
            env={**self.env, **spec.env}, cwd=spec.cwd, start_new_session=True, preexec_fn=_die_with_parent)
        logfile.close()
        child.state = "starting"
        child.started_at = time.monotonic()
        child.waiter = asyncio.create_task(self._watch(child, child.process))
        log.info("started %s (pid %d)", spec.name, child.process.pid)

    async def _watch(self, child: Child, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self.stopping or child.process is not process or child.state == "held":
            return
        uptime = time.monotonic() - child.started_at
        if uptime > STABLE_AFTER:
            child.backoff = 0.0
        s = self.settings.supervisor
        child.backoff = min(max(child.backoff * 2, s.restart_backoff_initial), s.restart_backoff_max)
        child.state = "restarting"
        child.restarts += 1
        log.warning("%s exited with %s after %.1fs; restarting in %.1fs", child.spec.name, code, uptime,
                    child.backoff)
        await asyncio.sleep(child.backoff)
        if not self.stopping:
            await self._start(child)

    async def _wait_port_ready(self, child: Child, stop: asyncio.Event, timeout: float = 180.0) -> None:
        if child.spec.ready_port is None and child.spec.ready_probe is None:
            child.state = "ready"
            return
        where = "%s:%d" % child.spec.ready_port if child.spec.ready_port else child.spec.name
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if _is_ready(child.spec):
                child.state = "ready"
                log.info("%s ready on %s", child.spec.name, where)
                return
            await asyncio.sleep(0.2)
        if not stop.is_set():
            raise RuntimeError(f"{child.spec.name} was not ready on {where} within {timeout:.0f}s")

    def _refresh_states(self) -> None:
        for child in self.children:
            if child.state != "starting" or child.process is None:
                continue
            if child.spec.ready_port is not None or child.spec.ready_probe is not None:
                if _is_ready(child.spec):
                    child.state = "ready"
            elif _ready_pid(ready_file(self.settings, child.spec.name)) == child.process.pid:
                child.state = "ready"

    def shown_state(self, child: Child) -> str:
        """The child's state as `status` shows it: a live child that waits for the broker says so."""
        if child.state in ("starting", "ready") and child.process is not None:
            waiting_for = _waiting_for(state_file(self.settings, child.spec.name), child.process.pid)
            if waiting_for:
                return f"waiting for {waiting_for}"
        return child.state

    async def shutdown(self) -> None:
        """Stop the pipeline first (drain and commit), then the infrastructure, within the budget."""
        budget = self.settings.supervisor.stop_timeout
        started = time.monotonic()
        for group in (self.pipeline, list(reversed(self.infra))):
            remaining = max(0.5, budget - (time.monotonic() - started))
            await self._stop_group(group, remaining)

    async def _stop_group(self, group: list[Child], budget: float) -> None:
        live = [c for c in group if c.process is not None and c.process.returncode is None]
        for child in live:
            _signal_group(child.process, signal.SIGTERM)

        async def stopped(child: Child) -> None:
            timeout = min(child.spec.stop_timeout, budget)
            try:
                await asyncio.wait_for(child.process.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%s did not stop within %.1fs: killing it", child.spec.name, timeout)
                _signal_group(child.process, signal.SIGKILL)
                await child.process.wait()
            child.state = "stopped"

        await asyncio.gather(*(stopped(c) for c in live))
        for child in group:
            if child.waiter is not None:
                child.waiter.cancel()

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        self._refresh_states()
        return {
            "supervisor_pid": os.getpid(),
            "stopping": self.stopping,
            "components": {
                c.spec.name: {
                    "state": self.shown_state(c),
                    "pid": c.process.pid if c.process else None,
                    "restarts": c.restarts,
                }
                for c in self.children
            },
        }

    def _write_status(self) -> None:
        path = status_file(self.settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    async def _write_status_forever(self) -> None:
        while True:
            await self._apply_holds()
            self._write_status()
            await asyncio.sleep(0.5)

    async def _apply_holds(self) -> None:
        """Stop components an operator put on hold; start them again once released."""
        for child in self.children:
            held = hold_file(self.settings, child.spec.name).exists()
            if held and child.state != "held":
                child.state = "held"
                if child.process is not None and child.process.returncode is None:
                    log.info("holding %s: stopping it", child.spec.name)
                    await self._stop_group([child], child.spec.stop_timeout)
                    child.state = "held"
            elif not held and child.state == "held" and not self.stopping:
                log.info("releasing %s: starting it", child.spec.name)
                await self._start(child)

    def all_ready(self) -> bool:
        self._refresh_states()
        return all(self.shown_state(c) == "ready" for c in self.children)


def _is_ready(spec: ServiceSpec) -> bool:
    """The spec's own readiness probe if it has one, else its port accepting a connection."""
    if spec.ready_probe is not None:
        return spec.ready_probe()
    return spec.ready_port is not None and _port_open(*spec.ready_port)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _waiting_for(path: Path, pid: int) -> str | None:
    """What the process `pid` waits for, according to its state file (None: nothing, or a stale file)."""
    try:
        state = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return state.get("waiting_for") if isinstance(state, dict) and state.get("pid") == pid else None


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the child's whole process group (Dovecot and Kafka have helpers of their own)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
