"""Drug panel: score the data against several drug models at once and see where each drug would fail."""

import numpy as np
import pandas as pd
import streamlit as st

from scatd_app import auth, jobs, state, ui
from scatd_core import embed, export, panel, pl
from scatd_core._keys import CLUSTER, EMBED, PANEL_RESISTANT_TO_ALL, UMAP
from scatd_core._progress import with_eta
from scatd_core.errors import ScatdError
from scatd_core.predict import set_threshold

ss = st.session_state
st.title("Drug panel")
st.caption("Which of these drugs would this tumour, and which of its subclones, resist? Score the cells against "
           "several drug models in one run: the data are aligned once per gene set, then each model makes one pass.")
adata = ss.get(state.ADATA)
if adata is None:
    ui.need("data")
user = auth.current_user()
user_name = user.name if user else None
demo_data = bool(ss.get(state.IS_DEMO))
classifiers = {str(e.bundle.path): e.bundle for e in ui.library_entries()
               if e.ok and e.bundle.kind == "classifier" and (demo_data or not e.bundle.is_demo)}

# ------------------------------------------------------------------ choosing the models
with st.container(border=True):
    st.subheader("Models")
    if demo_data:
        if st.button("Use the demo panel (3 simulated drugs)", key="btn_panel_demo", icon=":material/science:",
                     help="DEMOTINIB, DEMOPLATIN and DEMOLIMUS, trained on a simulated cell-line screen. The two "
                          "extra models are trained once per server on first use (about a minute each on 2 CPU cores, "
                          "longer on a busy server; the progress is shown)."):
            bar = st.progress(0.0, text="Preparing the demo panel…")
            try:  # built once per server, in its thread: leaving the page does not stop it
                bundles = ui.shared_build("demo panel", lambda report: ui.demo_module().ensure_panel(progress=report),
                                          bar, "the demo panel")
            except ScatdError as exc:
                ui.show_error(exc)
            else:
                ui.clear_library_cache()
                ss["panel_models"] = [str(b.path) for b in bundles]
                ss[state.PANEL_CHOSEN] = ui.model_identities(bundles)
                st.rerun()
            bar.empty()
    saved = {}
    try:
        saved = panel.list_panels(user_name)
    except ScatdError as exc:
        ui.show_error(exc)
    # the messages above the list and the models are drawn in slots of their own, there on every run (empty or
    # not): the elements below keep their places, so the "Save these models" expander stays open (QA: pressing
    # Enter in its name box, once a "Left out" warning had gone, collapsed it and hid "Save panel")
    said_slot = st.empty()
    if said := ss.pop("panel_saved_said", None):  # a save or a delete, said after the rerun that shows it
        said_slot.success(said, icon=":material/check_circle:")
    if saved:
        c = st.columns([0.6, 0.2, 0.2], vertical_alignment="bottom")
        if ss.get("panel_saved") is not None and ss["panel_saved"] not in saved:
            ss.pop("panel_saved")  # deleted meanwhile (another tab): not offered (before the selectbox is drawn)
        chosen_panel = c[0].selectbox("Your saved panels", list(saved), key="panel_saved", index=None,
                                      placeholder="choose a saved panel")
        # deleting asks first, for this panel only (a tick for another panel, or left from before, is not kept)
        sure = chosen_panel is not None and st.checkbox(
            f"Yes, delete my saved panel '{ui.md(chosen_panel)}' ({ui.md(panel.saved_panel_drugs(saved[chosen_panel]))})"
            " (the models stay in the library)", key=f"panel_delete_sure_{chosen_panel}_{ss.get('panel_deletes', 0)}")
        if c[2].button("Delete it", key="btn_panel_delete", disabled=not sure,
                       help="Tick the box below the list first.") and sure:
            try:
                deleted, record = panel.delete_panel(chosen_panel, user_name)
            except ScatdError as exc:
                ui.show_error(exc)
            else:
                ss.pop("panel_saved", None)
                ss["panel_deletes"] = ss.get("panel_deletes", 0) + 1
                named = ss.get("panel_named")
                cleared = bool(named) and str(named[0]).casefold() == deleted.casefold()
                if cleared:  # its models, as loaded: no longer chosen
                    ss["panel_models"] = []
                    ss.pop(state.PANEL_CHOSEN, None)
                    ss.pop("panel_named", None)
                ss["panel_saved_said"] = (f"Deleted your saved panel '{ui.md(deleted)}' "
                                          f"({ui.md(panel.saved_panel_drugs(record))}); the models stay in the library"
                                          + ("; they are no longer chosen below." if cleared else "."))
                st.rerun()
        if c[1].button("Load it", key="btn_panel_load", disabled=chosen_panel is None):
            try:  # each member checked: a model removed, or another model in its folder since, is left out
                loaded, problems = panel.load_panel(chosen_panel, user_name)
            except ScatdError as exc:
                loaded, problems = [], []
                ui.show_error(exc)
            ss["panel_models"] = [str(b.path) for b in loaded if str(b.path) in classifiers]
            ss["panel_named"] = [chosen_panel, sorted(ss["panel_models"])]  # its name, while these are the models
            # its drugs that could not be loaded: named in the results and files, not silently dropped
            ss["panel_lost"] = panel.lost_from_saved_panel(saved[chosen_panel], loaded, problems) if loaded else []
            ss[state.PANEL_CHOSEN] = ui.model_identities(loaded)  # the saved panel's models, as checked
            ss["panel_left_out"] = [chosen_panel, problems] if problems else None
    # what a load left out stays said while that panel is the one chosen
    left_out, left_out_slot = ss.get("panel_left_out"), st.empty()
    if left_out and ss.get("panel_named") and ss["panel_named"][0] == left_out[0]:
        left_out_slot.warning(f"Left out of your panel '{ui.md(left_out[0])}' when it was loaded:\n\n"
                              + "\n".join(f"- {ui.md(p)}" for p in left_out[1]), icon=":material/warning:")
    # each model chosen carries which model its folder held then: one removed since, or another model in its
    # folder (removed, and another took its name), is said and left out, never scored in its place
    recorded = ss.get(state.PANEL_CHOSEN) or {}
    kept, problems = panel.recheck_chosen({p: recorded.get(p) for p in ss.get("panel_models", [])},
                                          ui.library_entries())
    gone_slot = st.empty()
    if problems:
        gone_slot.warning("No longer in the models you had chosen (left out):\n\n"
                          + "\n".join(f"- {ui.md(p)}" for p in problems), icon=":material/inventory_2:")
    names = ui.model_names()  # each model's one name, as the Model and Models pages say it
    n_demo = 0 if demo_data else sum(e.ok and e.bundle.kind == "classifier" and e.bundle.is_demo
                                      for e in ui.library_entries())
    if too_few := panel.too_few_models([names.get(p, classifiers[p].title) for p in classifiers],
                                       n_demo_hidden=n_demo, demo_data=demo_data):
        st.warning(ui.md(too_few), icon=":material/inventory_2:")  # no panel to choose: how to get more models
        c = st.columns(2)
        with c[0]:
            ui.link("Model library", "Model library: get or import models", ":material/inventory_2:")
        with c[1]:
            ui.link("Train a model", "Train a model", ":material/school:")
        ui.stop()
    ss["panel_models"] = [p for p in kept if p in classifiers]
    # a model that cannot predict is offered (it is part of a saved panel, say), marked by why: short, so that
    # the choice stays readable ("NOSTYLE · VAE_sf (scATD-sf) · skipped: no AdaIN statistics (bulk embeddings)")
    labels = {p: names.get(p, classifiers[p].title) + (
        f" · skipped: {classifiers[p].prediction_problem.removeprefix('cannot predict: ')}"
        if classifiers[p].prediction_problem else "") for p in classifiers}
    paths = st.multiselect("Drug models of the panel (two or more)", list(classifiers), key="panel_models",
                           format_func=ui.detached(lambda p: labels[p]),
                           help="Any backbones and gene sets: each model is aligned to the data separately, and "
                                "a model that cannot score these data is reported and skipped.")
    ss[state.PANEL_CHOSEN] = {p: recorded.get(p) or ui.model_identities([classifiers[p]])[p] for p in paths}
    with st.expander("Save these models as a panel (only you see your panels)"):
        c = st.columns([0.7, 0.3], vertical_alignment="bottom")
        # a change of the name (even of its case) gives a new, unticked "Replace it" box: each replace is ticked for
        # the name it replaces (QA r1: ticked for 'real10', it stayed ticked when 'REAL10' was typed)
        name = c[0].text_input("Panel name", key="panel_name", max_chars=64, on_change=ui.detached(
            lambda: ss.__setitem__("panel_saves", ss.get("panel_saves", 0) + 1)))
        existing = panel.find_saved(saved, name)  # whatever its case: "Keepme" is "keepme"
        # a saved panel of this name is replaced only when asked, saying which models it holds (QA: a CLI-saved
        # 9-drug panel was replaced by 3 demo drugs, unasked)
        replace = existing is not None and st.checkbox(
            f"Replace it: your saved panel '{ui.md(existing)}' ({ui.md(panel.saved_panel_drugs(saved[existing]))}) "
            "becomes these models", key=f"panel_replace_{existing}_{ss.get('panel_saves', 0)}")
        if c[1].button("Save panel", key="btn_panel_save", disabled=len(paths) < panel.MIN_MODELS or not name):
            try:
                panel.save_panel(name, [classifiers[p].path.name for p in paths], user_name, replace=replace)
            except ScatdError as exc:
                ui.show_error(exc)
            else:
                ss["panel_named"] = [name.strip(), sorted(paths)]
                ss["panel_lost"] = []  # these models, all of them loaded: no drug of the panel was lost
                ss["panel_saves"] = ss.get("panel_saves", 0) + 1  # a new, unticked "Replace it" box: asked again
                ss["panel_saved_said"] = f"{'Replaced' if replace else 'Saved'} your panel '{ui.md(name.strip())}'."
                st.rerun()  # "Your saved panels" above lists it now (it was read before the save)

