"""Digest link tokens (pipeline/links.py): one entry, one action, signed, expiring."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline.links import LinkError, link_key, make_link_token, read_link_token
from pipeline.settings import Settings
from pipeline.settings_base import ConfigError

KEY = b"k" * 32
ENTRY = "0123456789abcdef0123"


def test_a_token_names_its_entry_and_action():
    token = make_link_token(KEY, ENTRY, "release", expires=2_000)
    read = read_link_token(KEY, token, now=1_000)
    assert (read.entry, read.action, read.expires) == (ENTRY, "release", 2_000)
    assert read.id == read_link_token(KEY, token, now=1_999).id  # the same token, the same id
    assert read.id != read_link_token(KEY, make_link_token(KEY, ENTRY, "delete", 2_000), now=1_000).id


@pytest.mark.parametrize("change", [
    lambda t: t.replace(".release.", ".delete."),  # another action
    lambda t: t.replace(ENTRY, "f" * 20),  # another entry
    lambda t: t.replace(".2000.", ".9000."),  # a longer life
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),  # another MAC
])
def test_an_altered_token_is_forged(change):
    token = make_link_token(KEY, ENTRY, "release", expires=2_000)
    with pytest.raises(LinkError) as caught:
        read_link_token(KEY, change(token), now=1_000)
    assert caught.value.why == "forged"


def test_another_key_makes_a_forgery_and_time_makes_it_expire():
    token = make_link_token(KEY, ENTRY, "release", expires=2_000)
    with pytest.raises(LinkError) as forged:
        read_link_token(b"x" * 32, token, now=1_000)
    assert forged.value.why == "forged"
    with pytest.raises(LinkError) as expired:
        read_link_token(KEY, token, now=2_000)
    assert expired.value.why == "expired"


@pytest.mark.parametrize("token", ["", "v1", "v2.0123456789abcdef0123.release.2000.mac", "x" * 500,
                                   "v1.0123456789abcdef0123.open_all.2000.mac", "v1.../etc/passwd.release.2000.mac"])
def test_malformed_tokens(token):
    with pytest.raises(LinkError) as caught:
        read_link_token(KEY, token, now=1_000)
    assert caught.value.why == "malformed"


def test_the_site_key_is_made_once_private(tmp_path):
    settings = Settings(paths=Settings().paths.__class__(home=str(tmp_path)))
    key = link_key(settings)
    path = tmp_path / "keys" / "quarantine-links.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert link_key(settings) == key  # read again, not replaced


def test_quarantine_settings_are_checked():
    from pipeline.quarantine_settings import QuarantineSettings, WebSettings
    with pytest.raises(ConfigError, match="unknown category"):
        QuarantineSettings(approval=["viruses"])
    with pytest.raises(ConfigError, match="loopback"):
        WebSettings(host="0.0.0.0")
    assert WebSettings(port=8030).url == "http://127.0.0.1:8030"
