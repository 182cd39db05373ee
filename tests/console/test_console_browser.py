"""The console in a real browser: headless Chromium driven by Selenium, against a real cluster.

Needs Debian's ``chromium`` and ``chromium-driver`` and Selenium from PyPI
(the ``test`` extra). Skipped without them, failed under CI. Every page is
saved as a screenshot under ``test-artifacts/console/`` (or
``$MHAFAIL_ARTIFACTS/console/``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_lab import OPERATOR, READER, Lab, make_lab

from mhafail.config import ConfigRepository
from mhafail.testing import ZooKeeperServer
from mhafail.testing.plugin import skip_or_fail

pytestmark = pytest.mark.zookeeper

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
ARTIFACTS = (
    Path(
        os.environ.get("MHAFAIL_ARTIFACTS")
        or Path(__file__).resolve().parents[2] / "test-artifacts"
    )
    / "console"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's) driven by Selenium; quit after the module."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("needs Selenium: pip install 'mhafail[test]'")
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        skip_or_fail(
            "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager must not phone home
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def blab(zookeeper: ZooKeeperServer, tmp_path: Path) -> Iterator[Lab]:
    """A fresh cluster and console for one browser test."""
    with make_lab(zookeeper.address, tmp_path) as made:
        yield made


def wait(driver: Any, check: Any, timeout: float = 15.0, what: str = "") -> Any:
    """WebDriverWait with a message."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(check, what)


def css(driver: Any, selector: str) -> list[Any]:
    """Every element matching ``selector``."""
    return driver.find_elements("css selector", selector)


def shot(driver: Any, name: str) -> None:
    """Save a screenshot of the page as an artifact."""
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def login(driver: Any, lab: Lab, user: str, password: str) -> None:
    """Open the console and log in through the form."""
    driver.delete_all_cookies()
    driver.get(lab.console.url)
    wait(driver, lambda d: css(d, "#login-user") and css(d, "#login-user")[0].is_displayed(),
         what="the login form")  # fmt: skip
    css(driver, "#login-user")[0].send_keys(user)
    css(driver, "#login-password")[0].send_keys(password)
    css(driver, "#login-submit")[0].click()
    wait(driver, lambda d: css(d, "#page-cluster")[0].is_displayed(), what="the cluster page")


def go(driver: Any, page: str) -> None:
    """Click a navigation link."""
    driver.find_element("css selector", f"#nav a[data-page='{page}']").click()
    wait(driver, lambda d: css(d, f"#page-{page}")[0].is_displayed(), what=f"page {page}")


