"""The analytics schema: the `events` table, the analysts' views, and the versions that build them.

One row per event: the columns every event type may fill (flattened by `rows.event_row`), plus the
full event JSON in ``payload``, so a question no column answers can still be asked of the payload.
The table is a ``ReplacingMergeTree`` whose sorting key ends in ``id``: the sink drops ids already
stored before it inserts (`store.AnalyticsStore.insert`), and the engine collapses the rare duplicate
two concurrent writers could race in (only possible against a server, during a rebalance).

The schema is versioned: `MIGRATIONS` are applied in order by `store.AnalyticsStore.migrate` and
recorded in ``schema_migrations``. Each statement is safe to re-run (``IF NOT EXISTS``, or ``OR
REPLACE`` for a view that changes), so a migration interrupted between a statement and its record
is simply applied again. A change to the
schema is a new `Migration` at the end, never an edit of an old one: a store that already applied
the old version would not see the edit.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Migration", "MIGRATIONS", "MIGRATIONS_DDL", "EVENT_COLUMNS"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: statements applied in order, each safe to re-run (IF NOT EXISTS).

    ``{db}`` in a statement is replaced by the database name.
    """

    version: int
    description: str
    statements: tuple[str, ...]


# name, ClickHouse type, in the order of the table; `ingested_at` is filled by its default
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "String"),
    ("type", "LowCardinality(String)"),
    ("schema_version", "UInt16"),
    ("message_id", "String"),
    ("time", "DateTime64(3, 'UTC')"),
    ("stage", "LowCardinality(String)"),
    ("verdict", "LowCardinality(String)"),
    ("score", "Float64"),
    ("duration_ms", "Float64"),
    ("destination", "LowCardinality(String)"),
    ("sender", "String"),
    ("recipient", "String"),
    ("recipients", "Array(String)"),
    ("client_ip", "String"),
    ("session_id", "String"),
    ("size", "UInt64"),
    ("attempt", "UInt32"),
    ("reply_code", "UInt16"),
    ("reply_enhanced", "LowCardinality(String)"),
    ("reply_text", "String"),
    ("reason", "String"),
    ("check_name", "LowCardinality(String)"),
    ("reason_code", "LowCardinality(String)"),
    ("phase", "LowCardinality(String)"),
    ("payload", "String CODEC(ZSTD(3))"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "Int32"),
    ("kafka_offset", "Int64"),
)
EVENT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _COLUMNS)

_EVENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.events\n(\n"
    + "".join(f"    {name} {ctype},\n" for name, ctype in _COLUMNS)
    + "    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'),\n"
    "    INDEX idx_id id TYPE bloom_filter(0.001) GRANULARITY 1,\n"
    "    INDEX idx_message_id message_id TYPE bloom_filter(0.01) GRANULARITY 4\n"
    ")\n"
    "ENGINE = ReplacingMergeTree\n"
    "PARTITION BY toYYYYMM(time)\n"
    "ORDER BY (type, time, id)"
)

_VIEWS = (
    """CREATE VIEW IF NOT EXISTS {db}.rejections_by_reason AS
SELECT toDate(time) AS day, type,
       if(type = 'smtp_reject', check_name, stage) AS source,
       if(type = 'smtp_reject', reason_code, reason) AS cause,
       count() AS events
FROM {db}.events WHERE type IN ('rejected', 'smtp_reject')
GROUP BY day, type, source, cause""",
    """CREATE VIEW IF NOT EXISTS {db}.stage_verdicts AS
SELECT toDate(time) AS day, stage, verdict, count() AS messages,
       round(avg(score), 3) AS avg_score, round(quantile(0.95)(duration_ms), 1) AS p95_ms
FROM {db}.events WHERE type = 'stage_result'
GROUP BY day, stage, verdict""",
    """CREATE VIEW IF NOT EXISTS {db}.delivery_outcomes AS
SELECT toDate(time) AS day, destination, type AS outcome, count() AS recipients
FROM {db}.events WHERE type IN ('delivered', 'deferred', 'bounced')
GROUP BY day, destination, outcome""",
    """CREATE VIEW IF NOT EXISTS {db}.daily_volume AS
SELECT toDate(time) AS day, count() AS messages, sum(size) AS bytes,
       uniqExact(client_ip) AS clients
FROM {db}.events WHERE type = 'received'
GROUP BY day""",
)

