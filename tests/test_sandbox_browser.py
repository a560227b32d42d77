"""The sandbox page in a real browser: headless Chromium (Debian's
``chromium`` and ``chromium-driver``) drives the whole flow by typing and
clicking (and a canary on production, made to fail), and every assertion is
on what the page shows.

If Chromium or its driver is missing, the test tries ``apt-get install``
once (as root) and otherwise FAILS, saying why: a page that silently stops
being tested is worse than a red build.

One Chromium serves every test here (starting one takes about a second);
each test has a sandbox of its own, on its own port, so nothing a page
keeps carries over. ``-m "not browser"`` leaves these tests out locally.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from bot.sandbox import Sandbox, demo
from bot.sandbox.demo import STARTING_VERSION
from tests.conftest import QUICK_ROLLOUT, quick_sandbox

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROME_ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1400")
WAIT = 60  # seconds before a wait on the page gives up
POLL = 0.05  # seconds between two looks at the page while waiting (WebDriverWait's default is half a second)
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & <@U0ALICE>'
# the canary on production: through its stages in about a second, or held at its first step until the test acts
WATCHED_ROLLOUT = demo.Rollout(pause=120, bake=120, interval=0.25)

T = TypeVar("T")
_install_attempt: str | None = None


def _missing() -> list[str]:
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]


def _apt_install() -> str:
    """One attempt at `apt-get install chromium chromium-driver` (with an
    `apt-get update` and a second try); a transcript for the failure message."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available here, so no install was attempted."
    if os.geteuid() != 0:
        return "Not running as root, so `apt-get install` was not attempted."
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    transcript = []
    for command in (install, ["apt-get", "update"], install):
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False, capture_output=True,
                                  text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            transcript.append(f"$ {' '.join(command)}\n{exc}")
            break
        transcript.append(f"$ {' '.join(command)}  -> exit {done.returncode}\n{(done.stdout + done.stderr)[-1500:]}")
        if command is install and done.returncode == 0:
            break
    return "\n".join(transcript)


def ensure_browser() -> None:
    """Chromium and chromedriver are installed, or the test fails saying why (never skips)."""
    global _install_attempt
    if not _missing():
        return
    if _install_attempt is None:
        _install_attempt = _apt_install()
    if missing := _missing():
        pytest.fail(f"The sandbox's browser test needs Debian's {' and '.join(PACKAGES)} ({', '.join(missing)} "
                    f"missing). .ci/run installs them; locally run `apt-get install -y {' '.join(PACKAGES)}`.\n\n"
                    f"Install attempt:\n{_install_attempt}", pytrace=False)


class SandboxThread:
    """A sandbox on port 0, on an event loop of its own, so that the test's
    blocking WebDriver calls never stall it."""

    def __init__(self, tmp_path: Path, rollout: demo.Rollout = QUICK_ROLLOUT) -> None:
        self.tmp_path = tmp_path
        self.rollout = rollout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sandbox", daemon=True)
        self.sandbox: Sandbox | None = None

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=WAIT)

    def __enter__(self) -> Sandbox:
        self.thread.start()

        async def start() -> Sandbox:
            sandbox = quick_sandbox(self.tmp_path / "sandbox.db", self.tmp_path / "demo-state", self.rollout)
            return await sandbox.start()

        self.sandbox = self.run(start())
        return self.sandbox

    def __exit__(self, *exc: object) -> None:
        if self.sandbox is not None:
            self.run(self.sandbox.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=WAIT)
        self.loop.close()


@pytest.fixture
def rollout() -> demo.Rollout:
    """The pace of the sandbox's canary (a test may parametrize it)."""
    return QUICK_ROLLOUT


@pytest.fixture
def sandbox(tmp_path: Path, rollout: demo.Rollout) -> Iterator[SandboxThread]:
    running = SandboxThread(tmp_path, rollout)
    with running:
        yield running


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    ensure_browser()
    options = webdriver.ChromeOptions()
    for argument in CHROME_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver, sandbox: SandboxThread) -> Iterator[WebDriver]:
    """The shared Chromium, its console read empty, on a blank page again
    before this test's sandbox stops (so no page polls a stopped sandbox)."""
    chromium.get_log("browser")  # what an earlier test left in the console is not this test's
    try:
        yield chromium
    finally:
        chromium.get("about:blank")


# -- what a person does and sees -------------------------------------------------------------