if len(paths) < panel.MIN_MODELS:
    st.info("Choose at least two drug models (three or more make a useful panel).", icon=":material/touch_app:")
    ui.stop()

# ------------------------------------------------------------------ run
mask = ui.qc_mask(adata)
bundles, notes = panel.check_models([classifiers[p] for p in paths])
for note in notes:
    st.warning(ui.md(note), icon=":material/content_copy:")
# the same models in another order give the same results (shown in the order they were scored)
token = ui.token_of(ui.prediction_token(min(bundles, key=lambda b: str(b.path)), {}), panel.run_signature(bundles))
current = ss.get(state.PANEL) == token and "scatd_panel" in adata.uns
ui.say_if_stopped(state.PANEL_RUNNING, "The panel was stopped before it finished; no partial results were kept.")
before_run = st.empty()  # the run button and what it is about to do: gone once the results shown are current
with before_run.container():
    if not current and (ray_note := panel.scaleout_note(adata.n_obs)):
        st.caption(ui.md(ray_note))
    # the button counts the models that can score (a model known to be skipped is not among them)
    skips = {} if current else panel.known_skips(adata, bundles, app=True)
    if skips:
        names = panel.distinct_drugs([b.drug or b.name for b in bundles])
        st.warning(f"{len(skips)} of the {len(bundles)} models chosen will be skipped when the panel is scored:\n"
                   + "\n".join(f"- **{ui.md(names[i])}**: {ui.md(why)}" for i, why in skips.items()),
                   icon=":material/block:")
    n_scoring = len(bundles) - len(skips)
    clicked = not current and st.button(f"Score {n_scoring} of {len(bundles)} models" if skips else
                                        f"Score {len(bundles)} models", type="primary", icon=":material/play_arrow:",
                                        key="btn_panel_run", disabled=n_scoring == 0)
