"""Model cards: scores next to baselines, plain verdicts, and every place that shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scatd_core import card as cards
from scatd_core import pl


def _labels(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng


def test_verdicts_say_plainly_when_a_baseline_is_not_told_apart_better_or_worse():
    y, rng = _labels()
    good = y + rng.normal(0, 0.6, y.size)
    ev = cards.evaluation("bulk_cv", "Bulk cell lines, 5-fold cross-validation", y, {
        cards.MODEL: good,
        "logistic regression": good + rng.normal(0, 0.01, y.size),  # the same ranking, nearly
        "random guess": rng.random(y.size),
        "oracle": y + rng.normal(0, 0.05, y.size),
    })
    v = dict(zip(["logistic regression", "random guess", "oracle"], ev["verdicts"]))
    assert v["logistic regression"].startswith("This model does not beat logistic regression on bulk cell lines")
    assert ": no clear difference (AUROC " in v["logistic regression"]
    assert v["logistic regression"].endswith("includes 0); the data cannot tell them apart.")
    assert v["random guess"].startswith("This model beats random guess")
    assert v["oracle"].startswith("Oracle is better than this model")
    rows = {r["model"]: r for r in ev["scores"]}
    assert "model_minus_this" not in rows[cards.MODEL]
    d = rows["random guess"]["model_minus_this"]
    assert d["ci"][0] > 0 and d["auroc"] == pytest.approx(rows[cards.MODEL]["auroc"] - rows["random guess"]["auroc"],
                                                          abs=2e-4)
    assert ev["n"] == y.size and ev["n_resistant"] == int(y.sum())
    json.dumps(ev)  # stored in manifests: JSON only


def _card():
    y, rng = _labels()
    ev = cards.evaluation("target", "Target cells ('response', labels used for evaluation only)", y,
                          {cards.MODEL: y + rng.normal(0, 0.7, y.size), "gradient boosting": rng.random(y.size)})
    return {"model": {"description": "An ensemble of 3 backbones."},
            "data": {"summary": "Trained for DRUGX on 100 lines."}, "evaluations": [ev],
            "calibration": "The default threshold is not calibrated.", "warnings": []}


def test_card_renders_as_table_sentences_and_figure():
    card = _card()
    table = cards.card_table(card)
    assert list(table["model"]) == [cards.MODEL, "gradient boosting"]
    assert table["AUROC [95% bootstrap CI]"].str.match(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]").all()
    assert table["this model minus baseline (AUROC)"].iloc[0] == ""
    lines = cards.card_lines(card)
    assert lines[0] == "An ensemble of 3 backbones." and lines[-1] == card["calibration"]
    assert any(line.startswith("This model beats gradient boosting") for line in lines)
    fig = pl.card_figure(card)
    assert [t.name for t in fig.data] == ["baselines", "this model"]
    assert len(fig.data[1].x) == 1 and fig.data[1].error_x.array[0] > 0


def test_report_shows_the_model_card_of_a_trained_model(tmp_path):
    from test_ensemble import _bundle, _cells, _ensemble

    from scatd_core import export
    from scatd_core.bundle import load_bundle, save_bundle
    from scatd_core.predict import predict

    model = _ensemble()
    path = _bundle(tmp_path, model).path
    manifest = json.loads((path / "manifest.json").read_text())
    bundle = save_bundle(tmp_path / "carded", model.stacked_state_dict(), model.arch, drug="DRUGX",
                         genes=load_bundle(path).genes, input_transform="standardize", threshold=0.5,
                         extra={"card": _card()})
    assert manifest["architecture"]["members"] == 3
    cells = _cells()
    predict(cells, bundle, device="cpu")
    text = export.html_report(cells)
    assert "<h2>Model card</h2>" in text and "This model beats gradient boosting" in text
    assert "An ensemble of 3 backbones." in text and "AUROC [95% bootstrap CI]" in text
    paths = export.write_report(cells, tmp_path / "rep")  # the card travels in the h5ad as JSON text
    import anndata as ad

    back = ad.read_h5ad(paths["h5ad"])
    assert json.loads(back.uns["scatd"]["model"]["card_json"])["model"]["description"] == "An ensemble of 3 backbones."


def test_the_card_figure_keeps_a_model_ranking_the_wrong_way_round_in_view():
    """QA: the axis was fixed at 0.3-1.0, so a model at AUROC 0.04 was drawn off the figure."""
    y, rng = _labels()
    ev = cards.evaluation("target", "Target cells", y, {cards.MODEL: -y + rng.normal(0, 0.1, y.size),
                                                        "gradient boosting": rng.random(y.size)})
    card = {**_card(), "evaluations": [ev]}
    fig = pl.card_figure(card)
    low, high = fig.layout.xaxis.range
    mine = fig.data[1]
    assert mine.x[0] < 0.3 and low <= mine.x[0] - mine.error_x.arrayminus[0] and high == 1.0
    assert pl.card_figure(_card()).layout.xaxis.range[0] == 0.3  # a usual card keeps its axis


def test_a_training_seed_out_of_range_is_a_clear_message():
    """QA: --seed -1 (or 2**32 on the Train page) ended in "unexpected ValueError ... This is a bug"."""
    from scatd_core.errors import InputError
    from scatd_core.train import TrainSettings

    for seed in (-1, 2 ** 32):
        with pytest.raises(InputError, match="The seed must be between 0 and 4,294,967,295"):
            TrainSettings(seed=seed).check()
    TrainSettings(seed=2 ** 32 - 1).check()


def test_every_auprc_of_the_card_shows_its_chance_level():
    """QA: the AUPRC came bare, and for GDSC drugs the resistant lines are often most of them
    (Gefitinib: 219 of 247 -> chance 0.887): its chance level, the share resistant, goes with it."""
    y = np.array([1] * 9 + [0] * 3)
    rng = np.random.default_rng(0)
    ev = cards.evaluation("bulk_cv", "Bulk cell lines, 3-fold cross-validation", y,
                          {cards.MODEL: y + rng.normal(0, 0.7, y.size), "gradient boosting": rng.random(y.size)})
    assert ev["auprc_chance"] == 0.75
    card = {**_card(), "evaluations": [ev]}
    table = cards.card_table(card)
    assert list(table["AUPRC by chance (share resistant)"]) == ["0.750", "0.750"]
    line = next(line for line in cards.card_lines(card) if line.startswith("Bulk cell lines"))
    assert "AUPRC" in line and "(chance 0.750, the share resistant)" in line
    old = {**card, "evaluations": [{k: v for k, v in ev.items() if k != "auprc_chance"}]}  # a card saved before
    assert cards.auprc_chance(old["evaluations"][0]) == 0.75
    assert list(cards.card_table(old)["AUPRC by chance (share resistant)"]) == ["0.750", "0.750"]


def _full_card():
    card = _card()
    card["data"].update({
        "bulk": {"name": "ccle.csv", "sha256": "a" * 64, "of": "values"},
        "labels": {"file": "labels.csv", "sha256": "b" * 64,
                   "from_ic50": {"threshold": 0.25, "files": {"ic50": "GDSC_IC50.csv"}}},
        "target": {"file": "tumour.h5ad", "sha256": "c" * 64},
        "genes": {"n": 697, "first": [f"G{i}" for i in range(20)]}})
    card["settings"] = {"pretrain_epochs": 100, "members": 10, "head": "linear", "folds": 5, "seed": 3}
    card["settings_not_used"] = {"epochs": "the default linear heads ...", "mmd_weight": "..."}
    return card


def test_the_card_shows_its_data_with_hashes_genes_and_settings():
    """QA: README says the card shows "data and hashes, genes, labels, settings"; it showed none."""
    card = _full_card()
    details = cards.card_details(card)
    assert details[0] == ("Data: bulk ccle.csv (sha256 aaaaaaaaaaaa of its values), labels labels.csv (sha256 "
                          "bbbbbbbbbbbb; from ln(IC50) (GDSC_IC50.csv) with threshold 0.25: below it sensitive), "
                          "target tumour.h5ad (sha256 cccccccccccc).")
    assert details[1] == "Genes: 697 (G0, G1, G2, G3, G4, G5, G6, G7, G8, G9 and 687 more)."
    assert details[2] == ("Settings: head linear, folds 5, seed 3, members 10, pretrain_epochs 100. "
                          "Not used by this recipe: epochs, mmd_weight.")
    lines = cards.card_lines(card)
    assert lines[1] == card["data"]["summary"] and lines[2:5] == details
    assert cards.card_details(_card()) == []  # a card that records none: nothing made up


def test_models_list_and_card_show_the_display_name(tmp_path, capsys):
    from test_ensemble import _ensemble

    from scatd_core.bundle import save_bundle
    from scatd_core.cli import main

    model = _ensemble()
    save_bundle(tmp_path / "lib" / "carded", model.stacked_state_dict(), model.arch, drug="DRUGX",
                genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize", threshold=0.5,
                name="Lab model for tumour A", extra={"card": _full_card()})
    assert main(["models", "list", "--library", str(tmp_path / "lib")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("carded\tLab model for tumour A\tDRUGX")
    assert main(["models", "card", "carded", "--library", str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Model card: Lab model for tumour A (carded)") and "Settings: head linear" in out
    assert "AUPRC by chance" in out
    # the demo's name is its title's drug and label: said once (was "DRUGX · demo (simulated data) · DRUGX ·
    # Dist_VAE (scATD-sf-dist) · demo (simulated data)")
    save_bundle(tmp_path / "lib" / "DRUGX_demo", model.stacked_state_dict(), model.arch, drug="DRUGX",
                genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize", threshold=0.5,
                name="DRUGX · demo (simulated data)", extra={"card": _full_card(), "demo": True})
    assert main(["models", "card", "DRUGX_demo", "--library", str(tmp_path / "lib")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("Model card: DRUGX · Dist_VAE (scATD-sf-dist) · demo (simulated "
                                                       "data) (DRUGX_demo)")


def test_each_auroc_interval_names_its_method():
    """QA: one report showed two 95% intervals for the same AUROC on the same cells: the card's
    "0.901 [0.886, 0.916]" (bootstrap) and the Evaluation table's 0.883-0.919 (Hanley-McNeil)."""
    from scatd_core.metrics import METRIC_MEANINGS

    card = _card()
    table = cards.card_table(card)
    assert {"AUROC [95% bootstrap CI]", "AUPRC [95% bootstrap CI]"} <= set(table.columns)
    line = next(line for line in cards.card_lines(card) if line.startswith("Target cells"))
    assert "in brackets: the 95% bootstrap CI" in line
    assert "Hanley-McNeil" in METRIC_MEANINGS["auroc_ci_low"] and "Hanley-McNeil" in METRIC_MEANINGS["auroc_ci_high"]
    assert "95% bootstrap CI" in card["evaluations"][0]["verdicts"][0]