def wait_until(driver: WebDriver, condition: Callable[[WebDriver], T], what: str) -> T:
    """Wait (on the page, never by sleeping) until ``condition`` holds; the page
    redraws as news arrives, so a vanished element is only a reason to look again."""
    return WebDriverWait(driver, WAIT, poll_frequency=POLL,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, f"the page never showed {what}")


def message(driver: WebDriver, header: str) -> WebElement | None:
    """The channel message headed ``header`` (the newest, if several)."""
    found = driver.find_elements(By.XPATH, f"//article[@data-ts][.//div[@class='bk-header' and "
                                           f"normalize-space()='{header}']]")
    return found[-1] if found else None


def text_of(driver: WebDriver, header: str, *needles: str) -> Callable[[WebDriver], str | None]:
    """A condition: the text of the message headed ``header``, once it shows
    every one of ``needles`` (read at once: a message measured every moment
    is redrawn as often, so an element kept for later may be gone)."""
    def check(_: WebDriver) -> str | None:
        found = message(driver, header)
        text = found.text if found is not None else ""
        return text if text and all(needle in text for needle in needles) else None
    return check


def button_labels(driver: WebDriver, header: str) -> list[str]:
    found = message(driver, header)
    return [button.text for button in found.find_elements(By.CSS_SELECTOR, "button[data-control]")] if found else []


def showing(driver: WebDriver, header: str, text: str) -> Callable[[WebDriver], WebElement | None]:
    def check(_: WebDriver) -> WebElement | None:
        found = message(driver, header)
        return found if found is not None and text in found.text else None
    return check


def type_command(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "command")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait_until(driver, lambda d: d.find_element(By.ID, "command").get_attribute("value") == "", "the command sent")


def become(driver: WebDriver, name: str) -> None:
    driver.find_element(By.XPATH, f"//label[contains(@class,'person')][.//span[@class='person-name' and "
                                  f"normalize-space()='{name}']]").click()
    wait_until(driver, lambda d: d.find_element(By.ID, "speaking-as").text.startswith(f"You are {name}"),
               f"that you are {name}")


def click_button(driver: WebDriver, header: str, label: str) -> None:
    def press(_: WebDriver) -> bool:
        found = message(driver, header)
        buttons = found.find_elements(By.XPATH, f".//button[normalize-space()='{label}']") if found else []
        if buttons:
            buttons[-1].click()
        return bool(buttons)
    wait_until(driver, press, f"a {label!r} button on {header!r}")


def tick_every_item(driver: WebDriver, header: str, count: int) -> None:
    def tick(_: WebDriver) -> bool:
        found = message(driver, header)
        if found is None:
            return False
        if f"{count} of {count} ticked" in found.text:
            return True
        boxes = [box for box in found.find_elements(By.CSS_SELECTOR, "input[type=checkbox]") if not box.is_selected()]
        if boxes:
            boxes[0].click()  # ticking twice is harmless: Slipway records a tick once
        return False
    wait_until(driver, tick, f"{count} of {count} checklist items ticked on {header!r}")


def running_version(driver: WebDriver, environment: str) -> str:
    return driver.find_element(By.XPATH, f"//table[@id='running']//tr[th[contains(., '{environment}')]]/td").text


def thread_reply(driver: WebDriver, header: str, text: str) -> str | None:
    """The text of the reply that says ``text`` in the thread of the message
    headed ``header``, opening the thread first if it is folded."""
    found = message(driver, header)
    if found is None:
        return None
    toggle = found.find_elements(By.CSS_SELECTOR, ".thread-toggle[aria-expanded='false']")
    if toggle:
        toggle[0].click()
        return None
    return next((reply.text for reply in found.find_elements(By.CSS_SELECTOR, ".replies .reply")
                 if text in reply.text), None)


