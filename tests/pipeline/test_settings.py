"""Configuration loading: defaults, strict validation naming the key, environment overrides."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.settings import REPO_ROOT, ConfigError, IngressSettings, MessageSettings, Settings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poststelle.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment():
    settings = load_settings(None, environ={})
    assert isinstance(settings, Settings)
    assert settings.ingress == IngressSettings()
    assert settings.ingress.port == 2525
    assert settings.ingress.local_domains == ["school.test"]
    assert settings.topology.stages == ["route"]
    assert settings.paths.home == "var"
    assert settings.home == REPO_ROOT / "var"
    assert settings.source == ""
    # every stage of the topology gets its settings, defaults when there is no section
    route = settings.stage_settings("route")
    assert route.local_destination == "lmtp" and route.remote_destination == "smarthost"


def test_the_local_stack_config_is_valid():
    settings = load_settings(REPO_ROOT / "deploy/local/poststelle.toml", environ={})
    assert settings.source.endswith("poststelle.toml")
    assert settings.sinks.lmtp.port == 2424


def test_file_values_are_read(tmp_path):
    path = _toml(tmp_path, '[ingress]\nport = 2600\nlocal_domains = ["a.test"]\n[runner]\nbatch_size = 5\n')
    settings = load_settings(path, environ={})
    assert settings.ingress.port == 2600
    assert settings.ingress.local_domains == ["a.test"]
    assert settings.runner.batch_size == 5
    assert settings.source == str(path)


def test_typo_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, "[ingress]\nprot = 25\n"), environ={})
    message = str(info.value)
    assert "ingress.prot" in message
    assert "unknown key" in message and "port" in message  # lists the known keys


def test_wrong_type_names_the_key_and_the_expected_form(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, '[ingress]\nport = "abc"\n'), environ={})
    message = str(info.value)
    assert "ingress.port" in message
    assert "an integer" in message and "'abc'" in message


@pytest.mark.parametrize(
    "text, key, form",
    [
        ("[ingress]\nlocal_domains = \"school.test\"\n", "ingress.local_domains", "a list of strings"),
        ("[ingress]\nlocal_domains = [1]\n", "ingress.local_domains[0]", "a string"),
        ("[local]\nkafka = 1\n", "local.kafka", "true or false"),
        ("[ingress]\npersist_timeout = \"5\"\n", "ingress.persist_timeout", "a number"),
        ("[ingress]\nport = true\n", "ingress.port", "an integer"),  # bool is no integer
        ("ingress = 5\n", "ingress", "a table"),
    ],
)
def test_other_wrong_forms(tmp_path, text, key, form):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, text), environ={})
    assert str(info.value).startswith(f"{key}:")
    assert form in str(info.value)


def test_integer_for_a_float_is_fine(tmp_path):
    settings = load_settings(_toml(tmp_path, "[ingress]\npersist_timeout = 5\n"), environ={})
    assert settings.ingress.persist_timeout == 5.0 and isinstance(settings.ingress.persist_timeout, float)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, "[ingres]\nport = 25\n"), environ={})
    assert str(info.value).startswith("ingres:")
    assert "unknown key" in str(info.value)


def test_env_override_wins_over_the_file(tmp_path):
    path = _toml(tmp_path, "[ingress]\nport = 2525\nhost = \"0.0.0.0\"\n")
    settings = load_settings(path, environ={"POSTSTELLE_INGRESS__PORT": "2600"})
    assert settings.ingress.port == 2600
    assert settings.ingress.host == "0.0.0.0"  # the rest of the section stays as in the file


def test_env_override_without_file():
    settings = load_settings(None, environ={"POSTSTELLE_INGRESS__PORT": "2600",
                                            "POSTSTELLE_KAFKA__BOOTSTRAP": "kafka-1:9092"})
    assert settings.ingress.port == 2600
    assert settings.kafka.bootstrap == "kafka-1:9092"  # not TOML: taken as a string


def test_env_list_override_comma_separated(tmp_path):
    path = _toml(tmp_path, '[ingress]\nlocal_domains = ["school.test"]\n')
    settings = load_settings(path, environ={"POSTSTELLE_INGRESS__LOCAL_DOMAINS": "a.test,b.test"})
    assert settings.ingress.local_domains == ["a.test", "b.test"]


def test_env_list_override_as_toml_array():
    settings = load_settings(None, environ={"POSTSTELLE_INGRESS__LOCAL_DOMAINS": '["a.test", "b.test"]'})
    assert settings.ingress.local_domains == ["a.test", "b.test"]


def test_env_override_with_a_bad_value_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"POSTSTELLE_INGRESS__PORT": "abc"})
    assert "ingress.port" in str(info.value)


def test_env_override_with_an_unknown_key_names_it():
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"POSTSTELLE_INGRESS__PROT": "25"})
    assert "ingress.prot" in str(info.value)


def test_env_variables_that_are_not_keys_are_ignored():
    settings = load_settings(None, environ={"POSTSTELLE_INSTANCE": "3", "POSTSTELLE_LOG_LEVEL": "DEBUG",
                                            "OTHER_INGRESS__PORT": "1"})
    assert settings.ingress.port == 2525


def test_config_file_named_by_environment(tmp_path):
    path = _toml(tmp_path, "[ingress]\nport = 2700\n")
    settings = load_settings(None, environ={"POSTSTELLE_CONFIG": str(path)})
    assert settings.ingress.port == 2700
    assert settings.source == str(path)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_toml(tmp_path, "[ingress\n"), environ={})


def test_unknown_stage_in_topology(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, '[topology]\nstages = ["route", "virsu"]\n'), environ={})
    message = str(info.value)
    assert "topology.stages" in message and "'virsu'" in message
    assert "route" in message  # names the known stages


def test_stage_named_twice(tmp_path):
    with pytest.raises(ConfigError, match="named twice"):
        load_settings(_toml(tmp_path, '[topology]\nstages = ["route", "route"]\n'), environ={})


def test_unknown_key_in_a_stage_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, "[stages.route]\nbogus = 1\n"), environ={})
    assert "stages.route.bogus" in str(info.value)


def test_unknown_stage_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, "[stages.nosuch]\nx = 1\n"), environ={})
    assert "stages.nosuch" in str(info.value)


def test_stage_section_values_and_env_override(tmp_path):
    path = _toml(tmp_path, '[stages.route]\nlocal_destination = "smarthost"\n')
    settings = load_settings(path, environ={"POSTSTELLE_STAGES__ROUTE__LOCAL_DOMAINS": "x.test,y.test"})
    route = settings.stage_settings("route")
    assert route.local_destination == "smarthost"
    assert route.local_domains == ["x.test", "y.test"]


def test_the_message_section_caps_every_stage(tmp_path):
    settings = load_settings(_toml(tmp_path, "[message]\nmax_parts = 500\nmax_links = 20\n"),
                             environ={"POSTSTELLE_MESSAGE__MAX_DEPTH": "10"})
    assert settings.message == MessageSettings(max_parts=500, max_links=20, max_depth=10)
    assert load_settings(None, environ={}).message == MessageSettings()
    with pytest.raises(ConfigError, match=r"message\.max_text_bytes: expected 1\.\.\d+, got 0"):
        load_settings(_toml(tmp_path, "[message]\nmax_text_bytes = 0\n"), environ={})
    with pytest.raises(ConfigError, match=r"message\.max_size: unknown key"):
        load_settings(_toml(tmp_path, "[message]\nmax_size = 1\n"), environ={})


@pytest.mark.parametrize("stage, key", [("blocklist", "max_parts"), ("blocklist", "max_text_bytes"),
                                        ("attachment", "max_depth"), ("attachment", "max_parts")])
def test_stage_keys_that_became_message_caps_name_the_new_key(tmp_path, stage, key):
    path = _toml(tmp_path, f'[topology]\nstages = ["{stage}", "route"]\n[stages.{stage}]\n{key} = 5\n')
    with pytest.raises(ConfigError, match=rf"stages\.{stage}\.{key}: no longer a key here: .*\[message\] {key}"):
        load_settings(path, environ={})


def test_stage_section_wrong_type(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, "[stages.route]\nlocal_destination = 3\n"), environ={})
    assert "stages.route.local_destination" in str(info.value) and "a string" in str(info.value)


def test_poststelle_home_sets_paths_home(tmp_path):
    path = _toml(tmp_path, '[paths]\nhome = "elsewhere"\n')
    settings = load_settings(path, environ={"POSTSTELLE_HOME": str(tmp_path / "state")})
    assert settings.paths.home == str(tmp_path / "state")
    assert settings.home == tmp_path / "state"


def test_relative_home_is_below_the_repository():
    settings = load_settings(None, environ={"POSTSTELLE_HOME": "var/x"})
    assert settings.home == REPO_ROOT / "var/x"


def test_settings_are_frozen():
    settings = load_settings(None, environ={})
    with pytest.raises(Exception):
        settings.ingress.port = 1  # type: ignore[misc]


# ---- the CLI --------------------------------------------------------------------------------


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}  # no POSTSTELLE_* from the caller
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_config_check_exits_2_naming_the_key(tmp_path):
    bad = _toml(tmp_path, "[ingress]\nprot = 25\n")
    proc = _cli("--config", str(bad), "config", "check")
    assert proc.returncode == 2, proc.stderr
    assert "ingress.prot" in proc.stderr
    assert "configuration error" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_config_check_bad_env_value(tmp_path):
    good = _toml(tmp_path, "[ingress]\nport = 2525\n")
    proc = _cli("--config", str(good), "config", "check", env_extra={"POSTSTELLE_INGRESS__PORT": "abc"})
    assert proc.returncode == 2
    assert "ingress.port" in proc.stderr


def test_cli_config_check_prints_the_valid_config(tmp_path):
    good = _toml(tmp_path, "[ingress]\nport = 2600\n")
    proc = _cli("--config", str(good), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert '"port": 2600' in proc.stdout
    assert "config OK" in proc.stderr


def test_inconsistent_kafka_limits_are_refused():
    with pytest.raises(ConfigError, match="kafka.max_partition_fetch_bytes"):
        load_settings(None, environ={"POSTSTELLE_KAFKA__MAX_REQUEST_SIZE": "2097152"})
    with pytest.raises(ConfigError, match="runner.max_event_bytes"):
        load_settings(None, environ={"POSTSTELLE_RUNNER__MAX_EVENT_BYTES": "2000000"})


@pytest.mark.parametrize("environ, key", [
    ({"POSTSTELLE_SUPERVISOR__SINKS": "lmtp,smtp"}, "supervisor.sinks"),
    ({"POSTSTELLE_SINKS__ANALYTICS__DATABASE": "x; DROP TABLE events"}, "sinks.analytics.database"),
    ({"POSTSTELLE_STAGES__ROUTE__LOCAL_DESTINATION": "maildir"}, "stages.route.local_destination"),
])
def test_names_that_do_not_exist_are_refused_at_load(environ, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(None, environ=environ)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "analytics.example.test"])
def test_the_analytics_query_endpoint_binds_loopback_only(host):
    with pytest.raises(ConfigError, match=r"sinks\.analytics\.query_host"):
        load_settings(None, environ={"POSTSTELLE_SINKS__ANALYTICS__QUERY_HOST": host})
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        settings = load_settings(None, environ={"POSTSTELLE_SINKS__ANALYTICS__QUERY_HOST": loopback})
        assert settings.sinks.analytics.query_host == loopback


def test_a_string_in_the_file_is_not_taken_as_a_list_in_stage_sections(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[stages.route]\nlocal_domains = "a.test,b.test"\n')
    with pytest.raises(ConfigError, match=r"stages\.route\.local_domains"):
        load_settings(path, environ={})
    env = load_settings(None, environ={"POSTSTELLE_STAGES__ROUTE__LOCAL_DOMAINS": "a.test,b.test"})
    assert env.stage_settings("route").local_domains == ["a.test", "b.test"]


def test_retry_schedule_repeats_its_last_delay_and_durations_parse():
    from pipeline.settings import DeliverySettings, parse_duration

    d = load_settings(None, environ={"POSTSTELLE_DELIVERY__RETRY_SCHEDULE": "1m,5m,4h"}).delivery
    assert [d.delay_name_after(n) for n in (1, 2, 3, 4, 9)] == ["1m", "5m", "4h", "4h", "4h"]
    assert d.delay_after(2) == 300.0
    assert d.lifetime_seconds == 7 * 86400
    assert parse_duration("k", "90s") == 90 and parse_duration("k", "2") == 2 and parse_duration("k", "1.5h") == 5400
    for bad in ("", "5x", "-1m", "0s", "m5"):
        with pytest.raises(ConfigError, match="expected a duration"):
            parse_duration("delivery.lifetime", bad)
    with pytest.raises(ConfigError, match=r"delivery\.retry_schedule\[1\]"):
        DeliverySettings(retry_schedule=["1m", "soon"])
    with pytest.raises(ConfigError, match=r"delivery\.retry_schedule"):
        DeliverySettings(retry_schedule=[])


def test_stage_names_of_other_consumers_are_reserved():
    from dataclasses import dataclass

    from pipeline.registry import register

    @dataclass(frozen=True)
    class S:
        pass

    for bad in ("retry", "bounce", "sink.lmtp", "a b"):
        stage = type("Bad", (), {"name": bad, "description": "x", "Settings": S, "process": None})
        with pytest.raises(ValueError, match="reserved or not a plain word"):
            register(stage)


def test_durations_with_spaces_are_refused_they_name_topics():
    from pipeline.settings import parse_duration

    with pytest.raises(ConfigError):
        parse_duration("delivery.retry_schedule[0]", "1 m")


def test_blob_retention_must_outlast_the_retries_of_a_deferred_delivery(tmp_path):
    assert load_settings(None, environ={}).blobs.retention_seconds == 30 * 86_400
    with pytest.raises(ConfigError, match="blobs.retention: 7d is too short"):
        load_settings(_toml(tmp_path, '[blobs]\nretention = "7d"\n'), environ={})  # delivery.lifetime is 7d
    shorter = load_settings(_toml(tmp_path, '[blobs]\nretention = "3d"\n[delivery]\nlifetime = "1d"\n'), environ={})
    assert shorter.blobs.retention_seconds == 3 * 86_400
    assert load_settings(None, environ={"POSTSTELLE_BLOBS__RETENTION": "never"}).blobs.retention_seconds is None
    with pytest.raises(ConfigError, match="blobs.retention: expected a duration"):
        load_settings(None, environ={"POSTSTELLE_BLOBS__RETENTION": "forever"})