def _overlapping(lo, hi, d, name="gradient boosting", where="target"):
    """An evaluation as stored, whose difference to ``name`` has the interval ``lo`` to ``hi``."""
    return {"name": where, "title": "Target cells ('response')" if where == "target" else "Bulk cell lines, 5-fold "
            "cross-validation", "n": 100, "n_resistant": 50, "n_sensitive": 50,
            "scores": [{"model": cards.MODEL, "auroc": 0.668, "auroc_ci": [0.55, 0.78], "auprc": 0.6,
                        "auprc_ci": [0.5, 0.7]},
                       {"model": name, "auroc": round(0.668 - d, 4), "auroc_ci": [0.7, 0.88], "auprc": 0.7,
                        "auprc_ci": [0.6, 0.8], "model_minus_this": {"auroc": d, "ci": [lo, hi]}}],
            "verdicts": []}


@pytest.mark.parametrize("lo,hi,d", [(-0.261, 0.019, -0.126), (-0.019, 0.261, 0.126)])
def test_a_difference_whose_interval_includes_0_is_never_called_as_good(lo, hi, d):
    """QA (CCLE + GDSC -> SCAD): "Gradient boosting (...) is as good as this model on target cells
    (AUROC 0.794 vs 0.668; difference +0.126, 95% bootstrap CI -0.019 to +0.261): the difference is
    within chance". An interval including 0 shows no difference, not equality: both directions."""
    ev = _overlapping(lo, hi, d)
    text = cards.verdict(ev, ev["scores"][1])
    assert "as good as" not in text and "within chance" not in text and "This model beats" not in text
    assert text.startswith("This model does not beat gradient boosting on target cells")
    assert "includes 0); the data cannot tell them apart." in text
    # a card saved with the earlier wording is rendered with the honest one everywhere the card is shown
    old = {**ev, "verdicts": ["Gradient boosting is as good as this model on target cells (...): the difference is "
                              "within chance."]}
    assert cards.verdicts(old) == [text]
    assert text in cards.card_lines({**_card(), "evaluations": [old]})
    bulk = _overlapping(lo, hi, d, name="logistic regression", where="bulk_cv")
    assert cards.verdict(bulk, bulk["scores"][1]).startswith("This model does not beat logistic regression on bulk "
                                                             "cell lines")
    # "beats" / "is better than" stay for intervals that exclude 0
    assert cards.verdict(*(lambda e: (e, e["scores"][1]))(_overlapping(0.01, 0.2, 0.1))).startswith(
        "This model beats gradient boosting")
    assert cards.verdict(*(lambda e: (e, e["scores"][1]))(_overlapping(-0.2, -0.01, -0.1))).startswith(
        "Gradient boosting is better than this model")


