"""The quarantine portal in a real headless browser (Debian's chromium, driven by Selenium) against
the real stack: sign in through slapd, see and preview a held spam, release it into Dovecot; another
user can neither see nor release it (also by URL); a held .exe requested by its user and approved
by an admin arrives with the part restored; a digest link asks before it acts and works once; the
pages speak the user's language (German here) unless the switch on the page says otherwise.

The test saves a screenshot of each page to var/screenshots/, or to $POSTSTELLE_SCREENSHOTS: `make
screenshots` runs it with docs/screenshots/, the pictures docs/operations.md shows.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from pipeline.cli.components import load_config
from pipeline.links import link_key, make_link_token
from pipeline.state.quarantine import read_quarantine_state
from schemas.events import epoch_from_iso
from tests.integration.conftest import REPO, Stack, new_test_id, send_data
from tests.integration.test_attachment import CASES, _b64, send_queued
from tests.integration.test_attachment import message as attachment_message
from tests.integration.test_quarantine_release import quarantine_on
from tests.integration.test_spam import LENA, MAX, SPAM_BODY, SPAM_SUBJECT, delivered, message

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(os.environ.get("POSTSTELLE_SCREENSHOTS") or REPO / "var" / "screenshots")
PASSWORDS = {LENA: "Lena2026!", MAX: "Max2026!", "it.admin@school.test": "Admin2026!"}


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver: apt-get install chromium chromium-driver "
                    "(deploy/local/install-debian-packages.sh, run by make test)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--lang=en"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def lena_quarantine(stack: Stack):
    quarantine_on(stack, LENA)
    yield
    stack.cli("user", "reset", LENA, check=False)


class Portal:
    """The browser on the stack's portal."""

    def __init__(self, stack: Stack, driver) -> None:
        self.stack, self.driver = stack, driver
        self.url = f"http://127.0.0.1:{stack.env['POSTSTELLE_WEB__PORT']}"

    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def get(self, path: str) -> str:
        self.driver.get(self.url + path)
        return self.driver.page_source

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def sign_in(self, address: str, shot: str = "", lang: str | None = "en") -> None:
        """Sign in; with `lang`, press that language on the sign-in page first: it holds for the session,
        over the user's own setting (the site's: German)."""
        self.driver.delete_all_cookies()
        self.get("/login")
        if lang:
            self.click(f"#lang-{lang}")
        self.css("#login").send_keys(address)
        self.css("#password").send_keys(PASSWORDS[address])
        if shot:
            self.shot(shot)
        self.css("#sign-in").click()
        assert address in self.css("header .who").text

    def click(self, selector: str) -> str:
        """Press a button that sends a form, and wait for the page it leads to (the old one going stale)."""
        from selenium.webdriver.support.expected_conditions import staleness_of
        from selenium.webdriver.support.wait import WebDriverWait
        old = self.css("html")
        self.css(selector).click()
        WebDriverWait(self.driver, 10).until(staleness_of(old))
        return self.driver.page_source

    def flash(self) -> str:
        return self.css(".flash").text

    def wait_listed(self, entry: str, path: str = "/quarantine") -> None:
        self.stack.wait_for(lambda: f"/{entry}" in self.get(path), timeout=30, what=f"entry {entry} on {path}")

    def post_as_browser(self, path: str, page: str) -> httpx.Response:
        """A POST with the browser's session and a CSRF token from `page` (what a crafted form would send),
        asking for English as the browser does."""
        token = re.search(r'name="csrf" value="([^"]+)"', self.get(page)).group(1)
        cookies = {c["name"]: c["value"] for c in self.driver.get_cookies()}
        return httpx.post(self.url + path, data={"csrf": token}, cookies=cookies, follow_redirects=False,
                          headers={"Accept-Language": "en"})


def entries_of(stack: Stack, message_id: str) -> list:
    settings = load_config(environ=stack.env)

    def found():
        return asyncio.run(read_quarantine_state(settings)).by_message(message_id)

    return stack.wait_for(found, timeout=60, what=f"the quarantine entry of {message_id}")


