"""scATD Studio: start with ``python -m scatd_app`` or ``streamlit run app.py`` (see docs/app.md).

Navigation over the user's path (Data → Model → Predict → Cells → Biomarkers → Report, then the
model library and training), and the sidebar shown on every page.
"""

import logging
from pathlib import Path

import streamlit as st

from scatd_app import auth, preflight, session, state, ui

st.set_page_config(page_title="scATD Studio", page_icon=":material/biotech:", layout="wide")
if preflight.page_refuses():  # a login setting that is not understood: fail closed, before anything else
    st.stop()
ui.sync_upload_limit()
ui.start_up()


def url_path(path: str) -> str:
    """A page's address: ``app_pages/1_Data.py`` is ``/data``."""
    return Path(path).stem.split("_", 1)[1].lower()


user = auth.resolve()
if user is None:  # a login first when the server is reachable from the network: the only page until then,
    # at every page's address (a reload of /data?s=... shows the login, not "Page not found"), which the
    # address keeps, so that the login leads to the page asked for
    login = [st.Page(auth.login_page, title="Log in", icon=":material/lock:", default=True)]
    login += [st.Page(auth.login_page, title="Log in", icon=":material/lock:", url_path=url_path(p[0]))
              for p in (*ui.ANALYSIS_PAGES, *ui.MODEL_PAGES)]
    asked = st.navigation(login, position="hidden")
    auth.asked_for(asked.url_path)  # with OIDC, the sign-in comes back to the home page: it goes on to this one
    asked.run()
    st.stop()
session.begin(user.name)
state.keep_widget_state()


def overview() -> None:
    st.title("scATD Studio")
    st.markdown(
        "Which cells of a tumour will **resist** a cancer drug, and why? scATD Studio scores every cell with "
        "the scATD models (drug-response models trained on bulk cell-line screens, GDSC/CCLE, and transferred "
        "to single cells), maps them, and ranks the genes behind the calls.")
    with st.container(border=True):
        demo_off = ui.demo_module().cell_limit_problem() is not None  # the button says why
        # started by another session (or this one's click, left): say so, not the card of a fresh start
        built = None if demo_off or st.session_state.get(state.IS_DEMO) else ui.build_status("demo")
        if built is not None:
            st.subheader("The demo is being built for this server")
            st.markdown("A simulated 2,000-cell tumour and a model trained on simulated cell lines, labelled "
                        "**demo (simulated data)** everywhere, built once for everyone on this server. It opens "
                        "when it is ready: *Try the demo* follows the build in progress (it does not start "
                        "another) and opens the demo then; meanwhile you can look around, it goes on.")
            if not st.session_state.get("btn_landing_demo"):  # (after a click, the button's bar follows it)
                ui.demo_build_progress()  # drawn again as the build goes on: its step, how far, the time left
        else:
            st.subheader("The demo" if demo_off else "New here? Try the demo")
            st.markdown("A simulated 2,000-cell tumour and a model trained on simulated cell lines, labelled "
                        "**demo (simulated data)** everywhere. "
                        + ("This server's cell limit is below the demo's cells, so it is not offered here."
                           if demo_off else "One click, then follow the pages on the left."))
        if ui.demo_button("btn_landing_demo", st, primary=True):
            st.switch_page(ui.PAGE["Predict"])
    st.subheader("Your own data, in three steps")
    steps = [
        ("Data", "Upload your cells (h5ad, 10x, CSV/TSV, loom) and check quality; say which column, if any, "
                 "holds known responses."),
        ("Model", "Choose a drug model and see how many of its genes your data covers. A real drug model is "
                  "imported (the published scATD checkpoints) or trained on the Train page."),
        ("Predict", "Score every cell, then explore the cells, rank biomarkers and download the report."),
    ]
    ss = st.session_state
    # the steps of *your own* data: the demo's data, model and prediction tick none of them
    own = not ss.get(state.IS_DEMO)
    done = [own and ss.get(state.ADATA) is not None, own and bool(ss.get(state.BUNDLE_PATH)),
            own and state.has_prediction()]
    for i, ((title, text), ok) in enumerate(zip(steps, done), start=1):
        cols = st.columns([0.25, 0.75], vertical_alignment="center")
        with cols[0]:
            ui.link(title, f"{i}. {title}", ":material/check_circle:" if ok else ":material/radio_button_unchecked:")
        cols[1].markdown(text)
    if not own:
        st.caption("The demo is loaded: these steps are ticked once your own data are.")
    cols = st.columns([0.25, 0.75], vertical_alignment="center")
    with cols[0]:
        ui.link("Drug panel", "Several drugs?", ":material/grid_view:")
    cols[1].markdown("Score your cells against a panel of drug models at once and see which drug each cluster or "
                     "sample would resist.")
    usable = [e for e in ui.library_entries() if e.ok and e.bundle.kind == "classifier" and not e.bundle.is_demo]
    st.divider()
    if usable:
        st.markdown(f"**{len(usable)}** drug model(s) installed in the model library.")
    else:
        st.info("No real drug model is installed yet (demo models work only on the demo data). Get the "
                "published scATD models or import your own on the Model library page, or train one.",
                icon=":material/inventory_2:")
    c = st.columns(2)
    with c[0]:
        ui.link("Model library", "Open the model library", ":material/inventory_2:")
    with c[1]:
        ui.link("Train a model", "Train a drug model", ":material/school:")


def page(path: str, title: str, icon: str) -> st.Page:
    return st.Page(path, title=title, icon=icon, url_path=url_path(path))


navigation = st.navigation({
    "scATD Studio": [st.Page(overview, title="Overview", icon=":material/home:", default=True)],
    "Analysis": [page(*p) for p in ui.ANALYSIS_PAGES],
    "Models": [page(*p) for p in ui.MODEL_PAGES],
})
if back_to := auth.page_after_sign_in():  # the page asked for before an OIDC sign-in (one of the app's)
    st.switch_page(back_to)
sidebar = st.sidebar.empty()  # placed first, filled after the page ran (so it shows the page's changes), or
# also before, when the page waits for the demo's build (ui.sidebar_before_wait)
ui.account(st.sidebar.container(), user)  # below it, drawn now: Log out stays usable while the page computes
session.notice()
in_app, sidebar_slot = ui.IN_APP.set(True), ui.SIDEBAR.set(sidebar)
try:
    navigation.run()
except ui.PageEnd:  # the page ended early (ui.stop); the sidebar is still drawn below
    pass
except Exception as exc:  # a bug, not a user error (st.stop/st.rerun are BaseExceptions and pass)
    logging.getLogger("scatd").exception("page %s failed", navigation.title)
    ui.show_error(exc)
finally:
    ui.IN_APP.reset(in_app)
    ui.SIDEBAR.reset(sidebar_slot)
    ui.sidebar(sidebar)
    session.save(user.name)