def test_the_card_says_when_the_model_auroc_interval_includes_chance():
    """QA: Sorafenib's card showed "this model AUROC 0.622 [0.412, 0.829]" and then "This model beats
    logistic regression on bulk" without saying that the interval includes 0.5: the cell lines do not
    show the model separating the labels (the Cells page's rule), in the bulk CV and the target alike."""
    ev = _overlapping(0.01, 0.2, 0.1, name="logistic regression", where="bulk_cv")
    ev["scores"][0].update(auroc=0.622, auroc_ci=[0.412, 0.829])
    said = cards.verdicts(ev)
    assert said[0] == ("On bulk cell lines, 5-fold cross-validation, this model's AUROC 0.622 is not distinguishable "
                       "from chance (95% bootstrap CI 0.412 to 0.829 includes 0.5): these cell lines do not show "
                       "the model separating resistant from sensitive, even where it beats a baseline.")
    assert said[1].startswith("This model beats logistic regression")
    target = _overlapping(-0.1, 0.3, 0.1)
    target["scores"][0].update(auroc=0.45, auroc_ci=[0.3, 0.6])
    card = {**_card(), "evaluations": [ev, target]}
    lines = cards.card_lines(card)
    assert said[0] in lines and any("these cells do not show the model separating" in line for line in lines)
    reversed_ = _overlapping(-0.1, 0.3, 0.1)
    reversed_["scores"][0].update(auroc=0.2, auroc_ci=[0.1, 0.3])
    assert "ranks these cells the wrong way round" in cards.chance_sentence(reversed_)
    assert cards.chance_sentence(_overlapping(-0.1, 0.3, 0.1)) is None  # 0.55 to 0.78: above chance, nothing said


SMALL_PANEL = ("Bulk and target share only 141 genes, so the model sees a small part of the transcriptome: "
               "its scores may not carry over.")


