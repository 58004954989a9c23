"""A faust-streaming agent that forwards every record unchanged (run by bench/faust_vs_aiokafka.py).

Runs in the separate virtualenv var/bench/faust-venv (bench/requirements-faust.txt), never in .venv:

    BENCH_BOOTSTRAP=127.0.0.1:19092 BENCH_INPUT=t.in BENCH_OUTPUT=t.out BENCH_GROUP=g \
    BENCH_GUARANTEE=exactly_once var/bench/faust-venv/bin/python bench/faust_noop_app.py worker -l warn
"""
import os

import faust

env = os.environ
app = faust.App(
    env["BENCH_GROUP"],  # the app id is the consumer group
    broker=f"kafka://{env['BENCH_BOOTSTRAP']}",
    processing_guarantee=env.get("BENCH_GUARANTEE", "exactly_once"),
    topic_partitions=int(env.get("BENCH_PARTITIONS", "4")),
    consumer_auto_offset_reset="earliest",
    store="memory://",
    web_enabled=False,
    web_host="127.0.0.1",
    datadir=env.get("BENCH_DATADIR", "/tmp/bench-faust"),
    producer_acks=-1,  # acks=all, as our producers
)
source = app.topic(env["BENCH_INPUT"], key_serializer="raw", value_serializer="raw")
sink = app.topic(env["BENCH_OUTPUT"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def forward(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value)


if __name__ == "__main__":
    app.main()
