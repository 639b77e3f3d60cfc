"""The demo bet slip in real headless Chromium: pending (amber), then solid green or red."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from producer.client import Producer
from producer.contract import new_deposit
from tests.conftest import Procs, wait_for
from tests.e2e.gateway_support import start_pipeline
from tests.support import drained

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
GREEN = "rgb(46, 125, 50)"
RED = "rgb(198, 40, 40)"
AMBER = "rgb(255, 243, 205)"


def open_slip(pw, base_url: str, user: int):
    """Debian's Chromium on the demo page, connected as ``user``."""
    from playwright.sync_api import expect

    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.goto(base_url + "/")
    page.select_option("#user", str(user))
    expect(page.locator("#conn")).to_contain_text(f"user {user}", timeout=10_000)
    return browser, page


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="make test installs Debian chromium")
def test_bet_slip_turns_green_when_confirmed_and_red_with_a_reason(
        procs: Procs, producer: Producer, redis_client, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    producer.submit(new_deposit(2, 1_000))  # user 2 has 10.00
    pipe = start_pipeline(procs, demo=True)
    wait_for(lambda: drained(redis_client), 30, "the deposit to be committed")
    with sync_playwright() as pw:
        browser, page = open_slip(pw, pipe.http, user=2)
        expect(page.locator("#balance")).to_have_text("10.00")

        page.fill("#stake", "300")
        page.click("#place")
        slip = page.locator(".slip").first
        expect(slip).to_have_attribute("data-status", "accepted", timeout=15_000)
        expect(slip).to_have_css("background-color", GREEN)
        expect(slip).to_contain_text("Confirmed")
        expect(page.locator("#balance")).to_have_text("7.00")
        page.screenshot(path=str(tmp_path / "bet-confirmed.png"))

        page.fill("#stake", "5000")  # more than the 7.00 left
        page.click("#place")
        slip = page.locator(".slip").first
        expect(slip).to_have_attribute("data-status", "rejected", timeout=15_000)
        expect(slip).to_have_css("background-color", RED)
        expect(slip).to_contain_text("Insufficient funds")
        page.screenshot(path=str(tmp_path / "bet-rejected.png"))
        browser.close()
    assert (tmp_path / "bet-confirmed.png").stat().st_size > 0


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="make test installs Debian chromium")
def test_bet_slip_shows_pending_until_the_confirmation_arrives(
        procs: Procs, producer: Producer, redis_client, tmp_path: Path) -> None:
    """With the confirmer stopped, a placed bet stays amber; it turns green once it runs."""
    from playwright.sync_api import expect, sync_playwright

    producer.submit(new_deposit(3, 1_000))
    pipe = start_pipeline(procs, demo=True)
    confirmer = next(p for p in procs.started if p.args[-1] == "confirmer")
    wait_for(lambda: drained(redis_client), 30, "the deposit to be committed")
    with sync_playwright() as pw:
        browser, page = open_slip(pw, pipe.http, user=3)
        confirmer.terminate()
        confirmer.wait(20)
        page.click("#place")
        slip = page.locator(".slip").first
        expect(slip).to_have_attribute("data-status", "pending")
        expect(slip).to_have_css("background-color", AMBER)
        wait_for(lambda: drained(redis_client), 30, "the bet to be committed (not confirmed)")
        expect(slip).to_have_attribute("data-status", "pending")  # committed, not yet confirmed
        page.screenshot(path=str(tmp_path / "bet-pending.png"))
        procs.start("confirmer")
        expect(slip).to_have_attribute("data-status", "accepted", timeout=30_000)
        expect(slip).to_have_css("background-color", GREEN)
        browser.close()