def test_the_report_card_shows_the_data_genes_settings_and_warnings(tmp_path):
    """QA: report.html's card left out the card's warnings ("Bulk and target share only 141 genes...")
    and its data (files with sha256), genes and settings, which README says it has; `scatd models card`
    left out the warnings. Only the app showed them all."""
    from test_ensemble import _cells, _ensemble

    from scatd_core import export
    from scatd_core.bundle import save_bundle
    from scatd_core.predict import predict

    card = {**_full_card(), "warnings": [SMALL_PANEL]}
    lines = cards.card_lines(card)
    assert lines[-1] == f"Warning: {SMALL_PANEL}"
    model = _ensemble()
    bundle = save_bundle(tmp_path / "carded", model.stacked_state_dict(), model.arch, drug="DRUGX",
                         genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize",
                         threshold=0.5, extra={"card": card})
    cells = _cells()
    predict(cells, bundle, device="cpu")
    text = export.html_report(cells)
    card_html = text[text.index("<h2>Model card</h2>"):text.index("<h2>Model</h2>")]
    assert f"<p class='warn'>{SMALL_PANEL}</p>" in card_html
    for line in cards.card_details(card):  # data with sha256, genes, settings used and not used
        assert f"<li>{line}</li>" in card_html
    assert "sha256 aaaaaaaaaaaa" in card_html and "Not used by this recipe: epochs, mmd_weight." in card_html


def test_the_report_of_an_imported_checkpoint_has_its_short_card(tmp_path):
    """QA: an imported checkpoint's report.html had no card: its short card (origin, threshold,
    input transform, Swish) is recorded with the prediction and shown, also from the h5ad."""
    import anndata as ad
    import pandas as pd
    import torch

    import original_scatd as orig
    from conftest import SMALL, small_gene_names
    from scatd_core import export
    from scatd_core.bundle import import_card_lines, import_checkpoint
    from scatd_core.predict import predict

    enc, z, _ = SMALL["dist_vae"]
    genes = small_gene_names(enc[0])
    (tmp_path / "genes.txt").write_text("\n".join(genes) + "\n")
    torch.save(orig.dal_checkpoint("dist_vae", enc, z, seed=3), tmp_path / "orig.pth")
    bundle = import_checkpoint(tmp_path / "orig.pth", "dist_vae", drug="DOCETAXEL", genes=tmp_path / "genes.txt",
                               out=tmp_path / "imported")
    x = np.abs(np.random.default_rng(0).normal(size=(20, enc[0]))).astype(np.float32)
    cells = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]), var=pd.DataFrame(index=genes))
    predict(cells, bundle, device="cpu")
    lines = import_card_lines(bundle)
    assert list(cells.uns["scatd"]["model"]["import_card"]) == lines
    paths = export.write_report(cells, tmp_path / "rep")
    back = ad.read_h5ad(paths["h5ad"])
    for text in (export.html_report(cells), export.html_report(back)):
        assert "<h2>Model card (imported checkpoint)</h2>" in text
        assert "Imported from orig.pth (sha256 " in text and "Input transform: none" in text
        assert "Default threshold 0.05: the original scATD inference&#x27;s default" in text and "Swish: " in text


def test_train_panel_summary_says_when_a_drug_s_bulk_cv_interval_includes_chance(tmp_path):
    """QA: `scatd train-panel` flagged only a bulk CV AUROC <= 0.5; Sorafenib's 0.622 [0.412, 0.829]
    went by as a model that beats logistic regression. Its summary verdict now says so, as the card."""
    from types import SimpleNamespace

    from scatd_core.train._panel import _card_row

    ev = _overlapping(0.01, 0.2, 0.1, name="logistic regression", where="bulk_cv")
    ev["scores"][0].update(auroc=0.622, auroc_ci=[0.412, 0.829])
    ev["verdicts"] = [cards.verdict(ev, ev["scores"][1])]
    bundle = SimpleNamespace(path=tmp_path / "SORAFENIB", manifest={
        "metrics": {"cv": {"auroc": 0.622, "auroc_ci": [0.412, 0.829]}}, "card": {"evaluations": [ev]}})
    row = _card_row("Sorafenib", "trained", bundle, None, 20, 20, 1.0)
    assert not row["below_chance"]  # the saved panel's rule is unchanged: only <= 0.5 is left out
    assert row["verdict"].startswith("On bulk cell lines, 5-fold cross-validation, this model's AUROC 0.622 is not "
                                     "distinguishable from chance (95% bootstrap CI 0.412 to 0.829 includes 0.5)")
    assert row["verdict"].endswith(ev["verdicts"][0])
    ev["scores"][0].update(auroc=0.8, auroc_ci=[0.7, 0.9])
    assert _card_row("Sorafenib", "trained", bundle, None, 20, 20, 1.0)["verdict"] == ev["verdicts"][0]