if clicked:
    try:
        with ui.long_run(state.PANEL_RUNNING, "Aligning the data…", "btn_cancel_panel",
                         "Stops the run; no partial results are kept.") as bar:
            with jobs.computing("the panel", cancel_button=False):
                named = ss.get("panel_named")  # a saved panel's drugs not loaded, while its models are these
                panel.predict_panel(adata, bundles, mask=mask, progress=with_eta(ui.progress_to(bar)),
                                    not_loaded=ss.get("panel_lost") or [] if named and named[1] == sorted(paths)
                                    else [])
    except ScatdError as exc:
        ss.pop(state.PANEL, None)
        ui.show_error(exc)
        ui.stop()
    ss[state.PANEL] = token
    ss.pop(state.PANEL_MARKERS, None)
    current = True
    before_run.empty()
if not current:
    if "scatd_panel" in adata.uns:
        st.caption("A panel was scored earlier with other models or settings; its results are hidden until you "
                   "score the models chosen above.")
    ui.stop()

# ------------------------------------------------------------------ models and thresholds
everyone = panel.members(adata, scored_only=False)
scored = [m for m in everyone if m.scored]
done = panel.run_statement(adata)
warned = panel.model_warnings(adata)
if warned:  # each model's own warnings (few of its genes in the data ...), next to its drug: not a green tick
    st.warning(ui.md(f"{done} {panel.warnings_summary(adata)}") + "\n\n"
               + "\n".join(f"- **{ui.md(drug)}**: {ui.md(w)}" for drug, w in warned), icon=":material/warning:")
