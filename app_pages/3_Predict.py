"""Step 3, Predict: device, time estimate, mean or Monte-Carlo mode; progress with the time left, cancel."""

import streamlit as st

from scatd_app import jobs, session, state, ui
from scatd_core._words import counted, sentence_start
from scatd_core import foundation, pl, scaleout
from scatd_core._matrix import stored_fraction
from scatd_core._progress import with_eta
from scatd_core.inputs import left_out_label
from scatd_core.predict import estimate_seconds, lowered_batch_message, score, store, summary, threshold_origin

ss = st.session_state
st.title("3 · Predict")
adata = ss.get(state.ADATA)
if adata is None:
    ui.need("data")
bundle = ui.current_bundle()
if bundle is None and (only := ui.settled_model()) is not None:
    ui.set_bundle(str(only.path))  # the only model offered for these data, as on the Model page: nothing to choose
    bundle = only
if bundle is None:
    ui.need("model")

mask = ui.qc_mask(adata)
if foundation.cells_to_embed(adata, bundle, mask):
    st.info("This model reads foundation-model embeddings of your cells; compute them on the Model page first.",
            icon=":material/info:")
    ui.link("Model", "Go to Model", ":material/arrow_forward:")
    st.stop()
n_run = int(mask.sum()) if mask is not None else adata.n_obs
with st.container(border=True):
    c = st.columns(3)
    c[0].metric("Cells to predict", f"{n_run:,}",
                help="Cells marked as filtered on the Data page are not predicted but stay in every output.")
    c[1].metric("Model", ui.md(bundle.drug or bundle.name), help=ui.md(bundle.title))
    c[1].caption(ui.md(ui.model_title(bundle)))  # which of two models of one drug: in full, wrapped
    c[2].metric("Device", ui.device_text(), help="CUDA when a GPU is present, else the CPU.")
    if mask is not None and (~mask).any():
        n_masked = int((~mask).sum())
        st.caption(f"{counted(n_masked)} {'is' if n_masked == 1 else 'are'} marked 'filtered (QC)' and will not be "
                   "predicted.")
    if bundle.is_demo:
        st.badge("demo model (simulated data)", color="orange")

# ------------------------------------------------------------------ settings
for key, value in ui.PREDICT_DEFAULTS.items():
    ss.setdefault(key, value)
left, mid, right = st.columns(3)
mode = left.radio("Mode", ["mean", "sample"], key="predict_mode", horizontal=True,
                  format_func={"mean": "Deterministic (latent mean)", "sample": "Monte-Carlo (uncertainty)"}.get,
                  help="Deterministic classifies each cell's latent mean: running it again on the same data gives "
                       "the same answer. Monte-Carlo draws latent samples and reports the mean and sd of P(resistant).")
n_samples = mid.slider("Samples per cell", 5, 200, key="predict_samples", step=5, disabled=mode != "sample")
seed = right.number_input("Seed", min_value=0, step=1, key="predict_seed", disabled=mode != "sample")
settings = ui.predict_settings()
token = ui.prediction_token(bundle, settings)
current = state.prediction_current(token)
engine = scaleout.engine_for(adata.n_obs)
if not current:
    estimate = estimate_seconds(bundle, n_run, mode=mode, n_samples=max(2, settings["n_samples"]),
                                density=stored_fraction(adata.X))
    st.caption(f"Estimated time: about {max(1, round(estimate)):,} s on {ui.device_text()}.")
    if engine.reason:
        st.info(ui.md(engine.reason), icon=":material/hub:" if engine.use_ray else ":material/info:")
ahead_note = st.empty()
AHEAD_HELP = ("Nothing is written into your data before you click. The background run gives way as soon as another "
              "computation waits for the server, and stops when you change the data, the QC filter, the model or "
              "these settings.")

# ------------------------------------------------------------------ run
if ui.say_if_stopped(state.PREDICT_RUNNING, "The prediction was stopped before it finished; nothing was changed."):
    ui.decline_prediction_ahead(token)  # and not computed again in the background on the user's behalf

clicked = not current and st.button("Run prediction", type="primary", icon=":material/play_arrow:",
                                    key="btn_run_predict")
