"""The demo bet slip in real headless Chromium: pending (amber), then solid green or red."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from producer.client import Producer
from producer.contract import new_deposit, new_settle, new_settle_market, new_suspend_market
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

        page.fill("#stake", "3.00")  # major units, as every amount on the page
        page.click("#place")
        slip = page.locator(".slip").first
        expect(slip).to_have_attribute("data-status", "accepted", timeout=15_000)
        expect(slip).to_have_css("background-color", GREEN)
        expect(slip).to_contain_text("Confirmed")
        expect(slip).to_contain_text("3.00 on home")
        expect(page.locator("#balance")).to_have_text("7.00")
        page.screenshot(path=str(tmp_path / "bet-confirmed.png"))

        page.fill("#stake", "50.00")  # more than the 7.00 left
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


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="make test installs Debian chromium")
def test_bet_slip_shows_a_bets_whole_life_and_greys_out_a_suspended_market(
        procs: Procs, producer: Producer, redis_client, tmp_path: Path) -> None:
    """Confirmed, then won / lost / void with the payout; a suspended market greyed out and
    a bet on it refused in words."""
    from playwright.sync_api import expect, sync_playwright

    producer.submit(new_deposit(4, 1_000))  # 10.00
    pipe = start_pipeline(procs, demo=True)
    wait_for(lambda: drained(redis_client), 30, "the deposit to be committed")
    with sync_playwright() as pw:
        browser, page = open_slip(pw, pipe.http, user=4)
        slips = {}
        for placed, (market, selection) in enumerate((("final", "home"), ("cup", "away"),
                                                      ("semi", "draw"))):
            page.fill("#market", market)
            page.select_option("#selection", selection)
            page.fill("#stake", "2.00")
            page.click("#place")
            expect(page.locator(".slip")).to_have_count(placed + 1)  # this bet's slip is first
            slip = page.locator(".slip").first
            expect(slip).to_have_attribute("data-status", "accepted", timeout=15_000)
            slips[market] = page.locator(f'[data-id="{slip.get_attribute("data-id")}"]')
        expect(page.locator("#balance")).to_have_text("4.00")

        producer.submit_many([new_settle_market("final", {"home": "won"}),
                              new_settle_market("cup", {"home": "won"}, others="lost")])
        expect(slips["final"]).to_have_attribute("data-status", "won", timeout=15_000)
        expect(slips["final"]).to_contain_text("Won: 2.00 on home (final) @ 2.50 — paid 5.00")
        expect(slips["cup"]).to_have_attribute("data-status", "lost", timeout=15_000)
        expect(slips["cup"]).to_contain_text("Lost")
        producer.submit(new_settle(4, slips["semi"].get_attribute("data-id"), "void"))
        expect(slips["semi"]).to_have_attribute("data-status", "void", timeout=15_000)
        expect(slips["semi"]).to_contain_text("Void: 2.00 on draw (semi) @ 2.50 — stake "
                                              "returned 2.00")
        expect(page.locator("#balance")).to_have_text("11.00")  # 4.00 + 5.00 + 2.00

        producer.submit(new_suspend_market("derby"))
        page.fill("#market", "derby")
        expect(page.locator("#new-bet")).to_have_attribute("data-market", "suspended",
                                                          timeout=15_000)
        expect(page.locator("#market-state")).to_have_text("suspended")
        expect(page.locator("#market")).to_have_css("opacity", "0.45")
        page.click("#place")
        expect(page.locator(".slip")).to_have_count(4)
        refused = page.locator(".slip").first
        expect(refused).to_have_attribute("data-status", "rejected", timeout=15_000)
        expect(refused).to_contain_text("Market suspended")
        page.fill("#market", "final")  # resulted: closed
        expect(page.locator("#market-state")).to_have_text("closed", timeout=15_000)
        page.screenshot(path=str(tmp_path / "bet-life.png"))
        browser.close()