else:
    st.success(done, icon=":material/check_circle:")
for m in everyone:
    if not m.scored:
        st.warning(f"**{ui.md(m.drug)}** (model {ui.md(m.folder)}) was skipped: "
                   f"{ui.md(m.problem_app or m.problem)}", icon=":material/block:")
for drug, why in panel.not_scored(adata, app=True)[sum(not m.scored for m in everyone):]:
    st.warning(f"**{ui.md(drug)}** of your saved panel was not loaded, so not scored: {ui.md(why)}",
               icon=":material/block:")
if requested := panel.requested_statement(adata):  # every drug requested, scored or not, is in the files
    st.caption(ui.md(f"{requested} Each is in the downloads, its columns empty ('drug not scored' in "
                     "panel.csv); why, once per drug, in panel_drugs.csv."))
ui.panel_models_table(export.panel_models_table(adata, app=True))
if any(m.demo for m in scored):
    st.badge("demo models (simulated data)", color="orange")


def calibrate_all(per_drug: bool = False) -> None:
    if per_drug:
        panel.calibrate_panel(adata, per_drug={m.drug: float(ss[f"panel_fraction_{m.key}"]) for m in scored})
    else:
        panel.calibrate_panel(adata, float(ss["panel_expected_fraction"]))
    ss.pop(state.PANEL_MARKERS, None)


def defaults_all() -> None:
    for m in scored:
        set_threshold(adata, float(adata.uns[m.key]["model"]["default_threshold"]), "model default", key_added=m.key)
    panel.refresh(adata)
    ss.pop(state.PANEL_MARKERS, None)


c = st.columns([0.4, 0.3, 0.3], vertical_alignment="bottom")
ss.setdefault("panel_expected_fraction", 0.3)
c[0].number_input(panel.FRACTION_LABEL, 0.01, 0.99, step=0.05, key="panel_expected_fraction")
c[1].button(panel.CALIBRATE_LABEL, key="btn_panel_calibrate", on_click=ui.detached(calibrate_all))
c[2].button("Back to the model defaults", key="btn_panel_defaults", on_click=ui.detached(defaults_all))
with st.expander(f"{panel.PER_DRUG_LABEL} (e.g. from a bulk assay of this tumour)"):
    cols = st.columns(min(len(scored), 4))
    for i, m in enumerate(scored):
        ss.setdefault(f"panel_fraction_{m.key}", float(ss["panel_expected_fraction"]))
        cols[i % len(cols)].number_input(m.drug, 0.01, 0.99, step=0.05, key=f"panel_fraction_{m.key}")
    st.button("Calibrate each drug to its own fraction", key="btn_panel_calibrate_each",
              on_click=ui.detached(calibrate_all), args=(True,))
