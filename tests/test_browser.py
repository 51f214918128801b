"""End to end in a real browser: ``streamlit run app.py`` driven by headless Chromium (Playwright).

Upload a 10,000-cell h5ad, choose the model, run, see the UMAP, download predictions.csv and
check its rows; a screenshot of every page goes to ``test-artifacts/screenshots/``.

Needs Debian's ``/usr/bin/chromium`` (Playwright's own browser download is not used) and the
``playwright`` Python package; skipped with the reason otherwise. Run with ``-m browser``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from _app_helpers import make_bundle, make_dataset

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
N_CELLS = 10_000
PANEL_DRUGS = ("PANELDRUGB", "PANELDRUGC")
VIEWPORT = {"width": 1440, "height": 1000}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 # software WebGL, so plotly's Scattergl draws the 10,000-cell UMAP without a GPU
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


SERVER_PIDS: dict[str, int] = {}  # a running server's URL -> its process id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The most ``python -m scatd_app`` may take to load before it listens, while its log shows it loading.
WARM_UP_LIMIT_S = 420


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90, log: Path | None = None) -> None:
    """Until the server answers its health check, for ``timeout`` seconds; for ``python -m scatd_app``
    (``log``: its output), ``timeout`` seconds from when it is done loading, as long as its log says it
    is still loading (at most :data:`WARM_UP_LIMIT_S`). That load is CPU-bound work done before the
    server listens (6-17 s on the quiet 2-core machine); with a second test suite and two busy
    processes beside it (load ~7) it took over 90 s, and every test of the module failed at setup
    with "streamlit did not start"."""
    def loading() -> bool:
        text = log.read_text(errors="replace") if log is not None else ""
        return "before serving" in text and "ready in" not in text

    started = time.time()
    deadline = started + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
        if time.time() - started < WARM_UP_LIMIT_S and loading():
            deadline = time.time() + timeout
    raise TimeoutError("streamlit did not start" + (f"; its log: {log.read_text(errors='replace')[-1500:]}"
                                                     if log is not None else ""))


def _need_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")


def app_command(launcher: str, port: int) -> list[str]:
    """The command that serves the app on ``port`` of this machine only: ``streamlit run app.py``
    (``launcher="streamlit"``) or ``python -m scatd_app`` (``"module"``), run from the repository."""
    start = ["-m", "scatd_app"] if launcher == "module" else ["-m", "streamlit", "run", "app.py"]
    return [sys.executable, *start, "--server.headless", "true", "--server.port", str(port),
            "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]


@contextmanager
def _streamlit(home: Path, *, launcher: str = "streamlit", while_starting=None, **env_extra):
    """The app on a free port with ``SCATD_HOME=home``, started as ``streamlit run app.py``
    (``launcher="streamlit"``) or ``python -m scatd_app`` (``"module"``: loaded before it listens);
    yields its URL. ``while_starting()`` is called once the server process is started, before it is
    waited for (work of the test's own that the server does not need at its start)."""
    port = _free_port()
    env = {**os.environ, "SCATD_HOME": str(home), "SCATD_MAX_UPLOAD_MB": "500", **env_extra}
    env.pop("SCATD_MODEL_LIBRARY", None)
    log = open(home / "streamlit.log", "w")
    proc = subprocess.Popen(app_command(launcher, port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    SERVER_PIDS[url] = proc.pid
    try:
        if while_starting is not None:
            while_starting()
        _wait_healthy(url, proc, log=home / "streamlit.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    home = tmp_path_factory.mktemp("scatd_home")
    train = make_dataset(600, seed=0)
    make_bundle(home / "models" / "testdrug_dist_vae", train)
    for i, drug in enumerate(PANEL_DRUGS):  # after testdrug_dist_vae, so the Model page's default is unchanged
        make_bundle(home / "models" / f"zz_{drug.lower()}", train, drug=drug, seed=i + 1, steps=20)
    data = home / "tumour_10k.h5ad"
    # written while the server loads (it reads no data at its start)
    with _streamlit(home, launcher="module", SCATD_AUTH="none",  # the two-user test starts it the other way
                    while_starting=lambda: make_dataset(N_CELLS, seed=11).write_h5ad(data, compression="gzip")) as url:
        said = (home / "streamlit.log").read_text()  # QA: "... please restart streamlit." at every start, for nothing
        assert "config option section was detected" not in said, said
        yield url, data, home


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's tests (started once); each test opens its own
    contexts in it (:func:`_contexts`: their own cookies and storage, as a new browser's)."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class _Contexts:
    """A test's view of the shared browser: ``new_page``/``new_context`` as a Browser's; ``close()``
    closes what the test opened, not the browser."""

    def __init__(self, browser):
        self.browser, self.opened = browser, []

    def new_context(self, **options):
        self.opened.append(self.browser.new_context(**options))
        return self.opened[-1]

    def new_page(self, **options):
        return self.new_context(**options).new_page()

    def close(self) -> None:
        while self.opened:
            self.opened.pop().close()


@contextmanager
def _contexts(browser):
    opened = _Contexts(browser)
    try:
        yield opened
    finally:
        opened.close()


def _no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']").first.inner_text()


def _uploads_held_in_memory(url: str, wait_s: float = 12.0) -> int:
    """Bytes of uploaded files Streamlit holds in the server's memory (its metrics endpoint; that
    family is recomputed at most every 5 s), polled until 0 or ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        text = urllib.request.urlopen(f"{url}/_stcore/metrics?families=cache_memory_bytes", timeout=10).read().decode()
        assert "cache_memory_bytes" in text, text[:300]
        held = sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if 'cache_type="UploadedFileManager"' in line)
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(1.0)


def _go(page, link: str, heading: str | None = None) -> None:
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=link, exact=True).click()
    if heading:  # the new page's heading: its run has started
        page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    _idle(page, started=heading is not None)


#: Streamlit's own record of the script run, set at once (its status widget shows only after 500 ms
#: of a run and fades out over 200 ms after it).
NOT_RUNNING = "[data-testid='stApp'][data-test-script-state='notRunning']"


def _idle(page, timeout: float = 120_000, *, started: bool = False) -> None:
    """Wait until Streamlit has finished running the script. ``started``: the caller waited for
    something only the run draws (or nothing was done since the last wait), so it has begun;
    otherwise (right after a click) the run is given 300 ms to begin first."""
    if not started:
        page.wait_for_timeout(300)
    page.locator(NOT_RUNNING).wait_for(timeout=timeout)


#: Until the plotly charts are drawn at their container's width (at most 1 s): after the window
#: is resized, Streamlit redraws each chart at the new width.
_CHARTS_FIT = """async () => {
    const t0 = performance.now();
    const fits = () => [...document.querySelectorAll("[data-testid='stPlotlyChart']")].every(c => {
        const s = c.querySelector('.main-svg');
        return !s || Math.abs(s.getBoundingClientRect().width - c.getBoundingClientRect().width) <= 1; });
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    while (!fits() && performance.now() - t0 < 1000) await new Promise(r => setTimeout(r, 50));
    return [Math.round(performance.now() - t0), fits()];
}"""


def _shot(page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its main block, so the window is
    made as tall as the content first (when it is taller than the window)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => Math.max(...['stMain', 'stMainBlockContainer'].map(id => "
                           "(document.querySelector(`[data-testid='${id}']`) || {scrollHeight: 0}).scrollHeight))")
    tall = max(VIEWPORT["height"], min(int(height) + 60, 9000))
    if tall > VIEWPORT["height"]:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
        waited = page.evaluate(_CHARTS_FIT)  # plots resize to the new window
        if os.environ.get("SCATD_SHOT_LOG"):
            print(f"shot {name}: height {tall}, charts fit after {waited}")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    if tall > VIEWPORT["height"]:
        page.set_viewport_size(VIEWPORT)


def _plots(page, n: int, timeout: float = 120_000) -> None:
    """Wait until ``n`` plotly figures are drawn."""
    page.locator(".js-plotly-plot .main-svg").nth(n - 1).wait_for(timeout=timeout)


def _cli_predict(data: Path, home: Path, out: Path) -> subprocess.Popen:
    """``scatd predict`` of ``data`` with the test model to ``out``, started: it runs beside the
    browser's walk, and :func:`_same_as_cli_and_api` waits for it."""
    env = {**os.environ, "SCATD_HOME": str(home)}
    env.pop("SCATD_MODEL_LIBRARY", None)
    with out.with_suffix(".log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "scatd_core.cli", "predict", "--model", "testdrug_dist_vae",
                                 "--input", str(data), "--output", str(out), "--label-column", "response",
                                 "--sample-column", "sample"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)


def _api_predictions_csv(data: Path, home: Path) -> bytes:
    """predictions.csv of ``data`` with the test model, made with the Python API."""
    from scatd_core import export, io
    from scatd_core.bundle import load_bundle
    from scatd_core.predict import predict

    adata = io.read(data)
    predict(adata, load_bundle(home / "models" / "testdrug_dist_vae"))
    return export.to_csv_bytes(export.predictions_table(adata, ["response", "sample"], label_column="response"))


def _same_as_cli_and_api(app_csv: bytes, cli: subprocess.Popen, out: Path, api: Future) -> None:
    """The CLI (``cli``, started by :func:`_cli_predict`, writing ``out``) and the Python API
    (``api``: :func:`_api_predictions_csv` in a thread) give the app's predictions.csv byte for byte."""
    cli.wait(timeout=600)
    assert cli.returncode == 0, out.with_suffix(".log").read_text()
    assert out.read_bytes() == app_csv
    assert api.result(timeout=600) == app_csv


def test_upload_predict_umap_download(server, chromium, tmp_path):
    url, data, home = server
    (SCREENSHOTS / "failure.png").unlink(missing_ok=True)
    # the CLI's and the Python API's predictions, made while the browser walks the pages
    cli_csv = tmp_path / "cli_predictions.csv"
    cli = _cli_predict(data, home, cli_csv)
    api_pool = ThreadPoolExecutor(1)
    api = api_pool.submit(_api_predictions_csv, data, home)
    with _contexts(chromium) as browser:
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.get_by_role("heading", name="scATD Studio").first.wait_for()
            _idle(page, started=True)
            _shot(page, "0_overview")
            # the first page already has the browser load the code of the later pages' elements
            # (plotly.js for the charts), from the same place Streamlit's own front end loads it
            page.wait_for_function("() => performance.getEntriesByType('resource').some("
                                   "e => /\\/static\\/js\\/PlotlyChart\\.[^/]+\\.js$/.test(e.name))", timeout=30_000)

            _go(page, "Data", "1 · Data")
            page.get_by_text("Up to 500 MB per file").wait_for()  # the configured limit is shown
            page.locator("input[type='file']").first.set_input_files(str(data))
            page.get_by_text("Quality control").wait_for(timeout=120_000)
            _plots(page, 2)  # QC violins and scatter
            _idle(page, started=True)
            assert page.get_by_text(f"{N_CELLS:,}", exact=True).count() >= 1
            _no_exception(page)
            _shot(page, "1_data")
            # read from the session's folder: the server no longer holds the upload in memory
            assert _uploads_held_in_memory(url) == 0

            _go(page, "Model", "2 · Model")
            page.get_by_text("Coverage is good").wait_for()
            _idle(page, started=True)
            _no_exception(page)
            _shot(page, "2_model")

            _go(page, "Predict", "3 · Predict")
            _idle(page, started=True)
            page.get_by_role("button", name="Run prediction").click()
            page.get_by_text(f"Predicted {N_CELLS:,} of {N_CELLS:,} cells").wait_for(timeout=120_000)
            _plots(page, 1)
            _idle(page, started=True)
            # the chart's text alternative reaches the page as its accessible name, and its toolbar keeps
            # only the buttons of use (each one is a stop in the keyboard's tab order)
            hist = page.get_by_role("figure", name=re.compile(
                rf"^Histogram of P\(resistant\) for {N_CELLS:,} scored cells: [\d,]+ \([\d.]+%\) above the threshold"))
            assert hist.count() == 1
            buttons = hist.locator(".modebar-btn").evaluate_all("bs => bs.map(b => b.getAttribute('data-title'))")
            assert "Download plot as a PNG" in buttons and "Reset axes" in buttons, buttons
            assert not {"Autoscale", "Zoom in", "Zoom out", "Box Select", "Lasso Select"} & set(buttons), buttons
            _no_exception(page)
            _shot(page, "3_predict")

            # one pipeline: the app's predictions.csv is byte-identical to the CLI's and the API's
            _go(page, "Report", "6 · Report")
            _idle(page, started=True)
            # the link to the biomarkers is whole (QA: cut to "Compute biomarkers fi" in a download's column)
            link = page.get_by_role("link", name=re.compile("Compute the biomarkers first"))
            assert link.evaluate("e => [e, ...e.querySelectorAll('*')].every("
                                 "n => n.clientWidth === 0 || n.scrollWidth <= n.clientWidth + 1)")
            with page.expect_download() as info:
                page.get_by_role("button", name="predictions.csv").click()
            from_app = tmp_path / "app_predictions.csv"
            info.value.save_as(from_app)
            _same_as_cli_and_api(from_app.read_bytes(), cli, cli_csv, api)

            _go(page, "Cells", "4 · Cells")
            page.get_by_text("Leiden clusters").first.wait_for(timeout=180_000)
            _plots(page, 5)  # UMAP, groups, ROC, PR, confusion
            _idle(page, started=True)
            umap = page.locator(".js-plotly-plot").first
            umap.wait_for()
            assert umap.locator("canvas, .scatterlayer .point").count() > 0  # points were drawn
            _no_exception(page)
            _shot(page, "4_cells")

            _go(page, "Biomarkers")
            # a long run (every cell, 400 steps: ~20 s here) stopped with Cancel: it stops, and the page says so
            page.get_by_role("spinbutton", name="Cells to explain (at most)").fill(str(N_CELLS))
            page.get_by_role("spinbutton", name="Integration steps").fill("400")
            page.get_by_role("button", name="Compute gene ranking").click()
            page.get_by_role("button", name="Cancel").wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            t0 = time.time()
            page.get_by_role("button", name="Cancel").click()
            page.get_by_text("The gene ranking was stopped before it finished").wait_for(timeout=30_000)
            _idle(page, started=True)
            print(f"biomarkers: stopped {time.time() - t0:.1f} s after the click on Cancel")
            assert page.get_by_role("button", name="Cancel").count() == 0
            _no_exception(page)
            _shot(page, "5_biomarkers_cancelled")

            t0 = time.time()
            page.get_by_role("spinbutton", name="Cells to explain (at most)").fill("500")
            page.get_by_role("spinbutton", name="Integration steps").fill("50")
            page.get_by_role("button", name="Compute gene ranking").click()
            _plots(page, 1, timeout=240_000)
            _idle(page, timeout=240_000, started=True)
            print(f"biomarkers: {time.time() - t0:.0f} s")
            _no_exception(page)
            _shot(page, "5_biomarkers")

            _go(page, "Report", "6 · Report")
            _idle(page, started=True)
            with page.expect_download() as info:
                page.get_by_role("button", name="predictions.csv").click()
            target = tmp_path / "predictions.csv"
            info.value.save_as(target)
            table = pd.read_csv(target)
            assert len(table) == N_CELLS and table["cell_id"].is_unique
            assert {"prob_resistant", "label", "calibrated", "scored", "qc_pass", "umap_1", "leiden_cluster"} <= set(table.columns)
            assert set(table["label"]) <= {"resistant", "sensitive", "not scored", "filtered (QC)"}
            _no_exception(page)
            _shot(page, "6_report")
            with page.expect_download() as info:
                page.get_by_role("button", name="report.html").click()
            html_report = tmp_path / "report.html"
            info.value.save_as(html_report)

            _go(page, "Model library", "Model library")
            _idle(page, started=True)
            _shot(page, "7_models")
            _go(page, "Train a model")
            _idle(page, started=True)
            _no_exception(page)
            _shot(page, "8_train")

            # the HTML report opens offline (file://, no network) with its figures drawn
            page.route("http*://**", lambda route: route.abort())
            page.goto(html_report.as_uri())
            _plots(page, 5, timeout=60_000)
            assert page.get_by_text("Run parameters").count() == 1
            assert page.get_by_role("heading", name="Biomarkers").count() == 1  # the ranking reached the report
            page.screenshot(path=str(SCREENSHOTS / "9_report_html.png"), full_page=True)
            log = (home / "streamlit.log").read_text()
            assert "Traceback" not in log, log[-3000:]  # nothing failed on the server either
            # started by `python -m scatd_app`: everything was loaded before the server listened
            assert log.index("scATD Studio: ready in") < log.index("You can now view your Streamlit app"), log[:2000]
        except Exception:
            _shot(page, "failure")  # what the browser showed when the test failed
            raise
        finally:
            browser.close()
            if cli.poll() is None:  # the test failed before it compared
                cli.kill()
                cli.wait()
            api_pool.shutdown(wait=True)


def _metric(page, label: str) -> str:
    box = page.locator("[data-testid='stMetric']").filter(has=page.get_by_text(label, exact=True)).first
    return box.locator("[data-testid='stMetricValue']").inner_text()


def test_scad_style_labels_are_asked_once_and_evaluated_the_right_way(server, chromium, tmp_path):
    """A SCAD-style CSV (``response``: 1 = sensitive): the direction is asked, never guessed; with the
    user's answer the Cells page's AUROC is above 0.5."""
    url, _data, home = server
    adata = make_dataset(400, seed=21)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    frame.insert(0, "response", (adata.obs["response"] == "sensitive").astype(int).to_numpy())
    csv = tmp_path / "scad_style.csv"
    frame.to_csv(csv)
    with _contexts(chromium) as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.get_by_role("heading", name="scATD Studio").first.wait_for()
            _idle(page, started=True)
            _go(page, "Data", "1 · Data")
            page.locator("input[type='file']").first.set_input_files(str(csv))
            question = page.locator("[data-testid='stRadio']").filter(has_text="means resistant")
            question.wait_for(timeout=120_000)
            _idle(page, started=True)
            page.get_by_text("never guessed").wait_for()  # no silent default for 0/1
            question.get_by_text("0", exact=True).click()
            # Until the Data page has drawn the answer (its warning goes), not only _idle: on a loaded
            # machine the click's rerun had not started 300 ms on, so _idle returned at once and the
            # click on Model below reached the server with it as one rerun of the Model page. The
            # Data page's code never ran with '0' (the app now records it in the radio's callback:
            # test_app_pages.py::test_a_label_answer_followed_at_once_by_another_page_is_recorded);
            # the Cells page asked for the answer again and this test waited 180 s for the AUROC.
            page.get_by_text("never guessed").wait_for(state="detached", timeout=120_000)
            _idle(page, started=True)
            _go(page, "Model", "2 · Model")
            page.get_by_text("Coverage is good").wait_for()
            _idle(page, started=True)
            _shot(page, "12_model_scad")
            _go(page, "Predict", "3 · Predict")
            page.get_by_role("button", name="Run prediction").click()
            page.get_by_text("Predicted 400 of 400 cells").wait_for(timeout=120_000)
            _idle(page, started=True)
            _go(page, "Cells", "4 · Cells")
            page.get_by_text("Agreement with known labels").wait_for()
            page.locator("[data-testid='stMetric']").filter(has=page.get_by_text("AUROC", exact=True)).wait_for(
                timeout=180_000)
            _idle(page, started=True)
            auroc = float(_metric(page, "AUROC"))
            assert auroc > 0.5, auroc
            assert page.get_by_text("resistant = '0'").count() >= 1
            _no_exception(page)
            _shot(page, "12_cells_scad")
        except Exception:
            _shot(page, "failure_scad")
            raise
        finally:
            browser.close()


CUT_OFF = -1  # an upload whose connection the server closed before the client had sent the body


def _anonymous_upload(url: str, nbytes: int) -> int:
    """What anyone on the network can do without an account: open the login page's session (its
    websocket) and PUT a file into Streamlit's upload store for it. Returns the HTTP status."""
    import asyncio
    import http.cookiejar
    import urllib.error

    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{url}/_stcore/health").read()
    xsrf = next((c.value for c in jar if c.name == "_streamlit_xsrf"), "")

    async def put() -> int:
        ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
        async with websockets.connect(ws_url, additional_headers={"Cookie": f"_streamlit_xsrf={xsrf}"},
                                      subprotocols=["streamlit", xsrf or "x"], max_size=None) as ws:
            msg = BackMsg()
            msg.rerun_script.query_string = ""
            msg.rerun_script.page_script_hash = ""
            await ws.send(msg.SerializeToString())
            session_id = None
            while session_id is None:
                fm = ForwardMsg()
                fm.ParseFromString(await asyncio.wait_for(ws.recv(), 60))
                if fm.WhichOneof("type") == "new_session":
                    session_id = fm.new_session.initialize.session_id
            boundary = "scatdtestboundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"junk.bin\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * nbytes + \
                f"\r\n--{boundary}--\r\n".encode()
            request = urllib.request.Request(f"{url}/_stcore/upload_file/{session_id}/junk", data=body, method="PUT",
                                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                      "X-Xsrftoken": xsrf})
            try:
                return opener.open(request).status
            except urllib.error.HTTPError as exc:
                return exc.code
            except urllib.error.URLError as exc:  # answered (403) and closed while the body was still sent
                if isinstance(exc.reason, (ConnectionResetError, BrokenPipeError)):
                    return CUT_OFF
                raise

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # its own event loop, beside Playwright's
        return pool.submit(lambda: asyncio.run(put())).result()


def _peak_memory_growth(pid: int, action) -> tuple[object, int]:
    """``action()``'s result, and how far the process's peak resident memory rose above its
    resident memory before it (bytes; Linux: the peak is reset through /proc/PID/clear_refs)."""
    def status(field: str) -> int:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    result = action()
    return result, status("VmHWM") - before


def _status(url: str) -> int:
    """The HTTP status of a GET of ``url`` with no cookie (anyone on the network)."""
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_users_on_one_server_see_only_their_own_data(chromium, tmp_path_factory):
    """Two browser contexts, a password login, the same bytes uploaded under two names."""
    from scatd_core import users

    _need_browser()
    home = tmp_path_factory.mktemp("scatd_home_login")

    def model_users_and_data() -> None:  # while the server starts: it reads them when a page asks
        make_bundle(home / "models" / "testdrug_dist_vae", make_dataset(300, seed=0))
        users.add_user("alice", "alice's long password", path=home / "users.toml")
        users.add_user("bob", "bob's long password!", path=home / "users.toml")
        data = home / "cells.h5ad"
        make_dataset(300, seed=5).write_h5ad(data)
        for name in ("patient_alice.h5ad", "patient_bob.h5ad"):
            (home / name).write_bytes(data.read_bytes())

    with (_streamlit(home, SCATD_AUTH="password", while_starting=model_users_and_data) as url,
          _contexts(chromium) as browser):
        pages = {}
        try:
            for who, password in (("alice", "alice's long password"), ("bob", "bob's long password!")):
                page = browser.new_context(viewport=VIEWPORT, accept_downloads=True).new_page()
                page.set_default_timeout(60_000)
                for address in ("Data", "data", "1_Data", "Model_library"):  # no page without the login
                    page.goto(f"{url}/{address}")
                    page.get_by_label("User name").wait_for()
                    _idle(page, started=True)
                    assert page.locator("input[type='file']").count() == 0, address
                page.goto(url)
                page.get_by_label("User name").fill(who)
                page.get_by_role("textbox", name="Password").fill(password)
                assert page.locator("input[type='file']").count() == 0
                page.get_by_role("button", name="Log in").click()
                page.get_by_text(f"Logged in as {who}").wait_for()
                _idle(page, started=True)
                pages[who] = page
            # without an account nothing is kept in the server's memory (Streamlit alone keeps it: 204)
            # (a busy server may refuse from the headers and close the connection before the 1 MB body is sent)
            assert _anonymous_upload(url, 1 << 20) in (403, CUT_OFF)
            assert _uploads_held_in_memory(url, wait_s=0) == 0
            # nor read into it first: refused from its headers (QA: 300 MB in memory before the 403)
            status, grew = _peak_memory_growth(SERVER_PIDS[url], lambda: _anonymous_upload(url, 50 << 20))
            assert status in (403, CUT_OFF) and grew < 20 << 20, (status, grew)
            for who, page in pages.items():
                _go(page, "Data", "1 · Data")
                page.locator("input[type='file']").first.set_input_files(str(home / f"patient_{who}.h5ad"))
                page.get_by_text("Quality control").wait_for(timeout=120_000)
                _idle(page, started=True)
            alice, bob = pages["alice"], pages["bob"]
            _go(alice, "Model", "2 · Model")
            _go(alice, "Predict", "3 · Predict")
            alice.get_by_role("button", name="Run prediction").click()
            alice.get_by_text("Predicted 300 of 300 cells").wait_for(timeout=120_000)
            _idle(alice, started=True)
            _go(bob, "Cells", "4 · Cells")
            # alice's results are not bob's: his Cells page asks for his own prediction (or says his own,
            # started ahead for his data, is computing or computed in the background)
            asked = re.compile(r"Run a prediction first|(computing|computed) in the background")
            bob.get_by_text(asked).first.wait_for()
            assert bob.locator("[data-testid='stPlotlyChart']").count() == 0
            sidebar = bob.locator("[data-testid='stSidebar']").inner_text()
            assert "patient_bob.h5ad" in sidebar and "patient_alice" not in sidebar
            _go(alice, "Report", "6 · Report")
            with alice.expect_download() as info:
                alice.get_by_role("button", name="predictions.csv").click()
            assert info.value.suggested_filename.startswith("patient_alice")
            link = info.value.url  # /media/<id>.csv: served while alice is signed in...
            assert "/media/" in link and _status(link) == 200
            sessions = sorted((home / "work" / "sessions").iterdir())
            assert len(sessions) == 2  # one working folder per session
            alice.get_by_role("button", name="Log out").click()
            alice.get_by_label("User name").wait_for()
            assert _status(link) == 404  # ...and dead once she logged out (QA: 200 to anyone, after it)
            log = (home / "streamlit.log").read_text()
            assert "Traceback" not in log, log[-3000:]
        except Exception:
            for who, page in pages.items():
                _shot(page, f"failure_{who}")
            raise
        finally:
            browser.close()


def test_panel_view_scores_three_models_and_downloads(server, chromium, tmp_path):
    """The Drug panel page in a real browser: three models chosen, scored, every figure drawn, the
    panel table downloaded with one column set per drug."""
    url, _data, _home = server
    data = tmp_path / "panel_cells.h5ad"
    make_dataset(1500, seed=31).write_h5ad(data)
    with _contexts(chromium) as browser:
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.get_by_role("heading", name="scATD Studio").first.wait_for()
            _idle(page, started=True)
            _go(page, "Data", "1 · Data")
            page.locator("input[type='file']").first.set_input_files(str(data))
            page.get_by_text("Quality control").wait_for(timeout=120_000)
            _idle(page, started=True)
            _go(page, "Drug panel", "Drug panel")
            picker = page.locator("[data-testid='stMultiSelect']").filter(has_text="Drug models of the panel")
            for k, drug in enumerate(("TESTDRUG",) + PANEL_DRUGS, start=1):
                picker.locator("input").click()
                page.get_by_role("option", name=f"{drug} · Dist_VAE (scATD-sf-dist)").click()
                page.keyboard.press("Escape")
                picker.get_by_text(f"{drug} · Dist_VAE (scATD-sf-dist)").wait_for()
                if k > 1:  # the server's rerun has this choice before the next (a click during it could be lost)
                    page.get_by_role("button", name=f"Score {k} models").wait_for()
                _idle(page, started=k > 1)
            page.get_by_role("button", name="Score 3 models").click()
            page.get_by_text("3 of 3 models scored 1,500 cells").wait_for(timeout=180_000)
            _plots(page, 4)  # heatmap, dot plot, the two rankings
            _idle(page, started=True)
            _no_exception(page)
            page.get_by_role("button", name="Compute the UMAP").click()
            # a plotly chart holds two .main-svg layers, so wait for the UMAP's own control instead
            page.locator("[data-testid='stSelectbox']").filter(has_text="Colour by").wait_for(timeout=240_000)
            _idle(page, timeout=180_000, started=True)
            # at the models' own thresholds the cells called resistant to all are not yet a subclone
            assert page.get_by_role("button", name="Show their top biomarkers").count() == 0
            assert page.get_by_text("at uncalibrated thresholds").count() >= 1
            page.get_by_role("button", name="Calibrate every drug to it").click()
            _idle(page)
            page.get_by_role("button", name="Show their top biomarkers").click()
            page.locator("[data-testid='stDataFrame']").nth(2).wait_for(timeout=120_000)  # models, groups, markers
            _idle(page, started=True)
            _no_exception(page)
            assert page.get_by_text("Something unexpected went wrong").count() == 0
            _shot(page, "10_panel")
            with page.expect_download() as info:
                page.get_by_role("button", name="panel.csv").click()
            target = tmp_path / "panel.csv"
            info.value.save_as(target)
            table = pd.read_csv(target)
            assert len(table) == 1500
            for drug in ("TESTDRUG",) + PANEL_DRUGS:
                assert {f"{drug}_prob_resistant", f"{drug}_label", f"{drug}_calibrated"} <= set(table.columns)
            assert table["n_drugs_resisted"].between(0, 3).all()
            with page.expect_download() as info:
                page.get_by_role("button", name="panel_report.html").click()
            report = tmp_path / "panel_report.html"
            info.value.save_as(report)
            page.route("http*://**", lambda route: route.abort())
            page.goto(report.as_uri())
            _plots(page, 5, timeout=60_000)  # ranking, heatmap and dot plot per grouping, UMAP
            page.screenshot(path=str(SCREENSHOTS / "10_panel_report_html.png"), full_page=True)
        except Exception:
            _shot(page, "failure_panel")
            raise
        finally:
            browser.close()
