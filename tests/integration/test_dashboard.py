"""The dashboard in a real browser: headless Chromium driven by Playwright
against a real 3-node mesh (one mesh and one browser for the module).

The browser is Debian's ``chromium`` package (``simulations/_venv.sh``
installs it when it can); Playwright's own browser download is not used.
Where no Chromium can be found, or the ``playwright`` package is missing,
these tests are skipped with the reason; nothing else depends on them.
Screenshots go to ``tests/artifacts/`` (ignored by git). Predicates given to
``wait_for_function`` are written as functions: the page's CSP forbids eval,
which Playwright needs for a bare expression.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from headless import CHROMIUM_ARGS, find_chromium
from procmesh import ProcMesh, http, wait_until

pytestmark = pytest.mark.slow

TOKEN = "dashboard-token"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LIVENESS_S = 6.0  # node/insight.py: LIVENESS_S
POLL_S = 2.0  # node/insight.py: POLL_S; the page hears of peers every NODES_EVERY_TICKS (2) s
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found: install Debian's chromium package (apt-get install chromium) "
                    "or set WORKMESH_CHROMIUM to a Chromium binary")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def mesh(browser, tmp_path_factory):
    m = ProcMesh(3, tmp_path_factory.mktemp("dashboard"), node_args=["--replicas", "3", "--api-token", TOKEN])
    with m:
        yield m


@pytest.fixture
def page(browser, mesh, request):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.foreign_requests = []  # anything not sent to a node of this mesh
    origins = {n.url for n in mesh.nodes}
    pg.on("request", lambda r: None if any(r.url.startswith(o + "/") for o in origins) or r.url.startswith("data:")
          else pg.foreign_requests.append(r.url))
    pg.script_errors = []  # uncaught exceptions in the page's own script
    pg.on("pageerror", lambda exc: pg.script_errors.append(str(exc)))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"), full_page=True)
    context.close()
    assert pg.script_errors == []


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_fits_a_phone(pg, name: str) -> None:
    pg.set_viewport_size({"width": 390, "height": 844})
    overflow = pg.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name}: the page is {overflow} px wider than a phone"
    shot(pg, f"{name}-phone")
    pg.set_viewport_size({"width": 1280, "height": 860})


def submit_through_form(pg, job_type: str, payload: str) -> None:
    pg.fill("#f-type", job_type)
    pg.fill("#f-payload", payload)
    if pg.is_visible("#f-token"):
        pg.fill("#f-token", TOKEN)
    pg.click("#f-submit")


def test_nodes_appear_with_their_load_version_and_loop(page, mesh):
    node0 = mesh.nodes[0]
    resp = page.goto(node0.url + "/")  # a browser asking for / lands on /ui/
    assert page.url == node0.url + "/ui/"
    assert "connect-src 'self'" in resp.headers["content-security-policy"]
    rows = page.locator("#nodes-table tbody tr[data-node-id]")
    for n in mesh.nodes:
        row = page.locator(f'#nodes-table tr[data-node-id="{n.node_id}"]')
        row.wait_for()
        want = "self" if n is node0 else "alive"
        page.wait_for_selector(f'#nodes-table tr[data-node-id="{n.node_id}"][data-liveness="{want}"]')
        text = row.inner_text()
        assert "0 / 2 busy" in text or "/ 2 busy" in text, text  # load: slots and busy
        assert "0.1.0" in text and ("asyncio" in text or "uvloop" in text), text
    assert rows.count() == 3
    page.wait_for_selector("#conn[data-state=live]")
    # Labels, keyboard, nothing from elsewhere.
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)""")
    assert unlabelled == []
    page.focus('nav a[data-view="node"]')
    page.keyboard.press("Enter")
    page.wait_for_selector("#view-node:not([hidden]) #n-routing tbody tr td.wrap")
    assert page.locator("#n-store meter").count() == 2
    routing = page.inner_text("#n-routing")
    assert all(n.node_id[:12] in routing for n in mesh.nodes[1:]), routing
    shot(page, "node-1280")
    page.goto(node0.url + "/ui/#/")
    page.wait_for_selector("#nodes-table tr[data-liveness=alive]")
    shot(page, "mesh-1280")
    assert_fits_a_phone(page, "mesh")
    assert page.foreign_requests == []