for note in panel.comparison_notes(adata, app=True, on_page=True):
    st.warning(ui.md(note), icon=":material/tune:")

# ------------------------------------------------------------------ one drug against the labels
label_column = ss.get(state.LABEL_COLUMN)
if label_column and label_column in adata.obs:
    # a label column records the response to one drug: its AUROC, as a single prediction of that model gives it
    no_drug = "none of them"
    label_drug = st.selectbox(f"Which drug's response do the labels of '{ui.md(label_column)}' record?",
                              [no_drug] + [m.drug for m in scored], key="panel_label_drug",
                              help="Its calls are scored against these labels (AUROC with its 95% interval), as on "
                                   "the Cells page for a single prediction of that model; the other drugs are not.")
    found = panel.set_label_drug(adata, None if label_drug == no_drug else label_drug, label_column)
    if found and found.get("problem"):
        st.warning(ui.md(panel.label_statement(found)), icon=":material/warning:")
    elif found:
        st.metric(f"AUROC of {ui.md(label_drug)} against '{ui.md(label_column)}'", f"{found['auroc']:.3f}",
                  help=f"95% interval {found['auroc_ci_low']}-{found['auroc_ci_high']} (Hanley-McNeil)")
        st.caption(ui.md(panel.label_statement(found)))
        for note in found["notes"]:
            st.caption(ui.md(note))

# ------------------------------------------------------------------ groups, heatmap, dot plot
groups = ([CLUSTER] if CLUSTER in adata.obs else []) + [
    c for c in [ss.get(state.SAMPLE_COLUMN)] + list(adata.obs.columns)
    if c and not str(c).startswith("scatd_") and c != ss.get(state.LABEL_COLUMN)
    and not pd.api.types.is_float_dtype(adata.obs[c]) and 1 < adata.obs[c].nunique() <= 50]
groups = list(dict.fromkeys(groups))
names = {CLUSTER: "Leiden cluster"}
prob, drugs = panel.probability_matrix(adata)
drug_thresholds = panel.thresholds(adata)  # each drug's colours are relative to the threshold its calls use
st.subheader("Cells x drugs")
if groups:
    if ss.get("panel_group") not in groups:
        ss["panel_group"] = ss.get(state.SAMPLE_COLUMN) if ss.get(state.SAMPLE_COLUMN) in groups else groups[0]
    group = st.selectbox("Order and summarise by", groups, key="panel_group",
                         format_func=ui.detached(lambda g: names.get(g, g)))
    summary = panel.group_summary(adata, group)
    order = list(dict.fromkeys(summary["group"]))
    ui.chart(pl.panel_heatmap(prob, drugs, panel.group_values(adata, group), names.get(group, group), order,
                              thresholds=drug_thresholds), key="panel_heatmap")
    left, right = st.columns([0.55, 0.45])
    ui.chart(pl.panel_dotplot(summary, names.get(group, group), f"Fraction resistant per {names.get(group, group)}",
                              thresholds=drug_thresholds), key="panel_dots", where=left)
    with right:
        ui.group_table(summary, height=360)
else:
    group = None
    ui.chart(pl.panel_heatmap(prob, drugs, None, None, thresholds=drug_thresholds),
             key="panel_heatmap")  # by mean P(resistant)
    st.caption("No cluster or sample column to order the cells by.")

# ------------------------------------------------------------------ ranking
st.subheader("Which drug?")
left, right = st.columns(2)
ui.chart(pl.drug_ranking_figure(panel.drug_ranking(adata), panel.ranking_title(adata, "Whole sample"),
                                thresholds=drug_thresholds), key="panel_rank_all", where=left)
if (whole_caveat := panel.whole_sample_caveat(adata)) is not None:
    left.caption(ui.md(whole_caveat))
