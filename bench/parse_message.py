"""The parsed message: CPU and memory per message, for ordinary mail and for hostile mail.

    .venv/bin/python bench/parse_message.py [--messages 1000] [--seed 1] [--repeat 3]

Ordinary mail: the blocklist benchmark's generated messages (`bench/stage_blocklist.make_message`,
4-50 KiB, multipart/alternative text + HTML in quoted-printable and base64, 3-30 links, one in four
with a PDF attachment). For each, `parse_message` (what a stage pays, once per process) and
`parse_header` (what the ingress pays at DATA) are timed with `time.process_time()`.

Hostile mail: the messages of the unit tests (`tests/pipeline/mail/test_message.HOSTILE`: 200 MIME
levels, 10,000 parts, a 5 MB header field, 20,000 header fields, bad base64, unknown and quadratic
charsets, NULs, HTML that stalls the stdlib parser, ...), each parsed `--repeat` times (the best
time is printed) with the default caps, and the peak of Python memory allocated while parsing
(`tracemalloc`, beyond the message bytes themselves). Then the largest messages the ingress takes
(25 MiB, `ingress.max_message_size`): a base64 attachment, and HTML text.
"""
from __future__ import annotations

import argparse
import base64
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stage_blocklist import make_message  # noqa: E402
from pipeline.mail.headers import parse_header  # noqa: E402
from pipeline.mail.message import parse_message  # noqa: E402
from tests.pipeline.mail.test_message import HOSTILE  # noqa: E402


def cpu_ms(function, raw: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function(raw)
        best = min(best, time.process_time() - started)
    return best * 1000


def peak_mib(raw: bytes) -> float:
    tracemalloc.start()
    parse_message(raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def ordinary(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    pool = [f"www.site{i}.test" for i in range(args.messages // 2)] + ["good.test", "ext.test"]
    corpus = [make_message(rng, i, pool) for i in range(args.messages)]
    full = [cpu_ms(parse_message, raw, 1) for raw in corpus]
    header = [cpu_ms(parse_header, raw, 1) for raw in corpus]
    size = sum(map(len, corpus)) / len(corpus) / 1024
    print(f"ordinary: {len(corpus)} messages, {size:.1f} KiB average")
    for name, times in (("parse_message", full), ("parse_header", header)):
        ordered = sorted(times)
        print(f"  {name:14s} mean {statistics.fmean(times):6.3f} ms, p50 {ordered[len(ordered) // 2]:6.3f} ms, "
              f"p99 {ordered[int(len(ordered) * 0.99)]:6.3f} ms, {1000 / statistics.fmean(times):7.0f} messages/s per core")


def hostile(args: argparse.Namespace) -> None:
    print(f"hostile (best of {args.repeat}):")
    for name, raw in {**HOSTILE, **largest()}.items():
        parsed = parse_message(raw)
        print(f"  {name:32s} {len(raw):>10,d} bytes {cpu_ms(parse_message, raw, args.repeat):8.1f} ms "
              f"{peak_mib(raw):7.1f} MiB peak  caps hit: {', '.join(parsed.caps_hit) or '-'}")


def largest() -> dict[str, bytes]:
    head = b"From: a@good.test\r\nTo: b@school.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
    attachment = base64.encodebytes(random.Random(1).randbytes(18 * 2**20)).replace(b"\n", b"\r\n")
    html = b'<p>Text <a href="http://x.test/">link</a> more text</p>\r\n' * (25 * 2**20 // 56)
    return {
        "25 MiB: an 18 MiB attachment": head + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--b--\r\n",
        "25 MiB of HTML": head + b"Content-Type: text/html\r\n\r\n" + html,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ordinary(args)
    hostile(args)


if __name__ == "__main__":
    main()
