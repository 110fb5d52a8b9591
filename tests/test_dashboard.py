"""The dashboard in a real headless Chromium: sign in, open the list, open a study, press
relaunch, see attempt 2 appear."""

from __future__ import annotations

import asyncio
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
    running_gateway,
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
                browser.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
                browser.find_element(By.CSS_SELECTOR, "form button").click()
                # The list: the study, dispatched, once the projection has caught up.
                link = wait.until(
                    expected_conditions.presence_of_element_located((By.LINK_TEXT, study))
                )
                row = link.find_element(By.XPATH, "./ancestor::tr")
                assert "dispatched" in row.text and "MAINPACS" in row.text
                browser.save_screenshot(str(screenshots / "dashboard-list.png"))
                link.click()
                wait.until(
                    expected_conditions.text_to_be_present_in_element((By.ID, "attempt"), "1")
                )
                assert "StudyComplete" in browser.find_element(By.ID, "timeline").text
                browser.find_element(By.ID, "relaunch").click()
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
