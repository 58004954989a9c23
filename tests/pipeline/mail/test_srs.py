"""SRS against test vectors computed with srslib 0.1.5 (Apache-2.0; the guarded scheme of libsrs2 and
Mail::SRS) for the key "geheim-2026" on 2025-12-03, and the refusals a bounce address can earn."""
from __future__ import annotations

import pytest

from pipeline.mail.srs import DAY, SrsError, SrsSigner, is_srs

NOW = 1764750000.0  # 2025-12-03, day stamp 6J
SIGNER = SrsSigner(keys=(b"geheim-2026",), domain="school.test")

VECTORS = [  # sender, forwarded as (srslib 0.1.5: SRS(secret).forward(sender, "school.test") at NOW)
    ("alice@example.org", "SRS0=VxxZ=6J=example.org=alice@school.test", "alice@example.org"),
    ("Bob.Smith@Mail.Example.COM", "SRS0=Qnf9=6J=Mail.Example.COM=Bob.Smith@school.test",
     "Bob.Smith@Mail.Example.COM"),
    ("SRS0=abcd=XY=orig.test=joe@first.test", "SRS1=yNWP=first.test==abcd=XY=orig.test=joe@school.test",
     "SRS0=abcd=XY=orig.test=joe@first.test"),
    ("SRS1=wxyz=first.test==abcd=XY=orig.test=joe@second.test",
     "SRS1=yNWP=first.test==abcd=XY=orig.test=joe@school.test", "SRS0=abcd=XY=orig.test=joe@first.test"),
]


@pytest.mark.parametrize(("sender", "forwarded", "reversed_"), VECTORS)
def test_vectors_forward_and_reverse(sender, forwarded, reversed_) -> None:
    assert SIGNER.forward(sender, now=NOW) == forwarded
    assert SIGNER.reverse(forwarded, now=NOW) == reversed_
    assert is_srs(forwarded) and is_srs(reversed_) == reversed_.startswith("SRS")


def test_the_null_sender_is_never_rewritten() -> None:
    assert SIGNER.forward("", now=NOW) == ""


def test_the_hash_is_compared_without_case_but_a_changed_part_is_forged() -> None:
    assert SIGNER.reverse("srs0=vXXz=6j=example.org=alice@school.test", now=NOW) == "alice@example.org"
    for forged in ("SRS0=VxxZ=6J=example.org=mallory@school.test", "SRS0=AAAA=6J=example.org=alice@school.test",
                   "SRS0=Vx=6J=example.org=alice@school.test",
                   "SRS1=AAAA=first.test==abcd=XY=orig.test=joe@school.test"):
        with pytest.raises(SrsError) as info:
            SIGNER.reverse(forged, now=NOW)
        assert info.value.reason == "forged", forged


def test_expiry_after_max_age_days_and_across_the_1024_day_wrap() -> None:
    address = SIGNER.forward("alice@example.org", now=NOW)
    assert SIGNER.reverse(address, now=NOW + 21 * DAY) == "alice@example.org"
    with pytest.raises(SrsError) as info:
        SIGNER.reverse(address, now=NOW + 22 * DAY)
    assert info.value.reason == "expired" and "22 days old" in str(info.value)
    wrap = 1023 * DAY + 100.0  # day 1023: stamp "77"; two days later the day counter is back at 1
    late = SIGNER.forward("a@b.test", now=wrap)
    assert "=77=" in late and SIGNER.reverse(late, now=wrap + 2 * DAY) == "a@b.test"


def test_key_rotation_the_first_key_signs_every_key_verifies() -> None:
    old = SIGNER.forward("alice@example.org", now=NOW)
    rotated = SrsSigner(keys=(b"neu-2027", b"geheim-2026"), domain="school.test")
    assert rotated.forward("alice@example.org", now=NOW) != old
    assert rotated.reverse(old, now=NOW) == "alice@example.org"
    with pytest.raises(SrsError):
        SrsSigner(keys=(b"neu-2027",), domain="school.test").reverse(old, now=NOW)


@pytest.mark.parametrize("address", ["alice@school.test", "SRS0=x@school.test", "SRS0=VxxZ=Z!=example.org=a@school.test"])
def test_malformed_addresses(address) -> None:
    with pytest.raises(SrsError) as info:
        SIGNER.reverse(address, now=NOW)
    assert info.value.reason in ("malformed", "forged")
