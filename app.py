"""scATD Studio: start with ``streamlit run app.py`` (see docs/app.md).

Navigation over the user's path (Data → Model → Predict → Cells → Biomarkers → Report, then the
model library and training), and the sidebar shown on every page.
"""

import logging
from pathlib import Path

import streamlit as st

from scatd_app import state, ui

st.set_page_config(page_title="scATD Studio", page_icon=":material/biotech:", layout="wide")
ui.sync_upload_limit()
ui.warm_up_umap()
ui.keep_widget_state()


def overview() -> None:
    st.title("scATD Studio")
    st.markdown(
        "Predict which single cells of a tumour are **resistant** or **sensitive** to a cancer drug, "
        "with the scATD models: drug-response models trained on bulk cell-line screens (GDSC/CCLE) and "
        "transferred to single cells.")
    ss = st.session_state
    steps = [
        ("Data", "Upload your cells (h5ad, 10x, CSV/TSV, loom) and check quality.", ss.get(state.ADATA) is not None),
        ("Model", "Choose a drug model; see how many of its genes your data covers.", bool(ss.get(state.BUNDLE_PATH))),
        ("Predict", "Score every cell, on the GPU if there is one.", ss.get(state.RESULT) is not None),
        ("Cells", "Explore the UMAP, set the threshold, compare with known labels.", False),
        ("Biomarkers", "Which genes push cells toward resistance.", ss.get(state.EXPLAIN) is not None),
        ("Report", "Download the tables, the annotated h5ad and an HTML report.", False),
    ]
    for i, (title, text, done) in enumerate(steps, start=1):
        cols = st.columns([0.25, 0.75], vertical_alignment="center")
        with cols[0]:
            ui.link(title, f"{i}. {title}", ":material/check_circle:" if done else ":material/radio_button_unchecked:")
        cols[1].markdown(text)
    entries = ui.library_entries()
    usable = [e for e in entries if e.ok and e.bundle.kind == "classifier"]
    st.divider()
    if usable:
        st.markdown(f"**{len(usable)}** drug model(s) installed in the model library.")
    else:
        st.warning("No drug model is installed yet. Import an original scATD checkpoint or train one "
                   "in the model library.", icon=":material/warning:")
    ui.link("Model library", "Open the model library", ":material/inventory_2:")


def page(path: str, title: str, icon: str) -> st.Page:
    return st.Page(path, title=title, icon=icon, url_path=Path(path).stem.split("_", 1)[1].lower())


navigation = st.navigation({
    "scATD Studio": [st.Page(overview, title="Overview", icon=":material/home:", default=True)],
    "Analysis": [page(*p) for p in ui.ANALYSIS_PAGES],
    "Models": [page(*p) for p in ui.MODEL_PAGES],
})
# Drawn before the page (nothing can be drawn after a page calls st.stop()); pages that change
# what it shows (data, model, results) rerun the script once so it is current.
ui.sidebar(st.sidebar.container())
try:
    navigation.run()
except Exception as exc:  # a bug, not a user error: a message here, the traceback in the server log
    logging.getLogger("scatd").exception("page %s failed", navigation.title)
    ui.show_error(exc)