def test_a_job_submitted_through_the_form_turns_done_without_a_reload(page, mesh):
    node0 = mesh.nodes[0]
    page.goto(node0.url + "/ui/#/jobs")
    page.wait_for_selector("#conn[data-state=live]")
    page.evaluate("window.__noReload = 1")
    submit_through_form(page, "sleep", '{"seconds": 1.5}')
    link = page.wait_for_selector("#submitted-link")
    job_id = link.get_attribute("href").rsplit("/", 1)[1]
    row = f'#jobs-table tr[data-job-id="{job_id}"]'
    page.wait_for_selector(row)
    shot(page, "job-submitted")
    page.wait_for_selector(f'{row}[data-status="done"]')
    assert page.inner_text("#submitted-status") == "done"
    assert page.evaluate("window.__noReload") == 1, "the page reloaded"
    # The token was asked once and kept in this tab only.
    assert page.evaluate("sessionStorage.getItem('workmesh.apiToken')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert not page.is_visible("#f-token")
    submit_through_form(page, "echo", '{"again": true}')
    page.wait_for_function(f"() => document.querySelector('#submitted-link')?.getAttribute('href') !== '#/jobs/{job_id}'")
    assert page.is_hidden("#submit-error")
    # Search finds the job by a prefix of its id.
    page.fill("#s-q", job_id[:10])
    page.click("#search-form button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr[data-job-id]').length === 1")
    assert page.locator(row).count() == 1
    assert_fits_a_phone(page, "jobs")
    assert page.foreign_requests == []


def test_a_jobs_page_shows_its_signed_history_with_the_right_signers(page, mesh):
    node0, node2 = mesh.nodes[0], mesh.nodes[2]
    code, doc = http("POST", node0.url + "/jobs?wait=20", {"type": "echo", "payload": {"file": {"blob": "ab" * 32}}},
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and doc["status"] == "done", doc
    mesh_ids = {n.node_id for n in mesh.nodes}
    page.goto(f"{node2.url}/ui/#/jobs/{doc['id']}")  # opened on a node that did not take the job
    page.wait_for_selector("#j-timeline li[data-kind=result]")
    page.wait_for_function("() => document.querySelectorAll('#j-timeline li[data-action=seal]').length >= 2")
    items = page.eval_on_selector_all("#j-timeline li", """els => els.map(e => ({kind: e.dataset.kind,
        action: e.dataset.action, signer: e.dataset.signer, role: e.dataset.role, ok: e.dataset.verified}))""")
    assert all(i["ok"] == "true" for i in items), items
    by = {(i["kind"], i["action"]): i for i in items}
    assert items[0]["kind"] == "submit" and items[0]["signer"] == node0.node_id  # the node that accepted the job
    assert by[("grant", "place")]["signer"] == node0.node_id
    assert by[("result", "")]["signer"] == doc["worker"] and by[("result", "")]["role"] == "worker"
    assert by[("claim", "")]["signer"] == doc["worker"]
    grants = [i for i in items if (i["kind"], i["action"]) in (("grant", "lease"), ("ballot", "vote"), ("ballot", "seal"))]
    assert grants and {i["signer"] for i in grants} <= mesh_ids and all(i["role"] == "replica" for i in grants)
    sealed = page.locator("#j-replicas tbody tr[data-replica]")
    assert sealed.count() == 3
    assert page.get_attribute("#j-payload a", "href") == "/blobs/" + "ab" * 32  # a blob value is a link
    assert node2.node_id[:12] in page.inner_text("#j-summary")  # read by the node serving the page
    shot(page, "job-page")
    assert_fits_a_phone(page, "job-page")
    assert page.foreign_requests == []


def test_a_bad_submit_shows_the_problem_detail_in_words(page, mesh):
    page.goto(mesh.nodes[1].url + "/ui/#/jobs")
    page.wait_for_selector("#conn[data-state=live]")
    submit_through_form(page, "no-such-type", "{}")
    error = page.wait_for_selector("#submit-error:not([hidden])")
    assert "unknown job type 'no-such-type'" in error.inner_text(), error.inner_text()
    assert "Unprocessable" in error.inner_text() or "422" in error.inner_text()
    shot(page, "bad-submit")
    submit_through_form(page, "echo", "{not json")
    page.wait_for_function("() => document.querySelector('#submit-error').innerText.includes('not valid JSON')")
    # A wrong token: the node's 401 detail is shown and the token asked again.
    page.evaluate("sessionStorage.setItem('workmesh.apiToken', 'wrong')")
    page.fill("#f-payload", "{}")
    page.fill("#f-type", "echo")
    page.click("#f-submit")
    page.wait_for_function("() => document.querySelector('#submit-error').innerText.includes('Bearer')")
    assert page.is_visible("#f-token")
    assert page.evaluate("sessionStorage.getItem('workmesh.apiToken')") is None


def test_the_page_pauses_while_hidden_and_reconnects_after_a_restart(page, mesh):
    node1 = mesh.nodes[1]
    page.goto(node1.url + "/ui/")
    page.wait_for_selector("#conn[data-state=live][data-opens='1']")
    page.evaluate("""Object.defineProperty(document, 'hidden', {value: true, configurable: true});
                     document.dispatchEvent(new Event('visibilitychange'))""")
    page.wait_for_selector("#conn[data-state=paused]")
    page.evaluate("""Object.defineProperty(document, 'hidden', {value: false, configurable: true});
                     document.dispatchEvent(new Event('visibilitychange'))""")
    page.wait_for_selector("#conn[data-state=live][data-opens='2']")
    mesh.restart(node1)
    page.wait_for_selector("#conn[data-state=live][data-opens='3']", timeout=30_000)
    mesh.wait_peers(20)


def test_a_killed_node_is_shown_gone_within_its_liveness_window(page, mesh):
    node0, victim = mesh.nodes[0], mesh.nodes[2]
    page.goto(node0.url + "/ui/")
    page.wait_for_selector(f'#nodes-table tr[data-node-id="{victim.node_id}"][data-liveness=alive]')
    victim.kill()
    killed = time.monotonic()
    # Gone once LIVENESS_S passed without an answer; the page hears of it at the next poll.
    bound_s = LIVENESS_S + 2 * POLL_S + 2.0
    page.wait_for_selector(f'#nodes-table tr[data-node-id="{victim.node_id}"][data-liveness=gone]',
                           timeout=bound_s * 1000 + 5000)
    took = time.monotonic() - killed
    print(f"killed node shown gone {took:.1f} s after the kill (bound {bound_s:g} s)")
    assert took <= bound_s, f"shown gone after {took:.1f} s, bound {bound_s} s"
    assert page.locator(f'#nodes-table tr[data-node-id="{node0.node_id}"][data-liveness=self]').count() == 1
    shot(page, "node-gone")
    wait_until(lambda: not victim.alive, 5, "victim dead")
