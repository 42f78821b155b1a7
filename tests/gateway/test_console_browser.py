"""The web console end to end in headless Chromium: submit a job from the playground, watch its events arrive
live, see the final answer and the notification a background tab gets, and the dashboard's figures.

Needs Debian's `chromium` and `chromium-driver` (scripts/bootstrap.sh installs them when run as root) and
selenium (the dev extra). Screenshots are written to the test's tmp dir; their paths are printed."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import NewKey
from weir.devmesh import Mesh

pytestmark = pytest.mark.integration

# Records notifications instead of showing them, and lets the test say whether the tab is in the background.
_PAGE_SETUP = """
window.__notifications = [];
window.__hidden = false;
Object.defineProperty(Document.prototype, 'hidden', {configurable: true, get() { return window.__hidden; }});
class RecordedNotification {
  constructor(title, options) { window.__notifications.push({title, body: (options || {}).body || ''}); }
  static get permission() { return 'granted'; }
  static requestPermission() { return Promise.resolve('granted'); }
}
window.Notification = RecordedNotification;
"""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/lib/chromium/{name}")
                                            if Path(p).exists()), None)
        if found:
            return found
    pytest.fail(f"none of {names} is installed: run scripts/bootstrap.sh as root (apt-get install chromium "
                "chromium-driver) to run the console's browser test")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"profile.default_content_setting_values.notifications": 1})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _PAGE_SETUP})
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_console_playground_and_dashboard(mesh: Mesh, new_key: NewKey, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    key, _ = new_key()
    shots: list[Path] = []

    def shot(name: str) -> None:
        path = tmp_path / f"console-{len(shots) + 1}-{name}.png"
        browser.save_screenshot(str(path))
        shots.append(path)

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    # The answer streams slowly enough (60 ms a token) that the page shows it while it arrives.
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "pace:60", "count": 1, "model": "fake-small"})
    browser.get(f"{mesh.http}/console")
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.ID, "key-form").submit()
    _wait("the key to be taken", lambda: text("key-state") == f"key …{key[-4:]}")
    browser.find_element(By.CSS_SELECTOR, "#model option[value='fake-small']").click()
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("32")
    browser.find_element(By.ID, "prompt").send_keys(f"Write a line about rivers {uuid.uuid4().hex}")
    browser.execute_script("window.__hidden = true;")  # the user switched to another tab
    browser.find_element(By.ID, "submit").click()

    _wait("deltas while the job runs", lambda: text("job-status") == "running" and text("answer"))
    partial = text("answer")
    events_live = [e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#events li")]
    shot("streaming")
    assert "done" not in events_live and "delta" in events_live  # arrived live, before the end

    _wait("the job to finish", lambda: text("job-status") == "succeeded")
    shot("finished")
    job_id = text("job-id")
    events = [e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#events li")]
    assert events[:4] == ["queued", "started", "cache", "route"], events
    assert events[-2:] == ["usage", "done"], events
    doc = httpx.get(f"{mesh.base_url}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
    answer = text("answer")
    assert answer == doc["result"]["content"].strip() and answer.startswith(partial.strip()[:10])
    notes = _wait("the notification", lambda: browser.execute_script("return window.__notifications;"))
    assert notes == [{"title": "Weir job succeeded", "body": doc["result"]["content"][:120]}]

    # Dashboard: the ledger's figures for this key and the gateway's per-hop latency.
    browser.find_element(By.ID, "refresh").click()
    _wait("dashboard tiles", lambda: "cache hit rate" in text("tiles") and "tokens saved" in text("tiles"))
    rows = _wait("spend rows", lambda: browser.find_elements(By.CSS_SELECTOR, "#teams tbody tr"))
    cells = rows[0].find_elements(By.TAG_NAME, "td")
    assert int(cells[1].text) >= 1 and float(cells[3].text) > 0  # this key's request and its spend, from the ledger
    _wait("hop rows", lambda: browser.find_elements(By.CSS_SELECTOR, "#hops tbody tr"))
    assert text("dash-error") == ""
    browser.execute_script("document.getElementById('dashboard').scrollIntoView();")
    shot("dashboard")
    for path in shots:
        assert path.stat().st_size > 0
        print(f"screenshot: {path}")


def test_console_shows_a_provisional_preview_then_the_answer(mesh: Mesh, new_key: NewKey, browser: Any,
                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    key, _ = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "fake-small", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "How many kilometers are 25 miles?"}]}
    stored = httpx.post(f"{mesh.base_url}/chat/completions", json=body, headers=auth).json()
    _wait("the answer to be cached", lambda: httpx.post(f"{mesh.base_url}/chat/completions", json=body,
                                                         headers=auth).headers["x-weir-cache"] == "exact")
    # The real answer starts late, so the page shows the provisional preview for a while.
    httpx.post(f"{mesh.fake_url}/_fake/faults", json={"fault": "slow_first_token:1500", "count": 1,
                                                      "model": "fake-small"})

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    browser.get(f"{mesh.http}/console")
    browser.find_element(By.ID, "api-key").send_keys(key)
    browser.find_element(By.ID, "key-form").submit()
    browser.find_element(By.CSS_SELECTOR, "#model option[value='fake-small']").click()
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("16")
    browser.find_element(By.ID, "preview").click()
    browser.find_element(By.ID, "prompt").send_keys("How many kilometers are 26 miles?")
    browser.find_element(By.ID, "submit").click()

    answer = browser.find_element(By.ID, "answer")
    _wait("the preview", lambda: "provisional" in (answer.get_attribute("class") or ""))
    assert answer.text == stored["choices"][0]["message"]["content"]
    path = tmp_path / "console-preview.png"
    browser.save_screenshot(str(path))
    _wait("the job to finish", lambda: text("job-status") == "succeeded")
    assert "provisional" not in (answer.get_attribute("class") or "")
    assert answer.text != stored["choices"][0]["message"]["content"] and answer.text.startswith("[fake-small:")
    print(f"screenshot: {path}")
