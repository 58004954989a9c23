"""The analytics sink: every event into ClickHouse, and the query path behind `poststelle sql`.

One module per job:

- `schema`: the `events` table, the analysts' views, versioned migrations;
- `rows`: an event → its row (common columns, plus what its type adds);
- `store`: the table behind clickhouse-connect, on embedded chDB or a server; idempotent inserts,
  read-only ad-hoc queries;
- `sink`: the consumer group over every event topic, batching and committing after the insert
  (`run_analytics_sink`, the ``sink:analytics`` component);
- `server`: the loopback query endpoint the sink serves while it holds the embedded engine;
- `client`: `run_sql`, for `poststelle sql`: the server, the running sink, or the files.

What the endpoint and its clients agree on (paths, limits, JSON shapes) is
`pipeline.clients.analytics_wire`; the read-only client any layer may use (the portal, `poststelle
trace`) is `pipeline.clients.analytics`.
"""
from consumers.sinks.analytics.client import run_sql
from consumers.sinks.analytics.sink import run_analytics_sink

__all__ = ["run_analytics_sink", "run_sql"]
