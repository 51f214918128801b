"""Load test: N people at once on one scATD Studio server, each upload -> predict -> report.

Starts ``streamlit run app.py`` (password login, the default queue of ``server.max_jobs`` = 2)
with a small trained test model, then drives N headless Chromium sessions concurrently
(Playwright's async API, one browser context and one user account per session). Each session
logs in, uploads its own dataset (distinct cells), runs the prediction and downloads
``predictions.csv``. Reported per N: sessions completed, p50/p95 latency from upload to
download, the server's peak memory (RSS of the Streamlit process, sampled every 0.2 s), and
whether every session got exactly its own, complete and correct results (the CSV must equal,
byte for byte, the Python API's on that session's file).

    python benches/load_test.py                 # N = 2, 5, 10
    python benches/load_test.py --sessions 2    # one N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
N_CELLS = 1500


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(home: Path, n: int) -> list[tuple[str, str, Path, bytes]]:
    """The model, n users and n datasets, and what the API says each prediction should be."""
    from _app_helpers import make_bundle, make_dataset
    from scatd_core import export, io, users
    from scatd_core.bundle import load_bundle
    from scatd_core.predict import predict

    make_bundle(home / "models" / "testdrug_dist_vae", make_dataset(600, seed=0))
    bundle = load_bundle(home / "models" / "testdrug_dist_vae")
    out = []
    for i in range(n):
        name, password = f"user{i}", f"password number {i:03d}"
        users.add_user(name, password, path=home / "users.toml")
        adata = make_dataset(N_CELLS, seed=100 + i)
        adata.obs_names = [f"s{i}_{c}" for c in adata.obs_names]
        path = home / f"patient_{i}.h5ad"
        adata.write_h5ad(path)
        expected = io.read(path)
        predict(expected, bundle)
        csv = export.to_csv_bytes(export.predictions_table(expected, ["response", "sample"], label_column="response"))
        out.append((name, password, path, csv))
    return out


async def one_session(browser, url: str, name: str, password: str, data: Path, idle) -> tuple[float, bytes]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(600_000)
    await page.goto(url)
    await page.get_by_label("User name").fill(name)
    await page.get_by_role("textbox", name="Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_text(f"Logged in as {name}").wait_for()
    nav = page.locator("[data-testid='stSidebarNav']")
    await nav.get_by_role("link", name="Data", exact=True).click()
    await idle(page)
    t0 = time.perf_counter()
    await page.locator("input[type='file']").first.set_input_files(str(data))
    await page.get_by_text("Quality control").wait_for()
    await idle(page)
    await nav.get_by_role("link", name="Model", exact=True).click()
    await page.get_by_text("Coverage is good").wait_for()
    await idle(page)
    await nav.get_by_role("link", name="Predict", exact=True).click()
    await idle(page)
    await page.get_by_role("button", name="Run prediction").click()
    await page.get_by_text(f"Predicted {N_CELLS:,} of {N_CELLS:,} cells").wait_for()
    await idle(page)
    await nav.get_by_role("link", name="Report", exact=True).click()
    await idle(page)
    async with page.expect_download() as info:
        await page.get_by_role("button", name="predictions.csv").click()
    download = await info.value
    body = Path(await download.path()).read_bytes()
    seconds = time.perf_counter() - t0
    await context.close()
    return seconds, body


async def run(url: str, sessions) -> list:
    from playwright.async_api import async_playwright

    async def idle(page):
        await page.wait_for_timeout(300)
        await page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=600_000)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        results = await asyncio.gather(*(one_session(browser, url, n, pw, d, idle) for n, pw, d, _ in sessions),
                                       return_exceptions=True)
        await browser.close()
    return results


def measure(n: int) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix="scatd-load-") as tmp:
        home = Path(tmp)
        sessions = prepare(home, n)
        port = _free_port()
        env = {**os.environ, "SCATD_HOME": str(home), "SCATD_AUTH": "password"}
        env.pop("SCATD_MODEL_LIBRARY", None)
        log = open(home / "streamlit.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        peak, stop = [0], threading.Event()

        def sample():
            server = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], server.memory_info().rss)
                except psutil.Error:
                    pass
                time.sleep(0.2)

        try:
            for _ in range(180):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            results = asyncio.run(run(url, sessions))
            wall = time.perf_counter() - t0
            stop.set()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        ok = [r for r in results if not isinstance(r, BaseException)]
        latencies = sorted(s for s, _ in ok)
        own = all(not isinstance(r, BaseException) and r[1] == expected
                  for r, (_n, _p, _d, expected) in zip(results, sessions))
        errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
        traceback = "Traceback" in (home / "streamlit.log").read_text()
        return {"sessions": n, "completed": len(ok), "wall_s": round(wall, 1),
                "p50_s": round(statistics.median(latencies), 1) if latencies else None,
                "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1) if latencies
                else None, "peak_server_rss_mb": round(peak[0] / 2**20), "own_correct_results": own,
                "server_traceback": traceback, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[2, 5, 10])
    args = parser.parse_args()
    rows = []
    for n in args.sessions:
        row = measure(n)
        print(row, flush=True)
        rows.append(row)
    print("\n| sessions | completed | wall s | p50 s | p95 s | peak server RSS (MB) | each got its own correct results |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['sessions']} | {r['completed']} | {r['wall_s']} | {r['p50_s']} | {r['p95_s']} | "
              f"{r['peak_server_rss_mb']:,} | {'yes' if r['own_correct_results'] else 'NO'} |")


if __name__ == "__main__":
    main()