if not current and not clicked:
    ui.start_prediction_ahead(adata, bundle)  # while the settings are read; nothing is written until the click
    ahead = ui.prediction_ahead(token)
    if ahead is not None and ahead.future.done() and ahead.future.exception() is None:
        ahead_note.caption("Computed in the background as soon as the data and model were ready: Run prediction "
                           "shows the results at once.", help=AHEAD_HELP)
    elif ahead is not None and not ahead.future.done():  # (done with an error: the click shows it)
        ahead_note.caption(f"Computing in the background since the data and model were ready ({ahead.fraction:.0%} "
                           "done): Run prediction shows the results as soon as they are complete.", help=AHEAD_HELP)
if clicked:
    # The results of an earlier prediction stay as they are until the new ones are complete: a run
    # stopped (Cancel, leaving the page, a reload) or failing changes nothing.
    try:
        with ui.long_run(state.PREDICT_RUNNING, "Preparing the model input…", "btn_cancel_predict") as bar:
            ahead = ui.take_prediction_ahead(token, bar)  # computed ahead for these very settings, if it was
            scores = ahead.scores if ahead is not None else None
            if ahead is None:
                with jobs.computing("the prediction", cancel_button=False):
                    show = with_eta(ui.progress_to(bar))
                    run_args = dict(mask=mask, mode=mode, n_samples=max(2, settings["n_samples"]), seed=int(seed),
                                    progress=show)
                    if engine.use_ray:  # writes its results into the data when all its parts are done
                        scaleout.predict_in_folder(adata, bundle, session.folder() / "scaleout", token, engine,
                                                   **run_args)
                    else:
                        scores = score(adata, bundle, inputs=ui.model_inputs(adata, bundle), **run_args)
            # complete: the old prediction and what came from it go, the new one is written
            state.invalidate("prediction", keep_result=scores is None)
            if scores is not None:
                store(adata, bundle, scores)
            if ahead is not None:
                ui.adopt_ahead_embedding(ahead, token)  # and its UMAP, if one followed it
    except Exception as exc:  # ScatdError: a message for the user; anything else: still no traceback
        ui.show_error(exc)
        ui.stop()
    ss[state.PREDICTION] = token
    current = True

if not state.has_prediction():
    ui.stop()
if not current:
    st.caption("The results shown on the next pages were made with other settings; run again to update them.")
    ui.stop()
st.caption("The results for these data, model and settings are in place; nothing needs recomputing.")
ui.start_embedding(adata)  # the Cells page's UMAP, computed while these results are read

# ------------------------------------------------------------------ summary
info = adata.uns["scatd"]
counts = summary(adata)
thr = info["threshold"]
st.success(f"Predicted {info['n_scored']:,} of {info['n_cells']:,} cells in {info['seconds']:.1f} s "
           f"({info['params']['device']}).", icon=":material/check_circle:")
c = st.columns(4)
c[0].metric("Called resistant", f"{counts['n_resistant']:,}",
            help=None if thr["calibrated"] else f"At {ui.md(thr['detail'])}: not calibrated to these data.")
c[1].metric("Called sensitive", f"{counts['n_sensitive']:,}")
c[2].metric("Not scored", f"{counts['n_not_scored']:,}", help="Cells with no expression in the model's genes, or "
            "values the model cannot take. They keep their row in every output, with the reason.")
c[3].metric(sentence_start(left_out_label(info)), f"{counts['n_filtered']:,}")  # "Filtered (QC)"
if lowered_batch_message(counts):
    st.info(lowered_batch_message(counts), icon=":material/memory:")
if not thr["calibrated"]:
    used = "the model's default threshold" if thr["source"] == "model default" else "a threshold set by hand"
    st.warning(f"These calls use {used}, which is **not calibrated** to your data: the share "
               "called resistant can be far from the truth even when the ranking is good. Calibrate it on the Cells "
               "page (an expected resistant fraction, or a few labelled cells).", icon=":material/tune:")
for warning in info.get("warnings", []):
    st.warning(ui.md(warning), icon=":material/warning:")
for note in info.get("notes", []):  # what the model input did with the values (e.g. un-logged them)
    st.info(ui.md(note), icon=":material/info:")
ui.chart(pl.probability_histogram(adata.obs["scatd_prob_resistant"].to_numpy(), thr["value"],
                                   "Distribution of P(resistant)", thr["calibrated"], threshold_origin(thr)),
         key="predict_hist")
st.divider()
ui.link("Cells", "Next: explore the cells", ":material/arrow_forward:")