def test_an_ensembles_spread_is_never_called_the_confidence_of_its_calls():
    """QA: "their spread is the per-cell uncertainty" read as "every call is certain" where the sd
    was 0.001. An older model's card says it as the new ones do: how much the members agree."""
    card = _card()
    card["model"]["description"] = ("An ensemble of 3 backbones; it predicts with the mean of the members' logits, "
                                    "and their spread is the per-cell uncertainty.")
    said = cards.card_lines(card)[0]
    assert "per-cell uncertainty" not in said and said.endswith("not how confident the call is.")
    assert "how much the members agree" in said and said == cards.description(card)


def test_the_model_card_picker_names_each_model_once(tmp_path):
    """QA: the Model library's card picker read "DEMOTINIB · demo (simulated data) · DEMOTINIB ·
    Dist_VAE ... (DEMOTINIB_demo)". One title each; the folder only where two would read alike."""
    from pathlib import Path
    from types import SimpleNamespace

    from scatd_core.bundle import distinct_named_titles

    def bundle(folder, name, title):
        return SimpleNamespace(path=Path(tmp_path / folder), name=name, title=title)

    demo = bundle("DEMOTINIB_demo", "DEMOTINIB · demo (simulated data)",
                  "DEMOTINIB · Dist_VAE (scATD-sf-dist) · demo (simulated data)")
    lab, lab2 = (bundle(f, "Lab model", "DRUGX · Dist_VAE (scATD-sf-dist)") for f in ("lab_a", "lab_b"))
    titles = distinct_named_titles([demo, lab, lab2])
    assert titles[str(demo.path)] == "DEMOTINIB · Dist_VAE (scATD-sf-dist) · demo (simulated data)"
    assert titles[str(lab.path)] == "Lab model (lab_a)"  # a given name as given, its folder where two read alike
    assert titles[str(lab2.path)].endswith("(lab_b)")


def test_a_model_with_its_default_trained_name_is_titled_once():
    """QA: a model trained without --name was titled "Gefitinib (VAE on genes, trained) · Gefitinib · VAE
    on genes (trained in scATD Studio)" (card picker, Model page, `scatd models`): the drug, backbone and
    "trained" twice. The default name says it all once (its number kept); a chosen name is shown as given
    (test_a_name_given_to_a_trained_model_is_shown_as_given)."""
    from pathlib import Path
    from types import SimpleNamespace

    from scatd_core.bundle import TRAINED_TITLES, distinct_named_titles, named_title

    def trained(name, folder, backbone_title=TRAINED_TITLES["dist_vae"]):
        return SimpleNamespace(path=Path("/library") / folder, name=name, drug="Gefitinib", backbone="dist_vae",
                               backbone_title=backbone_title, title=f"Gefitinib · {backbone_title}")

    first, second = trained("Gefitinib (VAE on genes, trained)", "a"), trained("Gefitinib (VAE on genes, trained) 2", "b")
    titles = distinct_named_titles([first, second])
    assert titles == {str(first.path): "Gefitinib (VAE on genes, trained)",
                      str(second.path): "Gefitinib (VAE on genes, trained) 2"}
    assert named_title(trained("Gefitinib (VAE on genes, panel)", "c")) == "Gefitinib (VAE on genes, panel)"
    on_imported = trained("Gefitinib (VAE on genes, trained)", "d", "Dist_VAE (scATD-sf-dist) backbone (drug model "
                          "trained in scATD Studio)")
    assert named_title(on_imported) == on_imported.title  # the title names the imported backbone; said once
    mine = trained("My gefitinib model", "e")
    assert named_title(mine) == "My gefitinib model"


def test_the_apps_score_table_per_evaluation_is_short_and_says_the_rest_once():
    """The app's card shows a table per evaluation (a 1280 px window cut the one wide table):
    baselines by short names unless two would read alike, the chance AUPRC in the heading."""
    ev = _overlapping(0.01, 0.2, 0.1, name="logistic regression (C=0.1, balanced)", where="bulk_cv")
    table = cards.evaluation_table(ev)
    assert list(table.columns) == list(cards.EVALUATION_COLUMNS)
    assert list(table["model"]) == ["this model", "logistic regression"]
    diff = ev["scores"][1]["model_minus_this"]
    assert table["this model minus it (AUROC)"].iloc[1].startswith(f"{diff['auroc']:+.3f} [")  # signed, as the verdicts
    assert table["this model minus it (AUROC)"].iloc[1].count("+") + table.iloc[1, 3].count("-") >= 3
    assert cards.evaluation_heading(ev) == ("Bulk cell lines, 5-fold cross-validation: 100 cell lines (50 resistant); "
                                            "AUPRC by chance 0.500 (the share resistant)")
    assert cards.baseline_settings({"evaluations": [ev]}) == ["logistic regression (C=0.1, balanced)"]
    twin = {**ev, "scores": ev["scores"] + [{**ev["scores"][1], "model": "logistic regression (C=1)"}]}
    assert list(cards.evaluation_table(twin)["model"])[1:] == ["logistic regression (C=0.1, balanced)",
                                                                "logistic regression (C=1)"]


