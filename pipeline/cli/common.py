"""What every command shares: the settings it runs with, logging, and stopping on a signal."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import socket
import sys

from pipeline.cli.components import load_config
from pipeline.settings import REPO_ROOT, Settings

__all__ = ["LOCAL_CONFIG", "settings_of", "check_stages", "setup_logging", "install_stop_handlers", "cli_actor"]

LOCAL_CONFIG = REPO_ROOT / "deploy/local/poststelle.toml"


def settings_of(args: argparse.Namespace) -> Settings:
    """`--config`, else $POSTSTELLE_CONFIG, else the local stack's config (when it is there)."""
    path = args.config or os.environ.get("POSTSTELLE_CONFIG") or (LOCAL_CONFIG if LOCAL_CONFIG.exists() else None)
    return load_config(path)


def check_stages(settings: Settings) -> None:
    """What a stage can only check by loading it (the spam stage compiles its rule files): each stage of
    the topology with a `check_config(settings)` class method runs it; a ConfigError stops the command."""
    from pipeline.registry import get_stage

    for name in settings.topology.stages:
        check = getattr(get_stage(name), "check_config", None)
        if check is not None:
            check(settings)


def setup_logging(component: str) -> None:
    level = os.environ.get("POSTSTELLE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s {component}[%(process)d] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # embedded uvicorn (pipeline.web) says "Started server process" and the like at INFO
    logging.getLogger("uvicorn").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def cli_actor() -> str:
    """Who acts, as events record it: ``cli:<login>@<host>``."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"cli:{login}@{socket.gethostname()}"
