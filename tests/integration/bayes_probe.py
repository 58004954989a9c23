"""A Bayes model in a process of its own, as a spam stage instance holds it (tests/integration/test_spam_learn.py).

    python -m tests.integration.bayes_probe MIN_LEARNED FILE...

Replays the learn topic of the stack that POSTSTELLE_CONFIG and the POSTSTELLE_ environment name,
then prints one JSON object: the model's counts and each file's spam probability (null: no vote).
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from consumers.stages.spam.bayes import BayesSettings
from consumers.stages.spam.model import BayesModel, kafka_transport
from consumers.stages.spam.tokens import token_hashes, tokenize
from pipeline.bus import Topics
from pipeline.cli.components import load_config
from pipeline.mail.message import parse_message


async def probe(min_learned: int, files: list[str]) -> dict:
    settings = load_config(os.environ["POSTSTELLE_CONFIG"])
    model = BayesModel(BayesSettings(min_learned=min_learned),
                       kafka_transport(settings, client_id=f"bayes-probe-{os.getpid()}"),
                       topic=Topics.from_settings(settings).spam_learn)
    try:
        if not await model.start(timeout=60):
            raise SystemExit("the learn topic was not replayed within 60 s")
        probabilities = [model.probability(token_hashes(tokenize(parse_message(Path(f).read_bytes()))))
                         for f in files]
        return {"pid": os.getpid(), "nspam": model.nspam, "nham": model.nham, "probabilities": probabilities}
    finally:
        await model.close()


if __name__ == "__main__":
    print(orjson.dumps(asyncio.run(probe(int(sys.argv[1]), sys.argv[2:]))).decode())