def test_a_score_is_stored_whole_and_rounded_once_where_it_is_shown(monkeypatch):
    """QA: an AUPRC of 0.81948 read 0.819 on the Train page's tile, the report and metrics.csv (the full
    value) but 0.820 on the card and the CLI's card line (stored rounded to 0.8195, then rounded again)."""
    def fake_ci(y, p, metric, **kw):
        return (0.81948, 0.70001, 0.90004) if metric == "auprc" else (0.7, 0.6, 0.8)

    monkeypatch.setattr(cards, "bootstrap_ci", fake_ci)
    y, rng = _labels(40)
    ev = cards.evaluation("bulk_cv", "Bulk cell lines, 3-fold cross-validation", y, {cards.MODEL: rng.random(y.size)})
    model = ev["scores"][0]
    assert model["auprc"] == 0.81948  # the whole value, as the tile and metrics.csv take it
    assert f"{model['auprc']:.3f}" == "0.819"
    line = next(li for li in cards.card_lines({"model": {"description": "A model."}, "evaluations": [ev]})
                if "AUPRC" in li)
    assert "AUPRC 0.819 [" in line, line
    assert cards.card_table({"evaluations": [ev]})["AUPRC [95% bootstrap CI]"][0].startswith("0.819 ")


def test_a_model_trained_here_is_not_named_as_the_published_distilled_backbone(tmp_path):
    """QA: models trained on the Train page read "Gefitinib · Dist_VAE (scATD-sf-dist)" in the Model
    picker, sidebar and library, though scATD-sf-dist is the published Dist_VAE distilled from
    scFoundation's latent on Panglao cells, and these are a VAE trained here on the user's genes.
    Imported and published checkpoints keep their names."""
    from test_ensemble import _ensemble

    from scatd_app.ui import library_frame, library_view
    from scatd_core.bundle import backbone_group_titles, distinct_titles, list_library, load_bundle, save_bundle

    model, lib = _ensemble(), tmp_path / "lib"
    sources = {"trained": {"source": "trained by scATD Studio (the Train page)"},
               "imported": {"source": "imported original scATD checkpoint"},
               "from_backbone": {"source": "trained by scATD Studio (scatd train)",
                                 "backbone_bundle": {"name": "Dist_VAE pretrained backbone (published scATD)"}}}
    for folder, prov in sources.items():
        save_bundle(lib / folder, model.stacked_state_dict(), model.arch, drug="Gefitinib",
                    genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize",
                    threshold=0.5, provenance=prov)
    titles = {folder: load_bundle(lib / folder).title for folder in sources}
    assert titles == {"trained": "Gefitinib · VAE on genes (trained in scATD Studio)",
                      "imported": "Gefitinib · Dist_VAE (scATD-sf-dist)",
                      "from_backbone": "Gefitinib · Dist_VAE (scATD-sf-dist) backbone (drug model trained in "
                                       "scATD Studio)"}
    entries = list_library(lib)
    assert sorted(distinct_titles([e.bundle for e in entries]).values()) == sorted(titles.values())
    groups = backbone_group_titles([e.bundle for e in entries])  # the Model page's choice of backbone
    assert groups["dist_vae"].startswith("Dist_VAE (scATD-sf-dist) / ")  # the published name first
    assert sorted(groups["dist_vae"].split(" / ")) == sorted(t.split(" · ")[1] for t in titles.values())
    assert backbone_group_titles([load_bundle(lib / "trained")])["dist_vae"] == "VAE on genes (trained in scATD Studio)"
    view = library_view(library_frame(entries)).set_index("folder")
    assert view.loc["trained", "backbone"] == "VAE on genes" and view.loc["imported", "backbone"] == "Dist_VAE"
    assert "backbone title" not in view


TUNED = "logistic regression (C tuned by inner CV, balanced)"
TUNING = {"logistic_regression": {"c_grid": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0], "head_c": 0.01,
                                  "bulk_cv_folds": [{"c": 0.01, "inner_folds": 5}, {"c": 0.003, "inner_folds": 5}],
                                  "all_bulk": {"c": 0.01, "inner_folds": 5}}}


def test_the_verdicts_against_a_tuned_logistic_regression_and_an_old_untuned_one():
    """QA (Gefitinib): "This model beats logistic regression (C=0.1, balanced) ... +0.065" rested on the
    baseline's fixed C (the heads' is 0.01); tuned, the baseline did as well. Every outcome is said
    plainly against the tuned baseline, and an old card's untuned "beats" is said with why it may not hold."""
    same = _overlapping(-0.03, 0.05, 0.01, name=TUNED)
    assert cards.verdict(same, same["scores"][1]) == (
        "This model does not beat logistic regression (C tuned by inner CV, balanced) on target cells ('response'): "
        "no clear difference (AUROC 0.668 vs 0.658; difference +0.010, 95% bootstrap CI -0.030 to +0.050, includes "
        "0); the data cannot tell them apart.")
    better = _overlapping(0.015, 0.124, 0.065, name=TUNED)
    assert cards.verdict(better, better["scores"][1]).startswith(f"This model beats {TUNED} on target cells")
    worse = _overlapping(-0.2, -0.01, -0.1, name=TUNED)
    assert cards.verdict(worse, worse["scores"][1]).startswith(
        "Logistic regression (C tuned by inner CV, balanced) is better than this model on target cells")
    old = _overlapping(0.015, 0.124, 0.065, name="logistic regression (C=0.1, balanced)")
    said = cards.verdicts(old)[0]
    assert not said.startswith("This model beats")  # the app shows it as a caution, not a success
    assert said.startswith("This model scored above logistic regression (C=0.1, balanced) on target cells ('response') (AUROC")
    assert "C was fixed at 0.1, not tuned" in said and "a logistic regression with a tuned C may do as well" in said
    old_same = _overlapping(-0.03, 0.05, 0.01, name="logistic regression (C=0.1, balanced)")
    assert cards.verdicts(old_same)[0].startswith("This model does not beat logistic regression (C=0.1, balanced)")