_SMTP_VIEWS = (
    # the breakdown a site reports: "80 % DNSBL, 14 % FCrDNS, 5 % unknown recipient, 1 % greylisting"
    """CREATE VIEW IF NOT EXISTS {db}.smtp_rejections AS
SELECT day, check_name, reason_code, refusals,
       round(100 * refusals / sum(refusals) OVER (PARTITION BY day), 1) AS pct
FROM (SELECT toDate(time) AS day, check_name, reason_code, count() AS refusals
      FROM {db}.events WHERE type = 'smtp_reject' GROUP BY day, check_name, reason_code)""",
    # greylisting: how much mail was delayed, and how much of it came back and passed
    """CREATE VIEW IF NOT EXISTS {db}.greylisting AS
SELECT day, decisions, delayed, passed_after_retry, whitelisted,
       round(100 * delayed / decisions, 1) AS delayed_pct,
       round(100 * passed_after_retry / greatest(delayed, 1), 1) AS passed_after_retry_pct
FROM (SELECT toDate(time) AS day, count() AS decisions,
             countIf(verdict = 'delayed') AS delayed,
             countIf(verdict = 'passed_after_retry') AS passed_after_retry,
             countIf(verdict IN ('whitelisted', 'auto_whitelisted')) AS whitelisted
      FROM {db}.events WHERE type = 'smtp_check' AND check_name = 'greylist' GROUP BY day)""",
)

_SPAM_VIEWS = (
    # one row per scored message: the spam stage's result, from its stage_result, or from the
    # quarantined / rejected event when no recipient was left to pass on (its last result)
    """CREATE VIEW IF NOT EXISTS {db}.spam_scores AS
SELECT message_id, min(time) AS time, any(details) AS details,
       JSONExtractFloat(details, 'score') AS score, JSONExtractFloat(details, 'probability') AS probability,
       arrayMap(r -> JSONExtractString(r, 'name'), JSONExtractArrayRaw(details, 'rules')) AS rules
FROM (SELECT message_id, time,
             if(type = 'stage_result', JSONExtractRaw(payload, 'result', 'details'),
                JSONExtractRaw(payload, 'results', -1, 'details')) AS details
      FROM {db}.events WHERE stage = 'spam' AND type IN ('stage_result', 'quarantined', 'rejected'))
GROUP BY message_id""",
    # one row per message and recipient: what the stage did for that recipient's copy
    """CREATE VIEW IF NOT EXISTS {db}.spam_actions AS
SELECT message_id, time, score, probability, rules,
       JSONExtractString(entry, 'recipient') AS recipient, JSONExtractString(entry, 'action') AS action
FROM {db}.spam_scores ARRAY JOIN JSONExtractArrayRaw(details, 'actions') AS entry""",
    # which rules fire on what the stage judged spam (>= 50 %) and on ham: the ones that hurt show up
    """CREATE VIEW IF NOT EXISTS {db}.spam_rules AS
SELECT rule, countIf(probability >= 50) AS on_spam, countIf(probability < 50) AS on_ham,
       round(100 * on_ham / count(), 1) AS ham_pct
FROM {db}.spam_scores ARRAY JOIN rules AS rule
GROUP BY rule""",
    # the daily share of each action, per recipient
    """CREATE VIEW IF NOT EXISTS {db}.spam_daily AS
SELECT day, action, recipients, round(100 * recipients / sum(recipients) OVER (PARTITION BY day), 1) AS pct
FROM (SELECT toDate(time) AS day, action, count() AS recipients FROM {db}.spam_actions GROUP BY day, action)""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events table", (_EVENTS_DDL,)),
    Migration(2, "analyst views", _VIEWS),
    Migration(3, "SMTP-time decisions: rejections by reason, greylisting", _SMTP_VIEWS),
    Migration(4, "spam: scores per message, actions per recipient, rules on spam and ham, daily shares", _SPAM_VIEWS),
    Migration(5, "delivery outcomes count deliveries taken out of the queue (discarded)", (
        """CREATE OR REPLACE VIEW {db}.delivery_outcomes AS
SELECT toDate(time) AS day, destination, type AS outcome, count() AS recipients
FROM {db}.events WHERE type IN ('delivered', 'deferred', 'bounced', 'discarded')
GROUP BY day, destination, outcome""",)),
)

# where the applied versions are recorded (created before the first migration is looked up)
MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations\n"
    "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'))\n"
    "ENGINE = ReplacingMergeTree ORDER BY version"
)
