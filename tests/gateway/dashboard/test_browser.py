"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright with that
executable: no browser download). Each page is screenshotted into tests/artifacts/dashboard/ (the overview
one is the README's).

Without chromium or playwright these tests fail (scripts/setup.sh installs both); ``TG_SKIP_BROWSER=1``
skips them on a machine that cannot have a browser.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from gateway.settings import (
    BreakerSettings,
    DashboardSettings,
    ModelPriceOverride,
    ModelSettings,
    ProviderSettings,
    RoutingSettings,
)
from local_engine.convert import build_all
from tests.gateway.api.conftest import (
    Gateway,
    _sim_server,
    create_key,
    db_url,
    gateway_factory,
    sim,
    sim_url,
)
from tests.gateway.api.test_reports import scripted_mix
from tests.servers import serve
from tests.upstream import Fault, Simulator
from tests.waiting import wait_until

__all__ = ["_sim_server", "db_url", "gateway_factory", "sim", "sim_url"]

MASTER = "mk-browser-test-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
PAGES = ("overview", "spend", "keys", "requests", "batches", "panels")


def _chromium() -> str:
    path = os.environ.get("TG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or not _has_playwright():
        reason = "Debian's chromium and the playwright package are needed (scripts/setup.sh installs both)"
        if os.environ.get("TG_SKIP_BROWSER", "") not in ("", "0"):
            pytest.skip(reason)
        pytest.fail(reason + "; TG_SKIP_BROWSER=1 skips these tests", pytrace=False)
    return path


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def gw(gateway_factory: Any, sim: Simulator, db_url: str) -> Iterator[tuple[Gateway, str, str]]:
    key_id, raw = create_key(db_url, name="team-a", budget_usd=0.05)
    with gateway_factory(master_key=SecretStr(MASTER)) as gateway:
        n = scripted_mix(gateway, sim, raw)
        wait_until(lambda: len(gateway.rows()) >= n, what="every request logged")
        yield gateway, key_id, raw


LOCAL = ModelSettings(
    provider="local",
    model="smollm2-135m-instruct",
    prices=ModelPriceOverride(input=0, output=0, cache_read=0, cache_write_5m=0, cache_write_1h=0),
)


@pytest.fixture
def gw_all(gateway_factory: Any, sim: Simulator, db_url: str) -> Iterator[tuple[Gateway, str, str]]:
    """The scripted mix, then a request served by a fallback (an injected upstream 500 on gpt-4o, whose
    breaker opens at the first failure) and one by the local engine: every panel has data."""
    key_id, raw = create_key(db_url, name="team-a", budget_usd=0.05)
    model_root = Path(os.environ.get("THRIFTGATE_LOCAL_MODEL_DIR", "data/models"))
    build_all(model_root)
    local = ProviderSettings(kind="local", options={"num_slots": 2, "max_seq_len": 512, "speculative": "off"})
    with gateway_factory(
        master_key=SecretStr(MASTER),
        provider_opts={"max_retries": 0},
        providers_extra={"local": local},
        models_extra={"thriftgate-local": LOCAL},
        local_model_dir=str(model_root),
        routing=RoutingSettings(
            fallbacks={"gpt-4o": ["claude-sonnet-4-5"]}, breaker=BreakerSettings(failures=1)
        ),
        dashboard=DashboardSettings(live_interval_s=0.1),
    ) as gateway:
        n = scripted_mix(gateway, sim, raw)
        client = openai.OpenAI(base_url=gateway.openai_url, api_key=raw, max_retries=0)
        sim.inject(Fault(status=500, times=1, path="/v1/chat/completions"))
        served = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "fall back"}]
        )
        assert served.headers["x-thriftgate-model"] == "claude-sonnet-4-5"
        client.chat.completions.create(
            model="thriftgate-local", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        wait_until(lambda: len(gateway.rows()) >= n + 2, what="every request logged")
        live = lambda: gateway.app.state.live.samples()  # noqa: E731
        wait_until(lambda: any(s.local is not None for s in live()), what="a sample of the loaded engine")
        yield gateway, key_id, raw


def login(page: Any, url: str) -> None:
    page.goto(f"{url}/admin/ui/overview")
    assert page.url.endswith("/admin/ui/login")  # an unauthenticated visit is sent to the login page
    page.fill("#master-key", MASTER)
    page.click("#login-submit")
    page.wait_for_url(f"{url}/admin/ui/overview")


def ready(page: Any) -> None:
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    assert page.get_attribute("body", "data-error") is None


def value(page: Any, testid: str) -> float:
    raw = page.get_attribute(f"[data-testid='{testid}']", "data-value")
    return float(raw) if raw not in (None, "") else float("nan")


def test_login_totals_chart_and_screenshots(gw_all: tuple[Gateway, str, str], browser: Any) -> None:
    gateway, _, _ = gw_all
    rows = gateway.rows()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    page.goto(f"{gateway.url}/admin/ui/login")
    page.fill("#master-key", "wrong")
    page.click("#login-submit")
    assert "Wrong master key" in page.inner_text("#login-error")
    login(page, gateway.url)
    cookie = next(c for c in context.cookies() if c["name"] == "tg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # http here

    ready(page)
    for window in ("today", "7d", "30d"):
        assert value(page, f"ov-{window}-requests") == len(rows)
        assert value(page, f"ov-{window}-spend_usd") == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
        assert value(page, f"ov-{window}-counterfactual_usd") == pytest.approx(
            sum(r["counterfactual_usd"] or 0 for r in rows)
        )
        assert value(page, f"ov-{window}-saved_usd") == pytest.approx(sum(r["saving_usd"] or 0 for r in rows))
        errors = sum(r["status_code"] >= 400 for r in rows)
        assert value(page, f"ov-{window}-error_rate") == pytest.approx(errors / len(rows))
    chart = page.locator("#overview-chart")
    assert int(chart.get_attribute("data-points") or 0) > 0
    assert page.locator("#overview-chart canvas").count() == 1
    drawn = page.evaluate("TG.charts['overview-chart'].data.slice(1).flat().filter(v => v > 0).length")
    assert drawn > 0

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in PAGES:
        page.goto(f"{gateway.url}/admin/ui/{name}")
        ready(page)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    # The last page is the panels: the fallback, the breaker it opened and the local engine have data.
    assert value(page, "fallbacks-total") == 1
    for chart_id in (
        "routing-fallbacks-chart",
        "routing-breakers-chart",
        "local-rate-chart",
        "local-queue-chart",
    ):
        assert int(page.get_attribute(f"#{chart_id}", "data-points") or 0) > 0, chart_id
        assert page.locator(f"#{chart_id} canvas").count() == 1, chart_id
    assert "1 opened" in page.inner_text("#routing-breakers")
    assert "openai/gpt-4o" in page.inner_text("#routing-breakers")
    assert "fallback 1 after openai/gpt-4o" in page.inner_text("#routing-fallback-reasons")
    assert "no data" not in page.inner_text("#local-summary")

    page.goto(f"{gateway.url}/admin/ui/requests?status=error")
    ready(page)
    assert page.locator("#requests-table tbody tr").count() == sum(r["status_code"] >= 400 for r in rows)
    context.close()


def test_csv_export_matches_the_table(gw: tuple[Gateway, str, str], browser: Any) -> None:
    gateway, _, _ = gw
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    login(page, gateway.url)
    page.goto(f"{gateway.url}/admin/ui/spend")
    ready(page)
    page.select_option("select[name=by]", "model")
    ready(page)
    header = [th.inner_text().strip() for th in page.locator("#spend-table thead th").all()]
    shown = [
        [td.get_attribute("data-value") for td in tr.locator("td").all()]
        for tr in page.locator("#spend-table tbody tr").all()
    ]
    assert shown and header[1] == "Requests"
    page.click("#spend-table th[data-key=requests]")  # sorting reorders the table, not the data
    assert sorted(
        [td.get_attribute("data-value") for td in tr.locator("td").all()]
        for tr in page.locator("#spend-table tbody tr").all()
    ) == sorted(shown)
    with page.expect_download() as info:
        page.click("#csv-export")
    text = Path(info.value.path()).read_text()
    exported = list(csv.reader(io.StringIO(text)))
    assert exported[0][0] == "name" and len(exported) == len(shown) + 1
    for got, want in zip(exported[1:], shown, strict=True):
        assert got[0] == want[0]
        assert [float(x) for x in got[1:]] == pytest.approx([float(x or 0) for x in want[1:]])
    context.close()


def test_create_edit_and_revoke_a_key_in_the_ui(gw: tuple[Gateway, str, str], browser: Any) -> None:
    gateway, _, _ = gw
    page = browser.new_page()
    login(page, gateway.url)
    page.goto(f"{gateway.url}/admin/ui/keys")
    ready(page)
    page.fill("#create-key input[name=name]", "from-the-ui")
    page.fill("#create-key input[name=rpm]", "100")
    page.click("#create-key button[type=submit]")
    ready(page)
    raw = page.inner_text("#created-raw-key").strip()
    assert raw.startswith("tg-")
    client = openai.OpenAI(base_url=gateway.openai_url, api_key=raw, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    page.goto(f"{gateway.url}/admin/ui/keys")  # the raw key is not shown again
    ready(page)
    assert page.locator("#created-raw-key").count() == 0 and raw not in page.content()
    key_id = page.locator("tr", has_text="from-the-ui").locator("td").nth(1).inner_text().strip()

    limits = page.locator(f"[data-testid='limits-{key_id}']")
    limits.locator("input[name=budget_usd]").fill("0.5")
    limits.locator("button").click()
    ready(page)
    bar = page.locator("tr", has_text="from-the-ui").locator(".bar")
    assert "$0.50" in bar.inner_text()

    page.locator(f"[data-testid='revoke-{key_id}'] button").click()
    ready(page)
    assert page.inner_text(f"[data-testid='status-{key_id}']") == "revoked"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


ATTACK = """<!doctype html><form method="post" action="{target}/admin/ui/keys/new">
<input name="name" value="evil"><input name="csrf_token" value="guess"></form>
<script>document.forms[0].submit()</script>"""


def test_cross_site_form_posts_are_refused(gw: tuple[Gateway, str, str], browser: Any) -> None:
    gateway, _, _ = gw
    page = browser.new_page()
    login(page, gateway.url)
    before = page.request.get(f"{gateway.url}/admin/api/keys").json()["data"]

    async def attack(_request: Any) -> HTMLResponse:
        return HTMLResponse(ATTACK.format(target=gateway.url))

    with serve(Starlette(routes=[Route("/", attack)])) as evil:
        port = evil.rsplit(":", 1)[1]
        for origin in (evil, f"http://localhost:{port}"):  # same site other port; another site
            with page.expect_response(lambda r: "/admin/ui/keys/new" in r.url) as info:
                page.goto(f"{origin}/")
            assert info.value.status in (303, 403)
            page.wait_for_load_state()
    after = page.request.get(f"{gateway.url}/admin/api/keys").json()["data"]
    assert [k["id"] for k in after] == [k["id"] for k in before]

    # The API refuses a state change on the cookie alone; the master key still works without CSRF.
    resp = page.request.patch(f"{gateway.url}/admin/keys/{before[0]['id']}", data={"rpm": 5})
    assert resp.status == 403
    page.goto(f"{gateway.url}/admin/ui/keys")
    csrf = page.get_attribute("meta[name=csrf-token]", "content")
    ok = page.request.patch(
        f"{gateway.url}/admin/keys/{before[0]['id']}", data={"rpm": 5}, headers={"x-csrf-token": csrf}
    )
    assert ok.status == 200 and ok.json()["rpm"] == 5

    anonymous = browser.new_context()
    assert anonymous.request.get(f"{gateway.url}/admin/api/overview").status == 401
    visit = anonymous.new_page()
    visit.goto(f"{gateway.url}/admin/ui/keys")
    assert visit.url.endswith("/admin/ui/login")
    anonymous.close()