if group is not None:
    values = list(dict.fromkeys(summary["group"]))
    if ss.get("panel_group_value") not in values:
        ss["panel_group_value"] = values[0]
    chosen = right.selectbox(f"For one {ui.md(names.get(group, group))}", values, key="panel_group_value")
    in_group = (panel.group_values(adata, group).astype(str) == chosen).to_numpy()
    ui.chart(pl.drug_ranking_figure(panel.drug_ranking(adata, in_group),
                                    panel.ranking_title(adata, f"{names.get(group, group)} {chosen}"),
                                    thresholds=drug_thresholds), key="panel_rank_group", where=right)
caveat = panel.ranking_caveat(adata, app=True, on_page=True)
if caveat:
    st.caption(ui.md(f"{pl.UNCALIBRATED_MARK} {caveat}"))

# ------------------------------------------------------------------ UMAP
st.subheader("UMAP")
if UMAP not in adata.obsm:
    before_umap = st.empty()  # what there is to do before a UMAP: gone once it is drawn
    with before_umap.container():
        st.caption("No UMAP yet: compute one from the expression (or open the Cells page after a single-model "
                   "prediction, whose latent UMAP is used here too).")
        ui.say_if_stopped(state.PANEL_UMAP_RUNNING, "The UMAP was stopped before it finished.")
        umap_clicked = st.button("Compute the UMAP", key="btn_panel_umap")
    if umap_clicked:
        try:
            with ui.long_run(state.PANEL_UMAP_RUNNING, f"UMAP of {adata.n_obs:,} cells…", "btn_cancel_panel_umap") \
                    as bar, jobs.computing("the UMAP", cancel_button=False):
                panel.embed_expression(adata, progress=ui.progress_to(bar))
        except ScatdError as exc:
            ui.show_error(exc)
        else:
            before_umap.empty()
if UMAP in adata.obsm:
    options = {"number of drugs resisted": (panel.n_resisted_values(adata), False, (0, len(scored)), "Reds"),
               "resistant to every drug": (np.where(adata.obs[PANEL_RESISTANT_TO_ALL], "resistant to every drug",
                                                    "other"), True, None, None)}
    for m in scored:
        options[f"P(resistant): {m.drug}"] = (adata.obs[f"{m.key}_prob_resistant"].to_numpy(), False, (0.0, 1.0),
                                              pl.PROB_SCALE)
    if ss.get("panel_colour") not in options:
        ss["panel_colour"] = "number of drugs resisted"
    colour = st.selectbox("Colour by", list(options), key="panel_colour")
    values, categorical, crange, scale = options[colour]
    if colour == "number of drugs resisted":  # a whole count: one colour per number, not a colour bar
        fig = pl.count_umap_figure(np.asarray(adata.obsm[UMAP]), values, len(scored), name="drugs resisted",
                                   cell_ids=adata.obs_names.astype(str), notes_below=True)
    else:
        drug_thr = {f"P(resistant): {m.drug}": float(adata.uns[m.key]["threshold"]["value"]) for m in scored}
        fig = pl.umap_figure(np.asarray(adata.obsm[UMAP]), values, name=colour, categorical=categorical,
                             color_range=crange, colorscale=scale or pl.PROB_SCALE,
                             cell_ids=adata.obs_names.astype(str), threshold=drug_thr.get(colour),
                             notes_below=True)  # under the chart as text: wraps on a phone
    ui.chart(fig, key="panel_umap")
    if colour == "number of drugs resisted" and np.isnan(values).any():  # only when some cell is grey
        st.caption(f"Grey, '{pl.NO_COUNT}': cells QC-filtered or left out by every model.")
    if embed.is_data_umap(adata):  # none of scATD's: the UMAP the data brought, drawn as it is
        st.caption(ui.md("This is your data's own UMAP (obsm['X_umap'] in your file)."))
    elif kept := adata.uns[EMBED].get("original_umap"):
        st.caption(ui.md(embed.original_umap_note(str(kept))))