def retry(action: Any, attempts: int = 20) -> Any:
    """Run ``action`` again when the page re-rendered the element under it (stale)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(attempts - 1):
        try:
            return action()
        except StaleElementReferenceException:
            continue
    return action()


def rows(driver: Any, selector: str) -> list[Any]:
    """Rows of a table body."""
    return css(driver, f"{selector} tbody tr")


def test_operator_sees_members_moves_a_vip_queries_and_sees_a_node_die(
    browser: Any, blab: Lab
) -> None:
    """Log in, see three members, move a VIP by clicking, run a CIDR query, see a killed node go."""
    driver = browser
    driver.get(blab.console.url)
    wait(driver, lambda d: css(d, "#login-user")[0].is_displayed(), what="the login form")
    shot(driver, "login")
    login(driver, blab, *OPERATOR)

    # Cluster: three members, each with a sampled lease.
    wait(driver, lambda d: len(rows(d, "#members")) == 3, what="three members")
    wait(driver, lambda d: all("connected" in r.text for r in rows(d, "#members")), what="leases")
    names = retry(lambda: [r.get_attribute("data-node") for r in rows(driver, "#members")])
    assert names == ["mta1", "mta2", "mta3"]
    shot(driver, "cluster")

    # VIPs: move the first VIP to another node by clicking, and see the owner change.
    go(driver, "vips")
    wait(driver, lambda d: len(rows(d, "#vips")) == 2, what="two VIPs")
    address, owner = retry(lambda: (
        rows(driver, "#vips")[0].get_attribute("data-vip"),
        css(driver, "#vips tbody tr td.owner")[0].text,
    ))  # fmt: skip
    vip_row = f"#vips tr[data-vip='{address}']"
    target = retry(
        lambda: css(driver, f"{vip_row} select.move-target option")[0].get_attribute("value")
    )
    assert target != owner

    def choose() -> None:
        from selenium.webdriver.support.ui import Select

        Select(css(driver, f"{vip_row} select.move-target")[0]).select_by_value(target)

    retry(choose)  # the choice is kept across the page's refreshes
    retry(lambda: css(driver, f"{vip_row} button.move")[0].click())  # noqa: PLW0108

    def owner_is_target(d: Any) -> bool:
        cells = css(d, f"#vips tr[data-vip='{address}'] td.owner")
        return bool(cells) and cells[0].text == target

    wait(driver, owner_is_target, 20, f"{address} owned by {target}")
    wait(driver, lambda d: "ok" in css(d, "#vip-action")[0].text, what="the move's reply")
    shot(driver, "vips")

    # Config: publish two commits, see the head and every node applied.
    repo = ConfigRepository(
        name="mta", base=blab.tmp / "mta1" / "config", node="mta1", coordinator=blab.coordinator
    )
    repo.commit(
        {"global/relay.conf": b"relay = off\n"}, message="relay off", author="Ann <a@x.org>"
    )
    head = repo.commit(
        {"global/relay.conf": b"relay = on\n"}, message="relay on", author="Ann <a@x.org>"
    )
    go(driver, "config")

    def applied(d: Any) -> bool:
        text = d.find_element("id", "config-repos").text
        return head.sha[:12] in text and "no drift" in text

    wait(driver, applied, 20, "head applied")
    shot(driver, "config")

    # Logs: the lag table and chart.
    go(driver, "logs")
    wait(driver, lambda d: len(rows(d, "#logs-table")) == 6, what="six lag rows")
    wait(driver, lambda d: css(d, "#logs-chart svg polyline"), what="lag lines in the chart")
    shot(driver, "logs")

    # Audit: a query shows a table and a chart; a typo shows where and what was expected.
    go(driver, "audit")
    box = css(driver, "#audit-query")[0]
    box.send_keys("show count for 198.18.0.0/16 in conn cidrsize 24 order by count")
    css(driver, "#audit-run")[0].click()
    wait(driver, lambda d: len(rows(d, "#audit-table")) == 4, what="four CIDR rows")
    first = retry(lambda: rows(driver, "#audit-table")[0].text)
    assert "198.18.5.0/24" in first and "40" in first
    assert css(driver, "#audit-chart svg rect")
    shot(driver, "audit")
    box.clear()
    box.send_keys("show count for 198.18.0.0/16 inn conn")
    css(driver, "#audit-run")[0].click()
    wait(driver, lambda d: css(d, "#audit-error")[0].is_displayed(), what="the syntax error")
    error = css(driver, "#audit-error")[0].text
    assert "position 29" in error and "^" in error and "'in'" in error
    assert not rows(driver, "#audit-table")
    shot(driver, "audit-error")

    # Commands: broadcast ping and see three replies arrive.
    go(driver, "commands")
    css(driver, "#cmd-name")[0].send_keys("ping")
    css(driver, "#cmd-send")[0].click()

    def replied(d: Any) -> bool:
        found = rows(d, "#cmd-replies")
        return len(found) == 3 and all("ok" in r.text for r in found)

    wait(driver, replied, 15, "three ok replies")
    wait(driver, lambda d: rows(d, "#cmd-history"), what="the history")
    shot(driver, "commands")

    # Kill a node: it disappears from the cluster page.
    go(driver, "cluster")
    blab.nodes["mta3"].kill()
    wait(driver, lambda d: [r.get_attribute("data-node") for r in rows(d, "#members")]
         == ["mta1", "mta2"], 20, "mta3 gone")  # fmt: skip
    shot(driver, "cluster-node-killed")


def test_reader_sees_pages_without_action_buttons(browser: Any, blab: Lab) -> None:
    """A reader logs in, sees the VIPs and members, and no move, drain or send controls."""
    driver = browser
    login(driver, blab, *READER)
    assert "reader" in css(driver, "#whoami")[0].text
    go(driver, "vips")
    wait(driver, lambda d: len(rows(d, "#vips")) == 2, what="two VIPs")
    wait(driver, lambda d: len(rows(d, "#drain")) == 3, what="three nodes")
    assert not css(driver, "button.move") and not css(driver, "select.move-target")
    assert not css(driver, "#drain button")
    shot(driver, "vips-reader")
    go(driver, "commands")
    assert not css(driver, "#cmd-form")[0].is_displayed()


def test_screenshots_for_the_docs() -> None:
    """The docs' screenshots exist (copied from the browser test's artifacts when they ran)."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "img"
    if ARTIFACTS.exists() and os.environ.get("MHAFAIL_UPDATE_DOC_SCREENSHOTS") == "1":
        docs.mkdir(exist_ok=True)
        for png in ARTIFACTS.glob("*.png"):
            shutil.copy(png, docs / f"console-{png.name}")
    for page in ("login", "cluster", "vips", "config", "logs", "audit", "audit-error", "commands"):
        assert (docs / f"console-{page}.png").is_file(), page