def test_the_card_says_which_c_the_logistic_regression_chose():
    card = {**_card(), "evaluations": [_overlapping(-0.03, 0.05, 0.01, name=TUNED, where="bulk_cv")],
            "baselines": TUNING}
    words = ("C chosen from 0.001, 0.003, 0.01 (the heads' C), 0.03, 0.1, 0.3, 1 by 5-fold inner cross-validation "
             "(mean AUROC) on the training samples only, never the test fold or the target's labels; chosen C in "
             "the bulk CV folds 0.01, 0.003; on all the bulk (the baseline scored on the target cells) 0.01")
    assert cards.logistic_tuning_words(card) == words
    assert f"Logistic-regression baseline: {words}." in cards.card_lines(card)  # CLI and HTML report (card_details)
    assert cards.baseline_settings(card) == [f"{TUNED} [{words}]"]  # the app's "Baselines:" caption
    assert cards.logistic_tuning_words(_card()) is None  # an old card: its baseline's name says C=0.1
    assert cards.auroc_interval_words({"auroc_ci": [0.412, 0.829]}) == "95% bootstrap CI 0.412 to 0.829"


def test_card_counts_have_thousands_separators():
    """QA: the card and report.html said "2000 (549 resistant)" and "2000 target cells"."""
    ev = {"name": "target", "title": "Target cells", "n": 2000, "n_resistant": 549, "auprc_chance": 0.2745,
          "scores": [{"model": cards.MODEL, "auroc": 0.8, "auroc_ci": [0.75, 0.85], "auprc": 0.6,
                      "auprc_ci": [0.5, 0.7]}], "verdicts": []}
    card = {"model": {"description": "d"}, "data": {"summary": "s", "few_shot": {
        "n": 1200, "n_resistant": 600, "n_sensitive": 600}}, "evaluations": [ev], "warnings": []}
    assert cards.card_table(card)["cells / lines"].iloc[0] == "2,000 (549 resistant)"
    assert cards.evaluation_heading(ev).startswith("Target cells: 2,000 cells (549 resistant)")
    assert cards.few_shot_line(card).startswith("1,200 labelled target cells (600 resistant, 600 sensitive)")
    assert any(line.startswith("Target cells (2,000 samples, 549 resistant)") for line in cards.card_lines(card))