# ------------------------------------------------------------------ multi-drug-resistant cells
st.subheader("Cells resistant to every drug")
statement, subclone = panel.resistant_to_all_statement(adata, app=True, on_page=True)
st.markdown(ui.md(statement))
markers = ss.get(state.PANEL_MARKERS)
if markers is not None and markers[0] != token:
    markers = None
if subclone and st.button("Show their top biomarkers", key="btn_panel_markers",
                       help="Genes most up in these cells against the other scored cells (Wilcoxon rank-sum test)."):
    try:
        with st.spinner("Comparing the cells resistant to every drug with the others…"):
            markers = ss[state.PANEL_MARKERS] = (token, panel.multi_resistant_markers(adata))
    except ScatdError as exc:
        ui.show_error(exc)
if markers is not None and subclone:
    ui.table(markers[1], hide_index=True, column_config={
        "pval_adj": st.column_config.NumberColumn("adjusted p", format="%.2e"),
        "n_panel_models_using": st.column_config.NumberColumn("panel models using it")})

# ------------------------------------------------------------------ downloads
st.subheader("Downloads")
data_name = ss.get(state.DATA_NAME)
named = ss.get("panel_named")  # the saved panel's name while its models are the ones scored, else the drugs
stem = export.panel_stem(data_name, named[0] if named and named[1] == sorted(paths) else None,
                         [m.drug for m in scored])
extra = [c for c in (ss.get(state.LABEL_COLUMN), ss.get(state.SAMPLE_COLUMN)) if c and c in adata.obs]
files = [f"{stem}.csv", f"{stem}_summary.csv", f"{stem}_drugs.csv", f"{stem}_annotated.h5ad"]
report_markers = markers[1] if markers is not None and subclone else None
c = st.columns(5)
c[0].download_button("panel.csv", export.to_csv_bytes(panel.panel_table(adata, extra)),
                     file_name=files[0], mime="text/csv", icon=":material/table:", type="primary",
                     key="btn_dl_panel", on_click="ignore")
c[0].caption("cells x drugs: P(resistant), label, calibrated")
# the summary's groupings: the Leiden clusters, the Data page's sample column and the grouping chosen above,
# never a column of the data nobody chose (the selectbox offers them all)
summary_groups = [c for c in (ss.get(state.SAMPLE_COLUMN), group) if c]
c[1].download_button("panel_summary.csv", export.to_csv_bytes(export.panel_summary_table(adata, summary_groups)),
                     file_name=files[1], mime="text/csv", icon=":material/analytics:",
                     key="btn_dl_panel_summary", on_click="ignore")
c[1].caption("per drug: whole sample" + "".join(f", per {ui.md(names.get(g, g))}"
                                               for g in export.panel_group_columns(adata, summary_groups)))
c[4].download_button("panel_drugs.csv", export.to_csv_bytes(export.panel_drug_metrics(adata, app=True)),
                     file_name=files[2], mime="text/csv", icon=":material/medication:",
                     key="btn_dl_panel_drugs", on_click="ignore")
c[4].caption("per drug: status and why not scored, cells called, bulk CV AUROC, label AUROC")
c[2].download_button("panel_report.html",
                     ui.detached(lambda: export.panel_html_report(adata, group_columns=groups, data_name=data_name,
                                                                  markers=report_markers, files=files, app=True)
                                 .encode("utf-8")),
                     file_name=f"{stem}_report.html", mime="text/html", icon=":material/article:",
                     key="btn_dl_panel_html", on_click="ignore")
c[2].caption("self-contained, with the figures")
with_x = export.h5ad_download_has_x(adata)
ui.data_download(c[3], "annotated .h5ad", ui.detached(lambda: export.h5ad_bytes(adata, with_x=with_x)), adata,
                 file_name=files[3], mime="application/x-hdf5", icon=":material/database:",
                 key="btn_dl_panel_h5ad", on_click="ignore")
c[3].caption("one column set per drug" + ("" if with_x else ui.WITHOUT_X))