def test_a_user_releases_held_spam_and_another_user_cannot_see_or_release_it(stack, browser, lena_quarantine):
    portal = Portal(stack, browser)
    test_id = new_test_id()
    reply = send_data(stack, message(test_id, [LENA], SPAM_SUBJECT, SPAM_BODY), [LENA])
    assert reply.code == 250, reply
    [entry] = entries_of(stack, reply.message_id)

    portal.sign_in(MAX)  # someone else: not listed, 404 by URL, refused by a crafted POST
    assert f"/{entry.id}" not in portal.get("/quarantine?status=all")
    assert "Not found" in portal.get(f"/quarantine/{entry.id}") and SPAM_SUBJECT not in browser.page_source
    assert portal.post_as_browser(f"/quarantine/{entry.id}/release", page="/quarantine").status_code == 404
    assert portal.get("/admin") and "Not found" in browser.page_source

    portal.sign_in(LENA, shot="login")
    portal.wait_listed(entry.id)
    portal.shot("list")
    portal.css(f'a[href="/quarantine/{entry.id}"]').click()
    assert "Work from home and earn $5,000 a week!" in portal.css("#preview-text").text
    assert "winner@example.org" in browser.page_source
    portal.shot("entry")
    portal.click("#release")
    assert "Released" in portal.flash()
    raw = delivered(stack, LENA, test_id)
    assert raw.count(b"Work from home") == 1
    # the timeline from the event log: accepted, held, released, delivered (the store is a moment behind)
    stack.wait_for(lambda: f"Delivered to {LENA}" in portal.get(f"/quarantine/{entry.id}"), timeout=30,
                   what="the delivery in the entry's timeline")
    steps = [li.text for li in portal.all(".timeline li")]
    held = next(i for i, s in enumerate(steps) if "Held in quarantine by the spam check" in s)
    released = next(i for i, s in enumerate(steps) if f"Released for {LENA} by portal:{LENA}" in s)
    assert any("Accepted from" in s for s in steps[:held]) and held < released < len(steps) - 1
    assert not portal.all("#release") and "released" in portal.css("dd.status").text
    assert stack.test_ids(LENA)[test_id] == 1

    portal.get("/settings")
    assert portal.css("#quarantine").is_selected()
    portal.shot("settings")


def test_an_admin_approves_the_requested_release_of_a_held_exe(stack, browser):
    portal = Portal(stack, browser)
    headers, payload, _ = CASES["double_extension"]
    test_id = new_test_id()
    message_id = send_queued(stack, attachment_message(test_id, headers, payload))
    [entry] = entries_of(stack, message_id)
    assert entry.category == "attachment" and entry.needs_approval

    portal.sign_in(MAX)
    portal.wait_listed(entry.id)
    portal.get(f"/quarantine/{entry.id}")
    assert not portal.all("#release")  # only an admin may release an .exe
    portal.click("#request")
    assert "Release requested" in portal.flash()

    portal.sign_in("it.admin@school.test")
    portal.wait_listed(entry.id, "/admin")
    row = portal.css(f'#requests a[href="/admin/entry/{entry.id}"]').find_element("xpath", "./ancestor::tr")
    portal.shot("admin")
    row.find_element("css selector", "button.approve").click()
    assert "Approved" in portal.flash()

    def restored():
        return [raw for raw in stack.messages(MAX) if test_id.encode() in raw and _b64(payload)[:40] in raw]

    [raw] = stack.wait_for(restored, timeout=60, what="the original with the .exe restored")
    assert b"a.pdf.exe" in raw


def test_a_digest_link_asks_first_works_once_and_a_forged_one_is_refused(stack, browser, lena_quarantine):
    portal = Portal(stack, browser)
    browser.delete_all_cookies()
    test_id = new_test_id()
    reply = send_data(stack, message(test_id, [LENA], SPAM_SUBJECT, SPAM_BODY), [LENA])
    [entry] = entries_of(stack, reply.message_id)
    settings = load_config(environ=stack.env)
    token = make_link_token(link_key(settings), entry.id, "release", entry_expiry(entry))

    page = portal.get(f"/l/{token}")
    assert "release this message" in page and "winner@example.org" in page
    portal.shot("link")
    assert stack.test_ids(LENA)[test_id] == 0  # the GET did nothing
    assert "Released" in portal.click("#confirm")
    delivered(stack, LENA, test_id)
    assert "already released" in portal.get(f"/l/{token}").lower()
    again = portal.post_as_browser(f"/l/{token}", page="/login")  # the button pressed a second time
    assert again.status_code == 409 and "already released" in again.text.lower()

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert "not issued by this mail gateway" in portal.get(f"/l/{forged}")
    portal.shot("bad-link")
    time.sleep(3)
    assert stack.test_ids(LENA)[test_id] == 1  # delivered once


def entry_expiry(entry) -> float:
    return epoch_from_iso(entry.expires)


def test_the_docs_show_the_screenshots_the_browser_test_makes() -> None:
    shown = set(re.findall(r"screenshots/([a-z-]+)\.png", (REPO / "docs/operations.md").read_text()))
    assert shown == {"login", "list", "entry", "settings", "admin", "link", "bad-link"}
    assert {p.stem for p in (REPO / "docs" / "screenshots").glob("*.png")} == shown


def test_the_portal_speaks_the_users_language_and_the_switch_changes_it(stack, browser):
    portal = Portal(stack, browser)
    browser.delete_all_cookies()
    portal.get("/login")  # before sign-in: the browser's language (the browser asks for English)
    assert portal.css("html").get_attribute("lang") == "en" and portal.css("h1").text == "Sign in"
    portal.sign_in(MAX, lang=None)  # max set no language: the site's, German
    assert portal.css("html").get_attribute("lang") == "de" and portal.css("h1").text == "Meine Quarantäne"
    portal.click("#lang-en")  # the switch: back on the same page, in English, for the rest of the session
    assert browser.current_url.endswith("/quarantine") and portal.css("h1").text == "My quarantine"
    assert portal.get("/settings") and portal.css("html").get_attribute("lang") == "en"
    portal.click("#lang-de")
    assert portal.css("h1").text == "Einstellungen" and "Not found" not in portal.get("/quarantine/nope")
    assert portal.css("h1").text == "Nicht gefunden"
