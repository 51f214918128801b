"""Step 3, Predict: device, estimate, mean or Monte-Carlo mode; progress, cancel; cached results."""

import streamlit as st

from scatd_app import state, ui
from scatd_core import report
from scatd_core.errors import ScatdError
from scatd_core.preprocess import QC_KEY

ss = st.session_state
st.title("3 · Predict")
adata = ss.get(state.ADATA)
if adata is None:
    ui.need("data")
bundle = ui.current_bundle()
if bundle is None:
    ui.need("model")

passed = adata.obs[QC_KEY].to_numpy(dtype=bool) if QC_KEY in adata.obs else None
n_run = int(passed.sum()) if passed is not None else adata.n_obs
with st.container(border=True):
    c = st.columns(3)
    c[0].metric("Cells to predict", f"{n_run:,}",
                help="Cells marked as filtered on the Data page are not predicted but stay in every output.")
    c[1].metric("Model", bundle.drug or bundle.name, help=bundle.title)
    c[2].metric("Device", ui.device_text(), help="CUDA when a GPU is present, else the CPU.")
    if passed is not None and (~passed).any():
        st.caption(f"{int((~passed).sum()):,} cell(s) are marked 'filtered (QC)' and will not be predicted.")
    if bundle.is_demo:
        st.badge("demo (simulated data)", color="orange")

# ------------------------------------------------------------------ settings
ss.setdefault("predict_mode", "mean")
ss.setdefault("predict_samples", 50)
ss.setdefault("predict_seed", 0)
left, mid, right = st.columns(3)
mode = left.radio("Mode", ["mean", "sample"], key="predict_mode", horizontal=True,
                  format_func={"mean": "Deterministic (latent mean)", "sample": "Monte-Carlo (uncertainty)"}.get,
                  help="Deterministic classifies each cell's latent mean: the same input always gives the same "
                       "answer. Monte-Carlo draws latent samples and reports the mean and sd of P(resistant).")
n_samples = mid.slider("Samples per cell", 5, 200, key="predict_samples", step=5, disabled=mode != "sample")
seed = right.number_input("Seed", min_value=0, step=1, key="predict_seed", disabled=mode != "sample")
settings = {"mode": mode, "n_samples": int(n_samples) if mode == "sample" else 0, "seed": int(seed)}

token = ui.token_of(ss[state.DATA_TOKEN], str(bundle.path), bundle.manifest.get("weights_sha256", ""),
                    settings, ui.qc_mask_token(adata))
stored = ui.results().get(token)
try:
    estimate = ui.estimate_seconds(ss[state.DATA_TOKEN], str(bundle.path), mode, max(2, settings["n_samples"]),
                                   n_run, adata, bundle)
except ScatdError as exc:  # e.g. no gene of the model in the data: say it before the run
    ui.show_error(exc)
    st.stop()
if stored is None:
    st.caption(f"Estimated time: about {max(1, round(estimate)):,} s on {ui.device_text()}.")

# ------------------------------------------------------------------ run
if ss.get(ui.PREDICT_RUNNING):  # the previous run did not finish: Cancel, or the page was left
    ss[ui.PREDICT_RUNNING] = False
    st.info("The prediction was stopped before it finished; nothing was changed.", icon=":material/block:")

if stored is None and st.button("Run prediction", type="primary", icon=":material/play_arrow:",
                                key="btn_run_predict"):
    bar = st.progress(0.0, text="Preparing the model input…")
    st.button("Cancel", icon=":material/stop:", key="btn_cancel_predict",
              help="Stops the run; nothing is changed.")
    ss[ui.PREDICT_RUNNING] = True
    try:
        stored = report.predict_all_cells(
            adata, bundle, passed=passed, mode=mode, n_samples=max(2, settings["n_samples"]), seed=int(seed),
            progress=lambda fraction, message: bar.progress(min(1.0, fraction), text=message))
    except Exception as exc:  # ScatdError: a message for the user; anything else: still no traceback
        ss[ui.PREDICT_RUNNING] = False
        bar.empty()
        ui.show_error(exc)
        st.stop()
    # Streamlit stops an interrupted run (Cancel, leaving the page) with a BaseException, which
    # skips this line and leaves the flag set for the next run to report.
    ss[ui.PREDICT_RUNNING] = False
    ui.keep_result(token, stored)
    ui.set_result(stored, token, bundle.threshold)
    ss["predict_just_ran"] = True
    st.rerun()  # so the sidebar shows the results
if stored is not None:
    if not ss.pop("predict_just_ran", False):
        st.caption("Results for these data, model and settings are already computed (cached).")
    ui.set_result(stored, token, bundle.threshold)

result = ss.get(state.RESULT)
if result is None or ss.get(state.RESULT_TOKEN) != token:
    if result is not None:
        st.caption("The results shown on the next pages were made with other settings; run again to update them.")
    st.stop()

# ------------------------------------------------------------------ summary
info = result.uns["scatd"]
counts = report.summary(result, ss.get(state.THRESHOLD))
st.success(f"Predicted {info['n_scored']:,} of {info['n_cells']:,} cells in {info['seconds']:.1f} s "
           f"({info['params']['device']}).", icon=":material/check_circle:")
c = st.columns(4)
c[0].metric("Called resistant", f"{counts['n_resistant']:,}")
c[1].metric("Called sensitive", f"{counts['n_sensitive']:,}")
c[2].metric("Not scored", f"{counts['n_not_scored']:,}", help="Cells with no expression in the model's genes, "
            "or non-finite values. They keep their row in every output.")
c[3].metric("Filtered (QC)", f"{counts['n_filtered']:,}")
for warning in info.get("warnings", []):
    st.warning(warning, icon=":material/warning:")
st.plotly_chart(report.probability_histogram(result.obs["scatd_prob_resistant"].to_numpy(), counts["threshold"],
                                             "Distribution of P(resistant)"), key="predict_hist")
st.divider()
ui.link("Cells", "Next: explore the cells", ":material/arrow_forward:")
