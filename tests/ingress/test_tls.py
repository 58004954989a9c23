"""Which certificate each listener presents: the MX listener's own, else the submission's, else a
self-signed one made once under <home>/tls/ (openssl, as the local stack runs)."""
from __future__ import annotations

import ssl

import pytest

from ingress.tls import server_context
from pipeline.settings import ConfigError, IngressSettings, PathSettings, Settings, SubmissionSettings


def _settings(tmp_path, ingress: dict | None = None, submission: dict | None = None) -> Settings:
    return Settings(paths=PathSettings(home=str(tmp_path / "home")), ingress=IngressSettings(**(ingress or {})),
                    submission=SubmissionSettings(**(submission or {})))


def test_without_files_both_listeners_share_one_self_signed_certificate(tmp_path):
    settings = _settings(tmp_path)
    assert isinstance(server_context(settings, "mx"), ssl.SSLContext)
    made = sorted(p.name for p in (tmp_path / "home" / "tls").iterdir())
    assert made == ["submission-cert.pem", "submission-key.pem"]
    server_context(settings, "submission")
    assert sorted(p.name for p in (tmp_path / "home" / "tls").iterdir()) == made  # reused, not made again


def test_the_mx_listener_takes_its_own_files_first_then_the_submissions(tmp_path):
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    both = {"cert_file": str(broken), "key_file": str(broken)}
    with pytest.raises(ConfigError, match=r"^ingress\.cert_file: cannot load"):
        server_context(_settings(tmp_path, ingress=both, submission=both), "mx")
    with pytest.raises(ConfigError, match=r"^submission\.cert_file: cannot load"):
        server_context(_settings(tmp_path, submission=both), "mx")
    server_context(_settings(tmp_path, ingress=both), "submission")  # the MX's files are not the submission's


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"ingress\.cert_file and ingress\.key_file: set both"):
        server_context(_settings(tmp_path, ingress={"cert_file": "/etc/ssl/mx.pem"}), "mx")
