"""A private `poststelle up` for the Python benches (bench/connections.py, bench/scaleout.py).

bench/stack.sh does the same for the shell benches on the fixed ports 26088-26107; this one takes a
port base, so a Python bench can run while a shell bench (or another Python bench) holds those:

    base+0 Kafka   base+1 Kafka controller   base+2 SMTP (ingress)   base+6 slapd   base+7 NSD
    base+3/4/5/8/9/10/11 the other listeners (unused here: their daemons and components are off)

State lives in var/bench/stack-<base>/ (emptied at start; logs in log/). What runs is chosen by
`parts`: "kafka" alone (no ingress, no stages, no sinks, no slapd/NSD) or "ingress" (Kafka, slapd,
NSD and the ingress: what bench/stack.sh's `ingress-only` runs).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BenchStack"]

REPO = Path(__file__).resolve().parents[1]
POSTSTELLE = REPO / ".venv/bin/poststelle"


class BenchStack:
    """`with BenchStack(base, "ingress", extra_env) as stack:` a ready stack; stopped (SIGINT) on exit."""

    def __init__(self, base: int, parts: str = "ingress", extra: dict[str, str] | None = None,
                 nofile_soft: int = 0) -> None:
        if parts not in ("kafka", "ingress"):
            raise ValueError(f"parts: kafka or ingress, not {parts!r}")
        self.base = base
        self.parts = parts
        self.home = REPO / f"var/bench/stack-{base}"
        self.bootstrap = f"127.0.0.1:{base}"
        self.smtp_port = base + 2
        self.extra = extra or {}
        self.nofile_soft = nofile_soft  # start `poststelle up` with this soft RLIMIT_NOFILE (0: inherited)
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTSTELLE_")}
        env.update({
            "POSTSTELLE_CONFIG": str(REPO / "deploy/local/poststelle.toml"),
            "POSTSTELLE_HOME": str(self.home),
            "POSTSTELLE_KAFKA__BOOTSTRAP": self.bootstrap,
            "POSTSTELLE_LOCAL__KAFKA_CONTROLLER_PORT": str(b + 1),
            "POSTSTELLE_LOCAL__KAFKA_JARS": str(REPO / "var/kafka/lib"),
            "POSTSTELLE_INGRESS__PORT": str(b + 2),
            "POSTSTELLE_SINKS__LMTP__PORT": str(b + 3),
            "POSTSTELLE_SINKS__ANALYTICS__QUERY_PORT": str(b + 4),
            "POSTSTELLE_SINKS__SMARTHOST__PORT": str(b + 5),
            "POSTSTELLE_LDAP__PORT": str(b + 6),
            "POSTSTELLE_DNS__PORT": str(b + 7),
            "POSTSTELLE_SUBMISSION__PORT": str(b + 8),
            "POSTSTELLE_SUBMISSION__TLS_PORT": str(b + 9),
            "POSTSTELLE_LOCAL__CLAMD_PORT": str(b + 10),
            "POSTSTELLE_WEB__PORT": str(b + 11),
            # nothing downstream competes for the CPU: no stages, no sinks, no verdict to wait for
            "POSTSTELLE_SUPERVISOR__RUN_STAGES": "false",
            "POSTSTELLE_SUPERVISOR__SINKS": "[]",
            "POSTSTELLE_LOCAL__DOVECOT": "false",
            "POSTSTELLE_LOCAL__SMARTHOST": "false",
            "POSTSTELLE_LOCAL__CLAMD": "false",
            "POSTSTELLE_INGRESS__VERDICT_WAIT": "0",
        })
        if self.parts == "kafka":
            env.update({"POSTSTELLE_SUPERVISOR__RUN_INGRESS": "false", "POSTSTELLE_LOCAL__SLAPD": "false",
                        "POSTSTELLE_LOCAL__NSD": "false"})
        env.update(self.extra)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(POSTSTELLE), *args], env=self.env(), capture_output=True, text=True, check=check)

    def __enter__(self) -> BenchStack:
        if not POSTSTELLE.exists():
            sys.exit("no .venv: run make venv first")
        if not (REPO / "var/kafka/lib").is_dir():
            sys.exit("no Kafka jars in var/kafka/lib: run make kafka-jars first")
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        with (self.home / "up.log").open("w") as log:
            self.process = subprocess.Popen([str(POSTSTELLE), "up"], env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=self._limit_descriptors)
        status = self.cli("status", "--wait", "180", check=False)
        if status.returncode != 0:
            self.__exit__()
            sys.exit(f"the bench stack did not come up:\n{status.stdout}{status.stderr}"
                     f"see {self.home}/up.log and {self.home}/log/")
        return self

    def _limit_descriptors(self) -> None:
        if self.nofile_soft:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile_soft, hard), hard))

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pid(self, component: str) -> int:
        """The process id of a component the supervisor runs (from its run/status.json)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                status = json.loads((self.home / "run/status.json").read_text())
                return int(status["components"][component]["pid"])
            except (OSError, KeyError, TypeError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
