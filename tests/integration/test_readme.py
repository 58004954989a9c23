"""The README is part of the product: its quick-start commands run, and what it shows is what the stack prints.

- Every shell command of the README's quick start (after `make run`) is run against the test stack,
  with the local stack's ports and state directory swapped for the test stack's. A command whose
  README comment shows an SMTP reply (`# 550 5.1.1 User unknown`) must print that reply; every other
  command must succeed.
- The ready line and the component list the README shows are those `poststelle up` prints for the
  local config, and the running stack's status lists the components the same table names.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest

from pipeline.cli.components import components, consumer_groups, load_config, metrics_endpoints
from pipeline.cli.stack import ready_line
from pipeline.localstack import local_services
from pipeline.settings import REPO_ROOT
from tests.integration.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
LOCAL_CONFIG = REPO_ROOT / "deploy/local/poststelle.toml"
REPLY = re.compile(r"^\d{3} \d\.\d{1,3}\.\d{1,3} ")


@dataclass
class Command:
    text: str  # as the README shows it (continuations joined)
    expect: str  # an SMTP reply the README says it gets ("" when it should just succeed)


def _section(title: str, until: str) -> str:
    return README[README.index(title):README.index(until)]


def quick_start_commands() -> list[Command]:
    """The shell commands of the quick start, without `make run` / `make test` (the stack is up)."""
    commands: list[Command] = []
    for block in re.findall(r"```sh\n(.*?)```", _section("## Quick start", "## The demo site"), re.S):
        pending, joiner = "", "\n"
        for line in block.splitlines():
            if not pending and line.lstrip().startswith("#"):  # a comment line after a command: its result
                if commands and REPLY.match(line.lstrip("# ")):
                    commands[-1].expect = line.lstrip("# ").strip()
                continue
            pending = f"{pending}{joiner}{line.lstrip() if joiner == ' ' else line}" if pending else line
            joiner = "\n"
            if pending.endswith("\\"):  # a continuation line: the shell reads one line
                pending, joiner = pending[:-1].rstrip(), " "
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            body, _, comment = _split_comment(pending)
            if body.split()[:1] != ["make"]:
                commands.append(Command(body.strip(), comment.strip() if REPLY.match(comment.strip()) else ""))
            pending = ""
    return commands


def _split_comment(line: str) -> tuple[str, str, str]:
    """The command and its trailing comment (a '#' outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), "#", line[i + 1:]
    return line, "", ""


def test_the_readme_quick_start_has_the_commands_this_test_runs():
    texts = [c.text for c in quick_start_commands()]
    assert any(t.startswith("swaks --server 127.0.0.1:2525") for t in texts)
    assert any("--tls-on-connect" in t for t in texts) and any(t.startswith(".venv/bin/poststelle sql") for t in texts)
    assert [c.expect for c in quick_start_commands() if c.expect] == [
        "550 5.1.1 Recipient address rejected: User unknown", "554 5.7.1 Message refused by virus check: virus found: Poststelle.Test.Eicar.UNOFFICIAL",
        "554 5.7.1 Message refused by spam check: spam: GTUBE"]


def _for_the_test_stack(stack, text: str, message_id: str) -> str:
    env = stack.env
    return (text.replace("127.0.0.1:2525", f"127.0.0.1:{stack.smtp_port}")
            .replace("--port 2465", f"--port {env['POSTSTELLE_SUBMISSION__TLS_PORT']}")
            .replace("var/mail/", f"{stack.home}/mail/")
            .replace("<message id>", message_id))


def test_every_quick_start_command_works_on_the_running_stack(stack):
    message_id = ""
    try:
        for command in quick_start_commands():
            text = _for_the_test_stack(stack, command.text, message_id)
            done = subprocess.run(text, shell=True, cwd=REPO, env=stack.env, capture_output=True, text=True,
                                  timeout=180)
            output = done.stdout + done.stderr
            if command.expect:
                assert command.expect in output, f"{command.text}\n{output[-3000:]}"
            else:
                assert done.returncode == 0, f"{command.text} exited {done.returncode}\n{output[-3000:]}"
            found = re.search(r"250 2\.0\.0 Ok: queued as (\S+)", output)
            if found and not message_id:
                message_id = found.group(1)
                stack.wait_for(lambda: stack.messages("max.mustermann@school.test"),
                               what="the first mail in max's maildir")
    finally:
        stack.cli("list", "remove", "block", "domain", "spam.example", check=False)
        stack.cli("user", "reset", "lena.mueller@school.test", check=False)  # the quarantine example turned hers on
    assert message_id


def test_the_ready_line_and_the_components_are_what_up_prints(stack):
    local = load_config(LOCAL_CONFIG, environ={})
    shown = re.search(r"^poststelle ready: .*$", README, re.M).group(0)
    assert shown == ready_line(local).replace(str(local.home), "/path/to/var")
    shown_status = _section("`status` lists every component", "### Send a first mail")
    listed = re.findall(r"^(\S+)\s+ready\s+pid=\d+ restarts=0(?: lag=\d+)?(?: metrics=\S+)?$", shown_status, re.M)
    assert listed == [s.name for s in local_services(local)] + [c.name for c in components(local)]
    assert dict(re.findall(r"^(\S+)\s.* metrics=(\S+)$", shown_status, re.M)) == metrics_endpoints(local)
    assert set(re.findall(r"^(\S+)\s.* lag=\d+", shown_status, re.M)) == set(consumer_groups(local))
    # the running test stack printed its own ready line, and runs what the same table says
    settings = load_config(stack.env["POSTSTELLE_CONFIG"], environ=stack.env)
    assert ready_line(settings) in (stack.home / "up.log").read_text()
    running = list(stack.status()["components"])
    assert running == [s.name for s in local_services(settings)] + [c.name for c in components(settings)]


@pytest.mark.parametrize("name", ["run", "status", "deadletter", "quarantine", "trace", "queue", "list", "spam", "sql"])
def test_every_command_in_the_readme_table_exists(name):
    assert f"`poststelle {name}" in README
    done = subprocess.run([str(REPO / ".venv/bin/poststelle"), name, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