def console_errors(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


# -- the tests -----------------------------------------------------------------------------

def test_the_whole_flow_in_a_real_browser(sandbox: SandboxThread, browser: WebDriver) -> None:
    browser.get(sandbox.sandbox.url + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "speaking-as").text == "You are Dana (developer)",
               "Dana as the person typing")
    assert running_version(browser, "production") == STARTING_VERSION

    type_command(browser, "/deploy demo 1.0.0 staging")
    wait_until(browser, lambda d: "needs no approval" in d.find_element(By.CSS_SELECTOR, ".ephemeral").text,
               "the ephemeral answer to the command")
    wait_until(browser, showing(browser, "Deploy demo 1.0.0 to staging", "Succeeded"), "staging succeeded")
    wait_until(browser, lambda d: running_version(d, "staging") == "1.0.0", "1.0.0 running on staging")

    production = "Deploy demo 1.0.0 to production"
    type_command(browser, "/deploy demo 1.0.0 production")
    wait_until(browser, showing(browser, production, "Awaiting approval"), "the production request")
    tick_every_item(browser, production, 3)

    become(browser, "Alice")
    assert not browser.find_elements(By.CSS_SELECTOR, ".ephemeral"), "Dana's ephemerals are hers alone"
    click_button(browser, production, "Approve")
    wait_until(browser, showing(browser, production, "Approvals: 1 of 2 (@Alice)"), "Alice's approval")
    become(browser, "Bob")
    click_button(browser, production, "Approve")
    deployed = wait_until(browser, showing(browser, production, "Succeeded"), "production succeeded")
    assert "Verification: 1 of 1 check(s) passed" in deployed.text
    wait_until(browser, lambda d: running_version(d, "production") == "1.0.0", "1.0.0 running on production")

    browser.find_element(By.ID, "simulate-alert").click()
    alert = wait_until(browser, lambda d: next((reply for reply in message(d, production).find_elements(
        By.CSS_SELECTOR, ".replies .reply") if "PAGE" in reply.text), None), "the alert in the deploy's thread")
    assert "demo" in alert.text and "@sre" in alert.text and "<!subteam" not in alert.text

    alert.find_element(By.XPATH, f".//button[normalize-space()='Roll back to {STARTING_VERSION}']").click()
    dialog = wait_until(browser, lambda d: d.find_element(By.ID, "confirm") if d.find_element(
        By.ID, "confirm").is_displayed() else None, "the confirmation dialog")
    assert "Roll back now?" in dialog.text and f"demo production: 1.0.0 → {STARTING_VERSION}" in dialog.text
    dialog.find_element(By.ID, "confirm-ok").click()

    rolled_back = f"Deploy demo {STARTING_VERSION} to production"
    wait_until(browser, showing(browser, rolled_back, "Succeeded"), "the rollback succeeded")
    wait_until(browser, lambda d: running_version(d, "production") == STARTING_VERSION,
               f"{STARTING_VERSION} running on production again")
    wait_until(browser, showing(browser, production, "Rolled back"), "the undone deploy marked rolled back")
    assert console_errors(browser) == []

    ActionChains(browser).move_to_element(browser.find_element(By.CLASS_NAME, "workspace")).perform()  # no hover
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "sandbox-final.png"))


@pytest.mark.parametrize("rollout", [WATCHED_ROLLOUT], ids=["watched"])
def test_a_canary_made_to_fail_is_aborted(sandbox: SandboxThread, browser: WebDriver) -> None:
    """Production takes the demo as a canary; "Make the canary fail" raises
    its error rate, and the page shows what Slack would: the failed
    measurement in the thread, the abort, the stable version serving, the lock."""
    browser.get(sandbox.sandbox.url + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "speaking-as").text == "You are Dana (developer)", "Dana")
    type_command(browser, "/deploy demo 1.0.0 staging")
    wait_until(browser, showing(browser, "Deploy demo 1.0.0 to staging", "Succeeded"), "staging succeeded")

    production = "Deploy demo 1.0.0 to production"
    type_command(browser, "/deploy demo 1.0.0 production")
    tick_every_item(browser, production, 3)
    become(browser, "Alice")
    click_button(browser, production, "Approve")
    wait_until(browser, showing(browser, production, "Approvals: 1 of 2 (@Alice)"), "Alice's approval")
    become(browser, "Bob")
    click_button(browser, production, "Approve")

    wait_until(browser, text_of(browser, production, "Rollout (canary): 10% ⏳ (analysing",
                                "→ 50% → 100% → bake", "✅ error_rate 0.005 (stable 0.004"),
               "the canary's first stage, measured")
    wait_until(browser, lambda d: {"Promote 10%", "Pause", "Abort"} <= set(button_labels(d, production)),
               "the rollout's buttons")
    wait_until(browser, lambda d: running_version(d, "production") == f"{STARTING_VERSION}\ncanary 1.0.0 · 10%",
               "the canary beside the stable version in the sidebar")

    browser.find_element(By.ID, "fail-canary").click()
    wait_until(browser, lambda d: "now fails 20%" in d.find_element(By.ID, "toast").text, "the button's answer")
    wait_until(browser, text_of(browser, production, "Failed — aborted at 10%", "10% ⏹ → 50% → 100% → bake",
                                "nothing to roll back"), "the abort")
    wait_until(browser, lambda d: button_labels(d, production) == [],
               "no Rollback, Promote or Abort on the aborted canary: the stable version kept serving")
    evidence = wait_until(browser, lambda d: thread_reply(d, production, "10%: error_rate 0.2 >"),
                          "the failed measurement in the thread")
    assert "❌" in evidence and "2× stable 0.004" in evidence
    wait_until(browser, lambda d: thread_reply(d, production, "Aborting at 10%"), "the abort in the thread")
    wait_until(browser, lambda d: running_version(d, "production") == STARTING_VERSION,
               f"{STARTING_VERSION} alone on production again")

    type_command(browser, "/deploy locks demo")
    locks = wait_until(browser, lambda d: next((m.text for m in d.find_elements(By.CSS_SELECTOR, ".ephemeral")
                                                if "Locks" in m.text), None), "the locks")
    assert "demo on production: locked by" in locks and "1.0.0 aborted at 10%" in locks
    assert console_errors(browser) == []

    ActionChains(browser).move_to_element(browser.find_element(By.CLASS_NAME, "workspace")).perform()  # no hover
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", message(browser, production))
    browser.save_screenshot(str(ARTIFACTS / "sandbox-canary-aborted.png"))