def test_a_bulk_cv_on_too_few_lines_of_a_class_claims_no_win():
    """QA: a model of a drug with 2 sensitive cell lines "beat gradient boosting" on its bulk CV (AUROC 0.953)
    and was at chance on the cells: with fewer than 10 lines of a class, the card says the bulk scores cannot
    be trusted and no verdict says "beats" (also for a card saved before)."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 3 + [1] * 40)
    model = y + rng.normal(0, 0.1, len(y))  # separates them perfectly
    ev = cards.evaluation("bulk_cv", "Bulk cell lines, 3-fold cross-validation", y,
                          {cards.MODEL: model, "gradient boosting": 1 - y + rng.normal(0, 0.1, len(y))})
    said = cards.verdicts(ev)
    assert said[0].startswith("With only 3 cell lines in the smaller class (3 sensitive, 40 resistant), this model's "
                              "bulk cross-validation AUROC and its interval cannot be trusted")
    assert said[1].startswith("Gradient boosting is not compared with this model on bulk cell lines, 3-fold "
                              "cross-validation: with only 3 cell lines in the smaller class, the difference "
                              "cannot be trusted (AUROC 1.000 vs 0.000")
    assert not any(v.startswith("This model beats") or "better than" in v for v in said + ev["verdicts"])
    target = dict(ev, name="target")  # cells: the same counts are no bulk CV, judged as before
    assert cards.verdicts(target)[0].startswith("This model beats gradient boosting")


def test_a_name_given_to_a_trained_model_is_shown_as_given(tmp_path):
    """QA: `scatd train --name cisplatin_demo` (its folder cisplatin_demo) was shown as "cisplatin_demo · DRUGA ·
    VAE on genes (trained in scATD Studio)" in the library table, the Model page's picker and the card's heading.
    A name the user gave a model trained here is shown as given; a demo model still says so, two models that
    would read alike get their folders; an import's name is shown as given too
    (test_a_name_given_to_an_imported_model_is_shown_as_given)."""
    from test_ensemble import _ensemble

    from scatd_core.bundle import display_names, list_library, save_bundle

    model, lib = _ensemble(), tmp_path / "lib"

    def save(folder, name, source="trained by scATD Studio (scatd train)", **kw):
        return save_bundle(lib / folder, model.stacked_state_dict(), model.arch, drug="DRUGA",
                           genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize",
                           threshold=0.5, provenance={"source": source}, name=name, **kw)

    named = save("cisplatin_demo", "cisplatin_demo")
    spaced = save("My_run-1234abcd", "My run")
    demo = save("demo_run", "demo run", demo=True)
    twins = [save(f"lab_{k}", "Lab run") for k in "ab"]
    imported = save("DRUGA_lab", "DRUGA lab", source="imported original scATD checkpoint")
    names = display_names([e.bundle for e in list_library(lib)])
    assert names == {str(named.path): "cisplatin_demo", str(spaced.path): "My run",
                     str(demo.path): "demo run · demo (simulated data)",
                     str(twins[0].path): "Lab run (lab_a)", str(twins[1].path): "Lab run (lab_b)",
                     str(imported.path): "DRUGA lab"}, names


def test_one_display_name_per_model_and_case_variant_folders_get_their_own(tmp_path):
    """QA: GEFITINIB trained in the app and again with `scatd train --drug GEFITINIB` read "GEFITINIB (VAE
    on genes, trained) 2" in the library table and card but "GEFITINIB · VAE on genes (trained in scATD
    Studio)" (twice, alike) in the Model and Remove pickers and the removal's message; their folders
    differed only by case (Gefitinib_dist_vae_trained, GEFITINIB_dist_vae_trained: one folder on a
    macOS/Windows mount). One function names each model (display_names), an import's default name
    says nothing more than its title, and a folder whose name differs from a taken one only by case
    gets the next free name (or is refused, as an existing folder is)."""
    from test_ensemble import _ensemble

    from scatd_core.bundle import NameTaken, display_names, list_library, load_bundle, save_bundle

    model, lib = _ensemble(), tmp_path / "lib"
    trained = {"source": "trained by scATD Studio (the Train page)"}

    def save(folder, drug, name, **kw):
        return save_bundle(lib / folder, model.stacked_state_dict(), model.arch, drug=drug,
                           genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize",
                           threshold=0.5, provenance=trained, name=name, **kw)

    first = save("Gefitinib_dist_vae_trained", "Gefitinib", "Gefitinib (VAE on genes, trained)")
    with pytest.raises(NameTaken):  # not a second folder beside it that a case-insensitive disk cannot hold
        save("GEFITINIB_dist_vae_trained", "GEFITINIB", "GEFITINIB (VAE on genes, trained) 2")
    second = save("GEFITINIB_dist_vae_trained", "GEFITINIB", "GEFITINIB (VAE on genes, trained) 2", unique=True)
    assert second.path.name == "GEFITINIB_dist_vae_trained-2"
    imported = save_bundle(lib / "DOCETAXEL_dist_vae", model.stacked_state_dict(), model.arch, drug="DOCETAXEL",
                           genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize",
                           threshold=0.05, provenance={"source": "imported original scATD checkpoint"})
    assert imported.name == "DOCETAXEL (dist_vae)"  # save_bundle's default name
    names = display_names([e.bundle for e in list_library(lib)])
    assert names == {str(first.path): "Gefitinib (VAE on genes, trained)",
                     str(second.path): "GEFITINIB (VAE on genes, trained) 2",
                     str(imported.path): "DOCETAXEL · Dist_VAE (scATD-sf-dist)"}  # not "DOCETAXEL (dist_vae) · ..."
    twin = load_bundle(lib / "DOCETAXEL_dist_vae")
    twin.path = lib / "docetaxel_copy"
    assert display_names([imported, twin])[str(twin.path)] == "DOCETAXEL · Dist_VAE (scATD-sf-dist) (docetaxel_copy)"


def test_a_name_given_to_an_imported_model_is_shown_as_given(tmp_path):
    """QA: a name given to an imported model (the import form's Display name, `scatd import-checkpoint --name`)
    was shown as "DOCETAXEL GSE140440 · DOCETAXEL · Dist_VAE (scATD-sf-dist)" while a trained model's is shown
    as given (the form's help: "The name shown in the library"). Shown as given too; an import without a name
    still reads DRUG · backbone, and two models that would read alike still get their folders."""
    from test_ensemble import _ensemble

    from scatd_core.bundle import display_names, list_library, save_bundle

    model, lib = _ensemble(), tmp_path / "lib"

    def imported(folder, name):
        return save_bundle(lib / folder, model.stacked_state_dict(), model.arch, drug="DOCETAXEL",
                           genes=[f"G{i}" for i in range(model.arch.input_dim)], threshold=0.05,
                           provenance={"source": "imported original scATD checkpoint"}, name=name)

    named = imported("DOCETAXEL_GSE140440-419881e4", "DOCETAXEL GSE140440")
    unnamed = imported("DOCETAXEL_dist_vae", None)
    twins = [imported(f"lab_{k}", "Lab import") for k in "ab"]
    names = display_names([e.bundle for e in list_library(lib)])
    assert names == {str(named.path): "DOCETAXEL GSE140440",
                     str(unnamed.path): "DOCETAXEL · Dist_VAE (scATD-sf-dist)",
                     str(twins[0].path): "Lab import (lab_a)", str(twins[1].path): "Lab import (lab_b)"}, names
