"""The trace header the ingress prepends (pipeline/mail/trace.py)."""
from __future__ import annotations

import email.utils
import time
from datetime import datetime

from pipeline.mail.trace import received_header


def _line(**overrides) -> str:
    fields = dict(helo="mail.example.org", client_ip="192.0.2.7", reverse_name="mail.example.org",
                  by_host="mx.school.test", protocol="ESMTP", message_id="m1", recipients=["a@school.test"])
    return received_header(**{**fields, **overrides}).decode()


def test_the_received_line_names_client_host_and_id_and_ends_in_the_local_date_of_now():
    line = _line()
    assert line.startswith("Received: from mail.example.org (mail.example.org [192.0.2.7])\r\n")
    assert "by mx.school.test (poststelle) with ESMTP id m1\r\n\tfor <a@school.test>;" in line
    date = email.utils.parsedate_to_datetime(line.rsplit(";", 1)[1].strip())
    assert abs(date.timestamp() - time.time()) < 2  # (formatted once a second, not once a message)
    assert date.utcoffset() == datetime.now().astimezone().utcoffset()


def test_a_helo_name_cannot_break_the_line_or_open_a_comment():
    assert _line(helo="evil)\r\nX-Injected: 1 (").startswith("Received: from evilX-Injected: 1  (")