def test_hostile_text_is_shown_as_text(sandbox: SandboxThread, browser: WebDriver) -> None:
    browser.get(sandbox.sandbox.url + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "speaking-as").text.startswith("You are"), "the page")
    sandbox.run(sandbox.sandbox.post_alert({
        "id": "hostile", "service": "demo", "environment": "production", "metric": "error_rate",
        "value": 0.5, "baseline": 0.01, "summary": HOSTILE}))
    type_command(browser, '/deploy <img src=x onerror="window.pwned = 3"> 1.0.0')

    shown = wait_until(browser, lambda d: next((m for m in d.find_elements(By.CSS_SELECTOR, "article.message")
                                                if "window.pwned = 1" in m.text), None), "the hostile alert")
    assert "<script>window.pwned = 1</script>" in shown.text
    assert "& <@U0ALICE>" in shown.text, "a monitor's text cannot mention anyone"
    wait_until(browser, lambda d: "onerror" in d.find_element(By.CSS_SELECTOR, ".ephemeral").text,
               "the refusal of the hostile command")
    assert browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
    assert browser.execute_script("return window.pwned === undefined")
    assert console_errors(browser) == []


def test_direct_messages_and_status_read_as_in_slack(sandbox: SandboxThread, browser: WebDriver) -> None:
    """Slipway's DMs (a channel of their own in Slack) are shown to their
    person, marked as such; ``/deploy status`` times read as Slack's ``{ago}``."""
    browser.get(sandbox.sandbox.url + "/")
    wait_until(browser, lambda d: d.find_element(By.ID, "speaking-as").text == "You are Dana (developer)", "Dana")
    type_command(browser, "/deploy demo 1.0.0 staging")
    dm = wait_until(browser, lambda d: next((m for m in d.find_elements(By.CSS_SELECTOR, "article.message.direct")
                                             if "1.0.0 to staging) succeeded" in m.text), None), "Dana's DM")
    assert "Direct message to you" in dm.text and "Open the deploy message" in dm.text
    dm.find_element(By.LINK_TEXT, "Open the deploy message").click()  # a permalink: to the message on this page
    wait_until(browser, lambda d: "flash" in (message(d, "Deploy demo 1.0.0 to staging").get_attribute("class")),
               "the deploy message the DM links to")
    assert len(browser.window_handles) == 1, "no tab opened on a workspace that does not exist"

    become(browser, "Alice")
    assert not browser.find_elements(By.CSS_SELECTOR, "article.direct"), "Dana's DMs are hers alone"

    browser.find_element(By.XPATH, "//button[@data-fill='/deploy status']").click()  # the page suggests it
    browser.find_element(By.ID, "command").send_keys(Keys.ENTER)
    status = wait_until(browser, lambda d: next((m for m in d.find_elements(By.CSS_SELECTOR, ".ephemeral")
                                                 if "Deploy status" in m.text), None), "the status matrix")
    assert "1.0.0 by @Dana" in status.text and "{ago}" not in status.text
    assert " ago" in status.text or "just now" in status.text
    assert browser.find_elements(By.XPATH, "//button[@data-fill='/deploy unlock demo production']"), \
        "after a rollback, the page says how to lift the lock it leaves"
    assert console_errors(browser) == []
