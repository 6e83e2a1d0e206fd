"""The dashboard, in headless Chromium (Debian's `chromium`), against the real processes.

A broker, the streams app, the analytics process and a gateway run; a tenant's traffic
in an A/B test (and another tenant's) goes onto the topics the stack uses, and lands
through the sink (`seeded` in conftest.py). The page is loaded with a tenant's key and
with the admin key; each of its charts says in `data-rendered` how many steps it drew
with data. Screenshots are kept in test-output/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.analytics.conftest import Seeded, Stack
from tests.conftest import ADMIN_KEY, OUTPUT, Gateway

# No fixture says it: `make test` installs chromium, `make test-fast` leaves these out.
pytestmark = pytest.mark.browser

BROWSER_BUDGET_MS = 30_000
TIME_SERIES = ("chart-requests", "chart-tokens", "chart-spend", "chart-errors", "chart-latency",
               "chart-ttft")
BREAKDOWNS = ("chart-models", "chart-keys")


# -- the browser --------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed (`make test` installs it: "
                    "apt-get install -y chromium)")
    return path


def _browse(url: str, profile: Path, *mode: str) -> str:
    r = subprocess.run(
        [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
         "--window-size=1400,2400", f"--virtual-time-budget={BROWSER_BUDGET_MS}", *mode, url],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


class _Page(HTMLParser):
    """The dumped DOM's body state, status line, chart elements and visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ""
        self.charts: dict[str, dict[str, str]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.state = a.get("data-state", "")
        if "chart" in a.get("class", "").split() and a.get("id"):
            self.charts[a["id"]] = a

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def load(gw: Gateway, key: str, name: str, tmp_path: Path) -> _Page:
    """Load /dashboard with `key`, save a screenshot, and return what the page rendered."""
    url = f"{gw.url}/dashboard#key={key}"
    page = _Page()
    page.feed(_browse(url, tmp_path / f"{name}-dom", "--dump-dom"))
    shot = OUTPUT / f"dashboard-{name}.png"
    shot.unlink(missing_ok=True)
    _browse(url, tmp_path / f"{name}-shot", f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot was saved"
    return page


def rendered(page: _Page, chart: str) -> int:
    assert chart in page.charts, f"no {chart} on the page: {sorted(page.charts)}"
    return int(page.charts[chart].get("data-rendered") or 0)


def _status(page: _Page) -> str:
    return re.sub(r"\s+", " ", " ".join(page.text))[:600]


# -- the tests ----------------------------------------------------------------------------


def test_the_page_and_its_chart_library_are_served(gateway_stack: Stack) -> None:
    gw = gateway_stack.gateway
    r = httpx.get(f"{gw.url}/dashboard", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for src in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', r.text):
        asset = httpx.get(gw.url + src, timeout=10)
        assert asset.status_code == 200, src
        assert len(asset.content) > 500, src
    assert "uPlot" in httpx.get(f"{gw.url}/dashboard/static/vendor/uPlot.iife.min.js").text


def test_a_tenant_key_sees_its_charts_drawn_with_data(gateway_stack: Stack, seeded: Seeded,
                                                      tmp_path: Path) -> None:
    page = load(gateway_stack.gateway, seeded.secret, "tenant", tmp_path)
    assert page.state == "ready", _status(page)
    for chart in (*TIME_SERIES, *BREAKDOWNS):
        assert rendered(page, chart) > 0, f"{chart} drew no data: {page.charts.get(chart)}"
    # The default view is the last 24 hours per hour; the traffic spans the last three.
    requests = page.charts["chart-requests"]
    assert int(requests["data-points"]) in (24, 25)
    assert 3 <= rendered(page, "chart-requests") <= 5
    assert rendered(page, "chart-models") == 2
    assert rendered(page, "chart-keys") == 2
    text = " ".join(page.text)
    assert seeded.key_id in text
    assert seeded.ours.tenant in text
    # Nothing of the other tenant's, and no A/B tests for a tenant's key.
    their_key = next(e.key_id for _, e in seeded.theirs.events)  # type: ignore[union-attr]
    assert seeded.theirs.tenant not in text and their_key not in text
    assert "listed for the admin key" in text
    # The cache: its tiles, and hits and net savings per model and per key in the tables.
    e = seeded.ours.expected
    words = re.sub(r"\s+", " ", text)
    assert f"{100 * e.cache_hits / e.cache_lookups:.2f}% cache hit rate" in words
    assert f"${e.savings_micros / 1e6:.4f} cache savings" in words
    assert "cache hits" in text and "saved" in text


def test_the_admin_key_sees_every_tenant_and_the_ab_tests(gateway_stack: Stack,
                                                          seeded: Seeded, tmp_path: Path
                                                          ) -> None:
    page = load(gateway_stack.gateway, ADMIN_KEY, "admin", tmp_path)
    assert page.state == "ready", _status(page)
    for chart in (*TIME_SERIES, *BREAKDOWNS):
        assert rendered(page, chart) > 0, f"{chart} drew no data: {page.charts.get(chart)}"
    text = " ".join(page.text)
    assert seeded.key_id in text
    assert "admin key" in text
    ab = f"chart-ab-{seeded.experiment_id}"
    assert rendered(page, ab) > 0, f"the A/B test drew no data: {page.charts.get(ab)}"


def test_a_bad_key_shows_an_error_not_charts(gateway_stack: Stack, tmp_path: Path) -> None:
    page = _Page()
    page.feed(_browse(f"{gateway_stack.gateway.url}/dashboard#key=sk-sluice-nobody-nothing",
                      tmp_path / "bad", "--dump-dom"))
    assert page.state == "error"
    assert "401" in " ".join(page.text)
    assert all(not c.get("data-rendered") for c in page.charts.values())
