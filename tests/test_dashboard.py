"""The dashboard in a real headless Chromium against the whole pipeline: sign in, a list that
refreshes itself, the health strip, a failed destination sent again, a filtered study
finished, a relaunch seen through to attempt 2. Screenshots go to PACSOR_SCREENSHOTS."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from pacsor.devtools.simulator import SimulatorSettings, running_simulator
from pacsor.domain import events as ev
from pacsor.jetstream.eventlog import EventLog
from tests.harness import (
    TOKEN,
    ReceivingPacs,
    gateway_settings,
    images,
    of_type,
    running_gateway,
    send_datasets,
    send_study,
    wait_for_event,
)
from tests.nats_server import NatsServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_TOKEN = "ward-pc-token-0123456789"

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    if os.environ.get("CI"):
        raise RuntimeError("CI is set but chromium and chromium-driver are not installed")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


async def test_open_list_open_study_relaunch_see_attempt_2(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, browser: Any
) -> None:
    screenshots = Path(os.environ.get("PACSOR_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, _):
        settings = gateway_settings(nats_server.url, api_url, pacs, ADMIN_TOKEN=ADMIN_TOKEN)
        async with running_gateway(settings) as ready:
            study, _ = await send_study(settings, tmp_path / "study", 2)
            await wait_for_event(
                nc, study, lambda e: isinstance(e, ev.Dispatched) and e.attempt == 1
            )
            url = ready["admin_url"]
            # The list is not refreshed: let the read model catch up with the delivery first.
            last = (await EventLog(nc.jetstream()).history(study))[-1].sequence
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                caught_up = await http.get(
                    f"/studies/{study}",
                    params={"after": last},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert caught_up.json()["state"] == "dispatched"

            def drive() -> None:
                wait = WebDriverWait(browser, 60)
                browser.get(url + "/")  # not signed in: sent to the sign-in page
                assert browser.title.startswith("Sign in")
                browser.save_screenshot(str(screenshots / "dashboard-login.png"))
                browser.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
                browser.find_element(By.CSS_SELECTOR, "form button").click()
                # The list: the study, dispatched, once the projection has caught up.
                link = wait.until(
                    expected_conditions.presence_of_element_located(
                        (By.CSS_SELECTOR, f"a[href='/ui/studies/{study}']")
                    )
                )
                assert link.get_attribute("title") == study  # shown short, whole on hover
                row = link.find_element(By.XPATH, "./ancestor::tr")
                assert "dispatched" in row.text and "MAINPACS" in row.text
                browser.save_screenshot(str(screenshots / "dashboard-list.png"))
                link.click()
                wait.until(
                    expected_conditions.text_to_be_present_in_element((By.ID, "attempt"), "1")
                )
                assert "StudyComplete" in browser.find_element(By.ID, "timeline").text
                browser.find_element(By.ID, "relaunch").click()
                wait.until(expected_conditions.alert_is_present()).accept()
                # The page refreshes itself while the new attempt moves through.
                wait.until(
                    lambda b: (
                        b.find_element(By.ID, "attempt").text.startswith("2")
                        and b.find_element(By.ID, "study-state").text == "dispatched"
                    )
                )
                timeline = browser.find_element(By.ID, "timeline").text
                assert "RelaunchRequested" in timeline and "attempt 2" in timeline
                assert "Relaunch requested." in browser.page_source
                browser.save_screenshot(str(screenshots / "dashboard-study.png"))

            await asyncio.to_thread(drive)
    assert (screenshots / "dashboard-study.png").stat().st_size > 10_000


def signed_in(browser: Any, url: str) -> None:
    browser.get(url + "/")
    browser.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "studies"))


def row(browser: Any, uid: str) -> Any:
    found = browser.find_elements(By.CSS_SELECTOR, f"tr[data-uid='{uid}']")
    return found[0] if found else None


def row_state(browser: Any, uid: str) -> str:
    # Read in one script: the list may be swapped between two element look-ups.
    state: str = browser.execute_script(
        "const r = document.querySelector(`tr[data-uid='${arguments[0]}'] .state`);"
        "return r ? r.textContent : '';",
        uid,
    )
    return state


SCOUT_FILTER = json.dumps(
    [{"tag": {"group": "0008", "element": "1030"}, "pattern": "^SCOUT$", "should_match": False}]
)


async def test_the_day_of_an_operator(
    nc: Client, nats_server: NatsServer, tmp_path: Path, pacs: ReceivingPacs, browser: Any
) -> None:
    """A study arrives while the list is open; its delivery fails; "send again" delivers it;
    a study whose instances were all filtered out shows as finished."""
    screenshots = Path(os.environ.get("PACSOR_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    with running_simulator(SimulatorSettings(token=TOKEN, running_polls=1)) as (api_url, _):
        settings = gateway_settings(
            nats_server.url,
            api_url,
            pacs,
            ADMIN_TOKEN=ADMIN_TOKEN,
            DICOM_FILTERS=SCOUT_FILTER,
        )
        async with running_gateway(settings) as ready:
            url = ready["admin_url"]
            pacs.status = 0xC000  # the PACS refuses every object: a permanent failure
            await asyncio.to_thread(signed_in, browser, url)
            # The page as loaded: no study yet. A mark a reload would wipe out.
            browser.execute_script("window.notReloaded = true")
            study, _ = await send_study(settings, tmp_path / "study", 2)
            await wait_for_event(nc, study, of_type(ev.DispatchFailed))

            def list_refreshes_itself() -> None:
                wait = WebDriverWait(browser, 60)
                wait.until(lambda b: row_state(b, study) == "failed")
                assert browser.execute_script("return window.notReloaded") is True
                assert "MAINPACS" in row(browser, study).text
                health = browser.find_element(By.ID, "health").text
                assert "NATS" in health and "connected" in health
                assert "AI CORE DEFAULT" in health.upper() and "MAINPACS" in health
                assert "backlog" in browser.find_element(By.ID, "health-consumers").text
                copy = row(browser, study).find_element(By.CSS_SELECTOR, "button.copy")
                assert copy.get_attribute("data-copy") == study
                copy.click()
                wait.until(
                    lambda b: "copied" in b.find_element(By.CSS_SELECTOR, "button.copy").text
                )
                browser.find_element(By.CSS_SELECTOR, "#health-consumers summary").click()
                browser.save_screenshot(str(screenshots / "dashboard-list-failed.png"))

            await asyncio.to_thread(list_refreshes_itself)

            def send_again_delivers() -> None:
                wait = WebDriverWait(browser, 60)
                browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/studies/{study}']").click()
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "button.send-again"))
                # One clear state: the study failed, and so does the core whose delivery did.
                assert browser.find_element(By.ID, "study-state").text == "failed"
                assert browser.find_element(By.ID, "core-default").text == "failed"
                dest = browser.find_element(By.CSS_SELECTOR, "tr.dest-row")
                reason = dest.text.split("failed", 1)[1]
                assert pacs.destination not in reason  # named once, beside it
                steps = browser.find_element(By.ID, "steps").text
                assert "upload" in steps and "AI" in steps and "delivery" in steps
                browser.save_screenshot(str(screenshots / "dashboard-study-failed.png"))
                pacs.status = 0x0000  # the PACS is back
                browser.find_element(By.CSS_SELECTOR, "button.send-again").click()
                wait.until(
                    lambda b: (
                        b.find_element(By.ID, "study-state").text == "dispatched"
                        and "dispatched" in b.find_element(By.CSS_SELECTOR, "tr.dest-row").text
                    )
                )
                message = browser.find_element(By.ID, "message").text
                assert "Sending the results again to MAINPACS" in message
                assert "sent again 1 time" in browser.find_element(By.ID, "deliveries").text
                browser.save_screenshot(str(screenshots / "dashboard-study-sent-again.png"))
                # The original gateway's relaunch address, opened in the browser: it asks first.
                browser.get(f"{url}/relaunch/{study}")
                assert browser.find_element(By.ID, "confirm-relaunch").text == "Relaunch"
                browser.save_screenshot(str(screenshots / "dashboard-relaunch-confirm.png"))

            await asyncio.to_thread(send_again_delivers)
            replays = [
                r.event
                for r in await EventLog(nc.jetstream()).history(study)
                if isinstance(
                    r.event, ev.DispatchReplayRequested | ev.Dispatched | ev.RelaunchRequested
                )
            ]
            # No RelaunchRequested: opening /relaunch/{uid} changed nothing.
            assert [type(e).__name__ for e in replays] == ["DispatchReplayRequested", "Dispatched"]
            assert pacs.sop_uids(), "the PACS received the results when sent again"

            scout = await send_datasets(
                settings, tmp_path / "scout", images(2, StudyDescription="SCOUT")
            )
            await wait_for_event(nc, scout, of_type(ev.NothingToUpload))

            def filtered_study_is_finished() -> None:
                wait = WebDriverWait(browser, 60)
                browser.find_element(By.CSS_SELECTOR, "a[href='/']").click()
                wait.until(lambda b: row_state(b, scout) == "finished")
                assert "nothing to upload" in row(browser, scout).text
                browser.save_screenshot(str(screenshots / "dashboard-list.png"))
                browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/studies/{scout}']").click()
                wait.until(lambda b: b.find_element(By.ID, "study-state").text == "finished")
                assert "nothing to upload" in browser.page_source
                browser.save_screenshot(str(screenshots / "dashboard-study-filtered.png"))

            await asyncio.to_thread(filtered_study_is_finished)
