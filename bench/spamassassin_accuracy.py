"""SpamAssassin on the same corpus and split as bench/spam_accuracy.py: accuracy and CPU per message.

    .venv/bin/python bench/spamassassin_accuracy.py [--corpus /tmp/sa-corpus] [--children 2]

Needs Debian's `spamassassin` (spamd, spamc, sa-learn: `apt-get install spamassassin`; its shipped
rules, no sa-update). Everything runs in a scratch directory with a private spamd on a loopback
port, network tests off (`--local`, as our file scoring has no session or DNS):

1. **rules only**: spamd with `use_bayes 0`, every test-half message through `spamc -c`;
2. **with Bayes**: `sa-learn --spam|--ham` on the training half (its own Bayes database), spamd
   with `use_bayes 1` and `bayes_auto_learn 0`, the test half again.

Printed as our bench prints: detection and false positives at 5 and 7 points (SpamAssassin's
`required_score` 5 is our 50 %), and the machine CPU time per message of spamd and its children
(from /proc, user + system), with the number of spamd children (default 2, Debian's default 5).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.spam_corpus import corpus_dir, load, split  # noqa: E402

PORT = 27830


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def configure(home: Path, bayes: bool) -> None:
    for pre in Path("/etc/spamassassin").glob("*.pre"):  # the plugin loads of the Debian package
        shutil.copy(pre, home / pre.name)
    (home / "local.cf").write_text(f"use_bayes {int(bayes)}\nbayes_auto_learn 0\nbayes_path {home}/bayes/bayes\n"
                                   "skip_rbl_checks 1\nuse_razor2 0\nuse_pyzor 0\ndns_available no\n")


def spamd(home: Path, bayes: bool, children: int) -> subprocess.Popen:
    configure(home, bayes)
    process = subprocess.Popen(["spamd", "--local", "--listen", f"127.0.0.1:{PORT}", "-m", str(children),
                                "--min-children", str(children), "--max-spare", str(children),
                                "--siteconfigpath", str(home), "--pidfile", str(home / "spamd.pid"),
                                "-u", "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
                                "--helper-home-dir", str(home), "-x"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("spamd did not start within 120 s")


def children_of(pid: int) -> list[int]:
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()[1] == str(pid):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def score(raw: bytes) -> float:
    done = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(PORT), "-c", "-s", "30000000"], input=raw,
                          capture_output=True, timeout=120)
    return float(done.stdout.decode().split("/")[0])


def run(name: str, home: Path, bayes: bool, children: int, test) -> None:
    process = spamd(home, bayes, children)
    try:
        time.sleep(2)
        pids = children_of(process.pid)
        before, started = cpu_seconds(pids), time.monotonic()
        with ThreadPoolExecutor(children) as pool:
            scores = list(pool.map(lambda s: (s.label, score(s.raw)), test))
        elapsed, used = time.monotonic() - started, cpu_seconds(children_of(process.pid)) - before
    finally:
        process.terminate()
        process.wait(30)
    spam = [v for label, v in scores if label == "spam"]
    ham = [v for label, v in scores if label == "ham"]
    print(f"SpamAssassin {name}: {len(spam)} spam, {len(ham)} ham of the test half")
    for points in (5.0, 7.0):
        caught, wrong = sum(v >= points for v in spam), sum(v >= points for v in ham)
        print(f"  at >= {points:4.1f} points: detection {100 * caught / len(spam):5.1f} % ({caught}), "
              f"false positives {100 * wrong / len(ham):4.2f} % ({wrong})")
    print(f"  CPU per message (spamd and children): {1000 * used / len(scores):.0f} ms; "
          f"{len(scores) / elapsed:.1f} msgs/s with {children} children")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--bayes-only", action="store_true", help="skip the rules-only run")
    args = parser.parse_args()
    for tool in ("spamd", "spamc", "sa-learn"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install spamassassin")
    training, test = split(load(corpus_dir(args.corpus)))
    with tempfile.TemporaryDirectory(prefix="sa-bench-") as scratch:
        home = Path(scratch)
        (home / "bayes").mkdir()
        os.chmod(home, 0o777)
        os.chmod(home / "bayes", 0o777)
        if not args.bayes_only:
            run("rules only (--local, no Bayes)", home, False, args.children, test)
        configure(home, bayes=True)
        started = time.monotonic()
        for label in ("spam", "ham"):
            folder = home / f"learn-{label}"
            folder.mkdir()
            for n, sample in enumerate(s for s in training if s.label == label):
                (folder / f"{n}.eml").write_bytes(sample.raw)
            subprocess.run(["sa-learn", f"--{label}", "--siteconfigpath", str(home), str(folder)], check=True,
                           capture_output=True, timeout=1800)
        subprocess.run(["chmod", "-R", "a+rwX", str(home / "bayes")], check=True)
        print(f"sa-learn on the training half: {time.monotonic() - started:.0f} s")
        run("with Bayes (--local)", home, True, args.children, test)


if __name__ == "__main__":
    main()
