"""Benchmark: 10k cells upload -> predict -> UMAP -> report in a real browser, published-size Dist_VAE.

``streamlit run app.py`` driven by headless Chromium (Playwright, Debian's /usr/bin/chromium), with
the server and browser helpers of ``tests/test_browser.py``. The model library holds one
Dist_VAE drug classifier at the published size (19,264 genes, encoder 19264-1664-359, z 421;
random weights, calibrated batch norm: ``_common.make_bundle``). The upload is a 10,000-cell
sparse h5ad over the model's 19,264 genes (~1,500 expressed genes per cell, counts) with a
``response`` label column and a ``sample`` column, written by anndata without compression.

Measured: the **waiting** of a user who clicks on as soon as each result is on screen, step by
step, from the click (or the page link) to the result drawn:

- upload: Data page opened, file chosen, until the QC plots are drawn;
- model: Model page, until the gene coverage is shown;
- predict: Predict page opened, "Run prediction" clicked, until the result and its histogram
  (the app starts a session's first prediction in the background when the Model page has data
  and a model, so this is what is left of it when the user clicks, plus the page);
- cells: Cells page, until the UMAP and the 4 other plots are drawn (UMAP + clusters computed here);
- report: Report page opened, "report.html" clicked, until the download has arrived.

Opening the app (the first page) is reported apart, as in the issue's figures. Each server gets
two walks, each in a new browser (a new session): the first on the freshly started server (it
loads the model and, in the background, the numba kernels, while the user uploads), the second
as the next user of a server that is up. The streamlit process's peak RSS (VmHWM) is read from
/proc after each walk, and its current RSS (VmRSS) 2 s later, and its CPU seconds (user + system, all threads) around each step: on a
shared machine the waiting includes time the server spent waiting for a core, the CPU seconds
do not. The browser's CPU seconds (every Chromium process Playwright started) are read the same
way: here the browser runs on the server's own cores, which a lab deployment does not.

    python benches/bench_e2e.py               # one server, two walks; prints the breakdown and totals
    python benches/bench_e2e.py --servers 3   # three fresh servers
    python benches/bench_e2e.py --launcher module   # servers started by `python -m scatd_app`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from _common import cpu_seconds, descendants_cpu_seconds, gene_names, load_average, make_bundle, sparse_counts  # noqa: E402

N_CELLS = 10_000
STEPS = ("upload", "model", "predict", "cells", "report")


def make_upload(path: Path, n_cells: int = N_CELLS, seed: int = 7) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"response": rng.choice(["resistant", "sensitive"], n_cells),
                        "sample": rng.choice(["S1", "S2", "S3", "S4"], n_cells)},
                       index=[f"cell{i:05d}" for i in range(n_cells)])
    x = sparse_counts(n_cells, seed=seed, skewed=True)
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=gene_names())).write_h5ad(path)


def _rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (``VmHWM``) or current (``VmRSS``) resident memory, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def walk(url: str, data: Path, server_pid: int) -> dict:
    """One user walk; returns seconds of waiting per step."""
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _idle, _no_exception, _plots

    def nav(page, link: str) -> None:
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=link, exact=True).click()

    waits: dict[str, float] = {}
    cpu: dict[str, float] = {}
    browser_cpu: dict[str, float] = {}

    def begin() -> tuple[float, float, float]:
        return time.perf_counter(), cpu_seconds(server_pid), descendants_cpu_seconds("chrom")

    def end(step: str, start: tuple[float, float, float]) -> None:
        waits[step] = time.perf_counter() - start[0]
        cpu[step] = cpu_seconds(server_pid) - start[1]
        browser_cpu[step] = descendants_cpu_seconds("chrom") - start[2]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        page.set_default_timeout(300_000)
        try:
            t0 = begin()
            page.goto(url)
            page.get_by_role("heading", name="scATD Studio").first.wait_for()
            end("open app", t0)
            _idle(page)

            t0 = begin()
            nav(page, "Data")
            page.locator("input[type='file']").first.wait_for(state="attached")
            page.locator("input[type='file']").first.set_input_files(str(data))
            page.get_by_text("Quality control").wait_for()
            _plots(page, 2)
            end("upload", t0)
            _idle(page)
            _no_exception(page)

            t0 = begin()
            nav(page, "Model")
            page.get_by_text("Coverage is good").wait_for()
            end("model", t0)
            _idle(page)

            t0 = begin()
            nav(page, "Predict")
            page.get_by_role("button", name="Run prediction").click()
            page.get_by_text(f"Predicted {N_CELLS:,} of {N_CELLS:,} cells").wait_for()
            _plots(page, 1)
            end("predict", t0)
            _idle(page)
            _no_exception(page)

            t0 = begin()
            nav(page, "Cells")
            page.get_by_text("Leiden clusters").first.wait_for()
            _plots(page, 5)  # UMAP, groups, ROC, PR, confusion
            end("cells", t0)
            _idle(page)
            _no_exception(page)

            t0 = begin()
            nav(page, "Report")
            with page.expect_download() as info:
                page.get_by_role("button", name="report.html").click()
            target = Path(tempfile.mkdtemp()) / "report.html"
            info.value.save_as(target)
            end("report", t0)
            assert target.stat().st_size > 10_000
            _no_exception(page)
        finally:
            browser.close()
    waits["server_peak_rss_mb"] = _rss_mb(server_pid)
    time.sleep(2.0)  # the last page's run ends
    waits["server_rss_after_mb"] = _rss_mb(server_pid, "VmRSS")
    waits["server_cpu_s"] = cpu
    waits["browser_cpu_s"] = browser_cpu
    return waits


def run_once(home: Path, data: Path, walks: int = 2, launcher: str = "streamlit") -> list[dict]:
    from test_browser import _free_port, _wait_healthy, app_command

    port = _free_port()
    env = {**os.environ, "SCATD_HOME": str(home), "SCATD_MAX_UPLOAD_MB": "1000"}
    env.pop("SCATD_MODEL_LIBRARY", None)
    log = open(home / "streamlit.log", "w")
    started = time.perf_counter()
    proc = subprocess.Popen(app_command(launcher, port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait_healthy(url, proc, log=home / "streamlit.log")  # the module launcher: as long as it loads
        listening = time.perf_counter() - started
        print(f"server ({launcher}) listening after {listening:.1f} s", file=sys.stderr, flush=True)
        for i in range(walks):
            waits = walk(url, data, proc.pid)
            waits["walk"] = "first user, fresh server" if i == 0 else "next user"
            waits["total_waiting_s"] = sum(waits[s] for s in STEPS)
            waits["total_server_cpu_s"] = sum(waits["server_cpu_s"][s] for s in STEPS)
            waits["total_browser_cpu_s"] = sum(waits["browser_cpu_s"][s] for s in STEPS)
            waits["load"] = load_average()
            waits["launcher"], waits["server_listening_s"] = launcher, round(listening, 1)
            rows.append(waits)
            print(json.dumps(waits), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--walks", type=int, default=2, help="walks (new browser sessions) per server")
    parser.add_argument("--launcher", choices=("streamlit", "module"), default="streamlit",
                        help="start the server as `streamlit run app.py` (loads the libraries when the first user "
                             "opens the app) or `python -m scatd_app` (loads them before it listens)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "scatd_home"
        (home / "models").mkdir(parents=True)
        make_bundle(home / "models")
        data = Path(tmp) / "tumour_10k.h5ad"
        make_upload(data)
        print(f"upload: {data.stat().st_size / 2**20:.0f} MB h5ad, {N_CELLS:,} cells x 19,264 genes", file=sys.stderr)
        for _ in range(args.servers):
            rows += run_once(home, data, args.walks, args.launcher)
    print("Seconds of waiting per step (the server's CPU seconds in that step, all threads, in brackets)")
    print()
    print("| walk | " + " | ".join(STEPS) + " | **total waiting s** | server CPU s | browser CPU s | open app s "
          "| server peak RSS MB | server RSS after MB | load |")
    print("|---|" + "---:|" * len(STEPS) + "---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        cpu = r["server_cpu_s"]
        print(f"| {r['walk']} | " + " | ".join(f"{r[s]:.1f} ({cpu[s]:.1f})" for s in STEPS)
              + f" | **{r['total_waiting_s']:.1f}** | {r['total_server_cpu_s']:.1f} | {r['total_browser_cpu_s']:.1f} | "
              f"{r['open app']:.1f} | {r['server_peak_rss_mb']:,.0f} | {r['server_rss_after_mb']:,.0f} | "
              f"{r['load'].split(' on')[0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
