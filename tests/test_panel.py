"""Panels of drug models: scatd_core.panel, saved panels, `scatd predict --model A --model B`,
`scatd panel`, `scatd train-panel`."""

from __future__ import annotations

import io
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from _app_helpers import make_bundle, make_dataset
from scatd_core import _keys, export, panel
from scatd_core.bundle import load_bundle
from scatd_core.cli import main
from scatd_core.cli.predict import say_panel_comparison
from scatd_core.errors import InputError
from scatd_core.predict import predict, set_threshold

DRUGS = ("DRUGA", "DRUGB", "DRUGC")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Three Dist_VAE models on the same genes, one on a subset of them (another gene set)."""
    root = tmp_path_factory.mktemp("panel_library")
    data = make_dataset(240, seed=0)
    for i, drug in enumerate(DRUGS):
        make_bundle(root / drug, data, drug=drug, seed=i, steps=15)
    make_bundle(root / "SUBSET", data[:, :1200].copy(), drug="DRUGD", seed=5, steps=15)
    return root


@pytest.fixture
def lib_env(library, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(library))
    return library


def _bundles(library, names=DRUGS):
    return [load_bundle(library / n) for n in names]


def test_panel_equals_single_predictions_and_shares_the_alignment(library):
    bundles = _bundles(library, DRUGS + ("SUBSET",))
    data = make_dataset(200, seed=3)
    seen = []
    members = panel.predict_panel(data, bundles, progress=lambda f, m: seen.append((f, m)))
    assert [m.status for m in members] == ["scored"] * 4
    assert [m.input_group for m in members] == [0, 0, 0, 1]  # one alignment per gene set
    assert members[3].coverage["n_model_genes"] == 1200 and members[0].coverage["n_model_genes"] == 1900
    assert data.uns["scatd_panel"]["n_input_groups"] == 2
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("DRUGB (2 of 4)" in m for _, m in seen)
    for m, b in zip(members, bundles):
        single = make_dataset(200, seed=3)
        predict(single, b)
        np.testing.assert_array_equal(data.obs[f"{m.key}_prob_resistant"].to_numpy(),
                                      single.obs["scatd_prob_resistant"].to_numpy())
    calls = np.column_stack([(data.obs[f"{m.key}_label"] == "resistant").to_numpy() for m in members])
    np.testing.assert_array_equal(data.obs["scatd_panel_n_resisted"].to_numpy(), calls.sum(1))
    np.testing.assert_array_equal(data.obs["scatd_panel_resistant_to_all"].to_numpy(), calls.all(1))
    assert "scatd_prob_resistant" not in data.obs  # the single-model columns are untouched


def test_an_interrupted_panel_keeps_no_partial_columns(library):
    """A progress callback that raises (Streamlit's Cancel, Ctrl+C) in the second model leaves
    neither the first model's columns nor a panel behind."""
    data = make_dataset(120, seed=4)
    before = (list(data.obs.columns), sorted(data.uns))

    def interrupt(fraction, message):
        if "DRUGB" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        panel.predict_panel(data, _bundles(library), progress=interrupt)
    assert (list(data.obs.columns), sorted(data.uns)) == before


def test_a_model_that_cannot_score_is_skipped_with_its_reason(library, small_bundles):
    vae_sf = small_bundles["vae_sf"][0]
    data = make_dataset(150, seed=4)
    members = panel.predict_panel(data, _bundles(library, DRUGS[:2]) + [vae_sf])
    assert [m.status for m in members] == ["scored", "scored", "skipped"]
    assert "embeddings" in members[2].problem
    # the next step as each front end takes it: an option on the command line, a page in the app
    assert "--input" in members[2].problem and "Data page" in members[2].problem_app
    assert panel.members(data, scored_only=False)[2].problem_app == members[2].problem_app  # stored
    assert members[0].problem_app is None
    assert "scatd_TESTDRUG_prob_resistant" not in data.obs
    table = panel.panel_table(data)
    assert {"DRUGA_prob_resistant", "DRUGA_label", "DRUGA_calibrated", "DRUGB_label"} <= set(table.columns)
    # QA: a refused drug vanished from panel.csv; now its columns are there, empty, flagged, and why is
    # in the per-drug metrics
    back = pd.read_csv(io.BytesIO(export.to_csv_bytes(table)))
    assert back["TESTDRUG_prob_resistant"].isna().all() and back["TESTDRUG_label"].isna().all()
    assert back["TESTDRUG_calibrated"].isna().all() and not back["TESTDRUG_scored"].any()
    assert (back["TESTDRUG_not_scored_reason"] == "drug not scored").all()
    assert "embeddings" in export.panel_drug_metrics(data).set_index("drug").loc["TESTDRUG", "not_scored_reason"]
    assert panel.requested_statement(data) == "3 drugs requested, 2 scored; not scored: TESTDRUG."
    with pytest.raises(InputError, match="No model of the panel could score"):
        panel.predict_panel(make_dataset(50, seed=4), [vae_sf])


def _z_scored(n_cells: int, seed: int, raw: bool = False) -> ad.AnnData:
    """Cells whose X holds z-scored values (negative in every cell); with ``raw`` their log-normalised
    values in adata.raw, as a usual scanpy file holds them."""
    data = make_dataset(n_cells, seed=seed)
    x = np.asarray(data.X.toarray() if hasattr(data.X, "toarray") else data.X, dtype=np.float32)
    scaled = data.copy()
    scaled.X = ((x - x.mean(0)) / (x.std(0) + 1e-3)).astype(np.float32)
    if raw:
        scaled.raw = ad.AnnData(np.log1p(x / x.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32),
                                obs=pd.DataFrame(index=data.obs_names), var=pd.DataFrame(index=data.var_names))
    return scaled


def test_a_z_scored_matrix_is_refused_before_any_model_runs_as_one_prediction_refuses_it(library):
    """QA: a z-scored input was refused by a single prediction at once, but a panel ran every drug and
    failed late, per drug ("No cell can be scored"). It is refused up front in the same words; an
    unscaled adata.raw beside it is read instead, as one prediction reads it."""
    from scatd_core.inputs import unscorable_error

    bundles = _bundles(library, DRUGS[:2])
    scaled = _z_scored(40, seed=3)
    single = unscorable_error(scaled, bundles[0])
    assert single is not None and "this matrix is z-scored" in single.message
    seen = []
    with pytest.raises(InputError) as caught:
        panel.predict_panel(scaled, bundles, progress=lambda f, m: seen.append(m))
    assert caught.value.message == f"No model of the panel can score these data: {single.message}"
    assert caught.value.hint == single.hint and caught.value.app_hint == single.app_hint
    assert seen == [] and "scatd_panel" not in scaled.uns  # no model was run
    with_raw = _z_scored(40, seed=3, raw=True)
    members = panel.predict_panel(with_raw, bundles)
    assert [m.status for m in members] == ["scored", "scored"]
    assert with_raw.uns[members[0].key]["matrix"]["where"] == "adata.raw"
    alone = with_raw.copy()
    predict(alone, bundles[0])
    np.testing.assert_allclose(with_raw.obs[f"{members[0].key}_prob_resistant"], alone.obs["scatd_prob_resistant"])


def test_the_cli_refuses_a_z_scored_panel_input_before_any_model_runs(lib_env, tmp_path, capsys):
    _z_scored(40, seed=3).write_h5ad(tmp_path / "scaled.h5ad")
    code = main(["predict", "--input", str(tmp_path / "scaled.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
                 "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 3 and "No model of the panel can score these data" in err and "this matrix is z-scored" in err
    assert "Panel of 2 models" not in err and "skipped" not in err and not (tmp_path / "p.csv").exists()


def test_thresholds_refresh_the_panel_summary_and_the_ranking(library):
    data = make_dataset(200, seed=5)
    members = panel.predict_panel(data, _bundles(library))
    set_threshold(data, 0.0, "user", key_added=members[0].key)  # everything resistant to DRUGA
    panel.refresh(data)
    assert (data.obs[f"{members[0].key}_label"] == "resistant").all()
    ranking = panel.drug_ranking(data)
    assert ranking["drug"].iloc[-1] == "DRUGA" and ranking["fraction_resistant"].iloc[-1] == 1.0
    assert list(ranking["rank"]) == [1, 2, 3]
    assert ranking["fraction_resistant"].is_monotonic_increasing
    summary = panel.group_summary(data, "sample")
    assert len(summary) == 3 * data.obs["sample"].nunique()
    one = summary[(summary.group == "P1") & (summary.drug == "DRUGB")].iloc[0]
    in_p1 = (data.obs["sample"] == "P1").to_numpy()
    expect = (data.obs.loc[in_p1, f"{members[1].key}_label"] == "resistant").mean()
    assert one.fraction_resistant == pytest.approx(expect)
    cluster_rank = panel.drug_ranking(data, (data.obs["cluster"] == "hypoxic").to_numpy())
    assert cluster_rank["n_cells"].iloc[0] == int((data.obs["cluster"] == "hypoxic").sum())


def test_multi_resistant_cells_and_their_markers(library):
    from scatd_core.demo.simulate import RESISTANCE_PROGRAM

    data = make_dataset(300, seed=6)
    panel.predict_panel(data, _bundles(library))
    # at uncalibrated thresholds the cells resistant to all are not yet a subclone to characterise
    with pytest.raises(InputError, match="Not every drug is calibrated") as err:
        panel.multi_resistant_markers(data)
    # how to calibrate every drug, where the reader is (labelled cells calibrate only the drug they record)
    assert "--expected-fraction" in err.value.hint and "--calibrate-on-labels" not in err.value.hint
    assert "press 'Calibrate every drug to it'" in err.value.app_hint  # said on the Drug panel page, below it
    panel.calibrate_panel(data, 0.4)
    assert data.obs["scatd_panel_resistant_to_all"].sum() >= 3
    top = panel.multi_resistant_markers(data, n_top=20)
    assert len(top) == 20 and (top["n_panel_models_using"] == 3).all()
    # the models were trained on the planted resistance program: its genes mark the cells resistant to all
    assert sum(g in RESISTANCE_PROGRAM for g in top["gene"]) >= 5
    panel.calibrate_panel(data, 0.01)
    with pytest.raises(InputError, match="at least 3 of each") as err:
        panel.multi_resistant_markers(data)
    assert "Cells page" not in err.value.hint and "press 'Calibrate every drug to it'" in err.value.app_hint


def test_saved_panels_are_per_user(lib_env):
    panel.save_panel("My lab panel", list(DRUGS), "alice")
    assert list(panel.list_panels("alice")) == ["My lab panel"]
    assert panel.list_panels("bob") == {}
    with pytest.raises(InputError, match="no panel named"):
        panel.load_panel("My lab panel", "bob")
    with pytest.raises(InputError, match="already have"):
        panel.save_panel("My lab panel", list(DRUGS), "alice")
    with pytest.raises(InputError, match="not a valid panel name"):
        panel.save_panel("../../etc", list(DRUGS), "alice")
    with pytest.raises(InputError, match="Not in the model library: NOPE; the panel was not saved"):
        panel.save_panel("x", ["DRUGA", "NOPE"], "alice")
    with pytest.raises(InputError, match="at least 2"):
        panel.save_panel("x", ["DRUGA"], "alice")
    assert panel.panels_file("a/../b").parent == panel.panels_file("alice").parent  # never a path from a name
    bundles, problems = panel.load_panel("My lab panel", "alice")
    assert [b.drug for b in bundles] == list(DRUGS) and problems == []
    panel.delete_panel("My lab panel", "alice")
    assert panel.list_panels("alice") == {}


def test_the_command_line_and_an_app_login_of_the_same_name_keep_their_own_saved_panels(lib_env, tmp_path, capsys):
    """QA: `scatd panel save` (the operating-system account alice) and the app's login alice shared
    <home>/panels/alice.json: each saw, replaced and removed the other's panels. The command line's are
    its own (<home>/panels/cli/). The file they shared before is the app login's (it may be another
    person): it is never copied for the command line (it was, silently, on its first use); the command
    line says where it is and how an administrator moves it, once it has no panel of its own."""
    from scatd_core.cli.predict import os_user

    user = os_user()  # the command line's user; an app login of the very same name below
    panel.save_panel("old", list(DRUGS), user)  # the shared file, as an earlier version wrote it for both
    shared, mine = panel.panels_file(user), panel.panels_file(user, cli=True)
    assert main(["panel", "list"]) == 0
    out, err = capsys.readouterr()
    assert "old" not in out and not mine.exists()  # nothing of the login's copied for the command line
    assert f"{shared}" in err and "not copied" in err and f"cp {shared} {mine}" in err  # how to move them
    assert main(["predict", "--panel", "old", "--input", str(_h5ad(tmp_path)), "--output",
                 str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "You have no panel named 'old'" in err and f"cp {shared} {mine}" in err
    assert main(["panel", "save", "mine", "--model", "DRUGA", "--model", "DRUGB"]) == 0
    panel.save_panel("theirs", ["DRUGB", "DRUGC"], user)  # the app's login
    assert set(panel.list_panels(user)) == {"old", "theirs"}
    assert set(panel.list_panels(user, cli=True)) == {"mine"}
    assert main(["panel", "list"]) == 0
    assert "not copied" not in capsys.readouterr().err  # said only while the command line has no panels file
    # one name on both sides: neither is refused as taken, nor replaces the other's
    panel.save_panel("same", ["DRUGA", "DRUGB"], user)
    assert main(["panel", "save", "same", "--model", "DRUGB", "--model", "DRUGC"]) == 0
    assert panel.list_panels(user)["same"]["models"] == ["DRUGA", "DRUGB"]
    assert panel.list_panels(user, cli=True)["same"]["models"] == ["DRUGB", "DRUGC"]
    # removed on one side, kept on the other
    assert main(["panel", "remove", "same"]) == 0
    assert set(panel.list_panels(user)) == {"old", "theirs", "same"}
    assert set(panel.list_panels(user, cli=True)) == {"mine"}
    capsys.readouterr()
    assert main(["predict", "--panel", "theirs", "--input", str(_h5ad(tmp_path)), "--output",
                 str(tmp_path / "p.csv")]) == 2  # the login's panel is not the command line's
    assert "You have no panel named 'theirs'" in capsys.readouterr().err
    assert mine.parent == shared.parent / "cli"


def test_the_saved_panels_folder_and_its_lock_are_this_accounts_only(lib_env, tmp_path, monkeypatch):
    """QA: an existing panels folder (made before, or by hand, 0755) was left readable by every
    account (only a new one was made 0700), and the lock file was 0644."""
    import os
    import stat

    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    old_umask = os.umask(0o022)
    try:
        folder = panel.panels_file("alice").parent
        folder.mkdir(parents=True, mode=0o755)
        (folder / "bob.lock").write_text("")  # a lock made by an earlier version: 0644
        panel.save_panel("mine", list(DRUGS), "alice")
        panel.list_panels("bob")
        panel.save_panel("his", list(DRUGS), "bob")
    finally:
        os.umask(old_umask)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(folder) == 0o700
    assert mode(folder / "alice.lock") == 0o600 and mode(folder / "bob.lock") == 0o600
    assert mode(panel.panels_file("alice")) == 0o600


def test_a_saved_panel_never_scores_with_another_model_that_took_a_removed_members_folder(library, tmp_path,
                                                                                        monkeypatch, capsys):
    """An administrator removes a panel member; another model (someone else's, trained on other data)
    gets the same default folder name: the saved panel leaves it out and says which member changed."""
    import json
    import shutil

    from scatd_core.bundle import remove_bundle
    from scatd_core.cli.predict import os_user

    user = os_user()  # whose panels `scatd predict --panel` reads

    mine = tmp_path / "lib"
    for name in DRUGS:
        shutil.copytree(library / name, mine / name)
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(mine))
    panel.save_panel("mine", list(DRUGS), user, cli=True)
    remove_bundle(mine / "DRUGA")
    shutil.copytree(library / "SUBSET", mine / "DRUGA")  # another model, now in DRUGA's folder
    bundles, problems = panel.load_panel("mine", user, cli=True)
    assert [b.drug for b in bundles] == ["DRUGB", "DRUGC"]
    [problem] = problems
    assert problem.startswith("DRUGA: the model 'DRUGA (dist_vae)' was removed (or replaced) and another model "
                              "now has its folder ('DRUGD (dist_vae)'") and "save the panel again" in problem
    assert str(mine) not in problem
    assert main(["predict", "--panel", "mine", "--input", str(_h5ad(tmp_path)), "--output", str(tmp_path / "p.csv"),
                 "--html", str(tmp_path / "p.html"), "--drug-metrics", str(tmp_path / "drugs.csv")]) == 0
    err = capsys.readouterr().err
    assert "another model now has its folder" in err
    table = pd.read_csv(tmp_path / "p.csv")
    assert not any(c.startswith("DRUGD") for c in table.columns)  # never scored in its place
    # QA: the drug left out vanished from every output; now it is named, empty, with why (once, per drug), and
    # said last
    assert table["DRUGA_prob_resistant"].isna().all() and not table["DRUGA_scored"].any()
    assert (table["DRUGA_not_scored_reason"] == "drug not scored").all()
    drugs = pd.read_csv(tmp_path / "drugs.csv").set_index("drug")
    assert drugs.loc["DRUGA", "status"] == "not loaded"
    assert "another model now has its folder" in drugs.loc["DRUGA", "not_scored_reason"]
    assert "Panel of 2 models: DRUGB, DRUGC (3 drugs requested; not loaded: DRUGA)" in err
    assert "warning: 3 drugs requested, 2 scored; not scored: DRUGA." in err.splitlines()[-2]
    assert err.splitlines()[-1].startswith("  - DRUGA: model DRUGA: the model 'DRUGA (dist_vae)' was removed")
    html = (tmp_path / "p.html").read_text()
    assert "scATD drug panel (3 drugs requested, 2 scored)" in html and "not loaded (not scored)" in html
    assert main(["panel", "list"]) == 0  # the list says it too (QA: it showed the member as if it were fine)
    listed = capsys.readouterr()
    assert "mine\tDRUGA, DRUGB, DRUGC" in listed.out and "mine: DRUGA: the model 'DRUGA (dist_vae)' was removed" in listed.err
    shutil.rmtree(mine / "DRUGA")
    assert panel.load_panel("mine", user, cli=True)[1] == ["DRUGA: not in the model library any more (removed)"]
    # a panel saved before identities were recorded: its members are taken as they are
    path = panel.panels_file(user, cli=True)
    record = json.loads(path.read_text())
    for key in ("identities", "names"):
        del record["panels"]["mine"][key]
    path.write_text(json.dumps(record))
    shutil.copytree(library / "SUBSET", mine / "DRUGA")
    assert [b.drug for b in panel.load_panel("mine", user, cli=True)[0]] == ["DRUGD", "DRUGB", "DRUGC"]


def test_models_chosen_in_a_session_are_rechecked_by_identity(library):
    """The app's chosen panel members (folder -> the model it held then): one whose folder holds another
    model now, one removed, one that cannot be used any more are left out, each said without a path."""
    from scatd_core.bundle import LibraryEntry, list_library, model_identity

    entries = list_library(library)
    a, b, c = _bundles(library)
    chosen = {str(a.path): (model_identity(a), a.name),
              str(b.path): ("the model that was removed", "DRUGB (old)"),
              str(library / "GONE"): ("x", "GONE (dist_vae)"),
              str(c.path): None}  # nothing recorded (a session from before): only its folder is checked
    kept, problems = panel.recheck_chosen(chosen, entries)
    assert kept == [str(a.path), str(c.path)]
    assert problems[0].startswith("DRUGB: the model 'DRUGB (old)' was removed (or replaced) and another model now "
                                  "has its folder ('DRUGB (dist_vae)', installed")
    assert problems[0].endswith("; it is not used in its place (choose it again to use the new model)")
    assert problems[1:] == ["GONE: not in the model library any more (removed)"]
    broken = [e if e.path.name != "DRUGA" else LibraryEntry(e.path, None, "not readable by this account")
              for e in entries]
    kept, problems = panel.recheck_chosen({str(a.path): (model_identity(a), a.name)}, broken)
    assert kept == [] and problems == ["DRUGA: cannot be used any more: not readable by this account"]
    assert not any(str(library) in p for p in problems)


def _h5ad(tmp_path):
    make_dataset(60, seed=9).write_h5ad(tmp_path / "cells.h5ad")
    return tmp_path / "cells.h5ad"


def test_cli_predict_with_several_models_writes_one_column_set_per_drug(lib_env, tmp_path, capsys):
    data = make_dataset(160, seed=7)
    data.write_h5ad(tmp_path / "cells.h5ad")
    out, h5, summ, rep = (tmp_path / n for n in ("panel.csv", "panel.h5ad", "summary.csv", "panel.html"))
    code = main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
                 "--model", "SUBSET", "--output", str(out), "--h5ad", str(h5), "--sample-column", "sample",
                 "--group-summary", str(summ), "--html", str(rep), "--expected-fraction", "0.3"])
    err = capsys.readouterr().err
    assert code == 0, err
    table = pd.read_csv(out)
    assert len(table) == 160 and list(table["cell_id"]) == list(data.obs_names)
    for drug in ("DRUGA", "DRUGB", "DRUGD"):
        assert {f"{drug}_prob_resistant", f"{drug}_label", f"{drug}_calibrated"} <= set(table.columns)
        assert table[f"{drug}_calibrated"].all()  # --expected-fraction calibrated every drug
        assert (table[f"{drug}_label"] == "resistant").mean() == pytest.approx(0.3, abs=0.02)
    assert "sample" in table and "n_drugs_resisted" in table and (table["n_drugs_scored"] == 3).all()
    back = ad.read_h5ad(h5)
    assert {"scatd_DRUGA_prob_resistant", "scatd_DRUGD_label", "scatd_panel_n_resisted"} <= set(back.obs.columns)
    assert "scatd_panel" in back.uns
    s = pd.read_csv(summ)
    assert set(s["grouping"]) == {"all", "sample"}
    html = rep.read_text()
    # every drug calibrated to one fraction: the whole-sample chart is a tie, titled so (QA: "best drug first")
    assert "Whole sample: every drug at the same expected fraction, so no ranking" in html and "DRUGD" in html
    assert "Whole sample: best drug first" not in html
    assert "https://" not in html.split("</script>")[-1]
    assert "DRUGD: Genes: 1,200 of 1,200" in err and "called resistant to all 3 scored drugs" in err
    assert "equal by construction" in err  # one --expected-fraction for every drug: the ranking is a tie
    # the panel's own outputs with one model: said at once, not silently left out
    code = main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--output",
                 str(tmp_path / "one.csv"), "--group-summary", str(tmp_path / "one_summary.csv")])
    assert code == 2 and "--group-summary is for a panel" in capsys.readouterr().err
    assert not (tmp_path / "one.csv").exists()


def test_cli_panel_save_then_predict_with_it_and_errors(lib_env, tmp_path, capsys):
    data = make_dataset(120, seed=8)
    data.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["panel", "save", "three", "--model", "DRUGA", "--model", "DRUGB", "--model", "DRUGC"]) == 0
    assert main(["panel", "list"]) == 0
    assert "three\tDRUGA, DRUGB, DRUGC" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--panel", "three", "--output", str(out)]) == 0
    assert {"DRUGA_label", "DRUGB_label", "DRUGC_label"} <= set(pd.read_csv(out).columns)
    # its name in other capitals is the same panel (QA: KeyError 'THREE', exit 1)
    cased = tmp_path / "cased.csv"
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--panel", "THREE", "--output", str(cased)]) == 0
    assert pd.read_csv(cased).equals(pd.read_csv(out))
    capsys.readouterr()
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--panel", "three", "--model", "DRUGA",
                 "--output", str(out)]) == 2
    assert "either --model" in capsys.readouterr().err
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--output", str(out)]) == 2
    assert "Say which model" in capsys.readouterr().err
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--panel", "nope", "--output", str(out)]) == 2
    assert "no panel named 'nope'" in capsys.readouterr().err
    assert main(["panel", "save", "bad/name", "--model", "DRUGA", "--model", "DRUGB"]) == 2
    assert "not a valid panel name" in capsys.readouterr().err


def test_cli_train_panel_skips_thin_drugs_and_resumes(tmp_path, monkeypatch, capsys):
    from scatd_core.demo.simulate import simulate_demo

    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "lib"))
    bulk, labels, tumour = simulate_demo(seed=0, n_cell_lines=60, n_cells=150)
    labels["RARE"] = "resistant"
    labels.iloc[:3, labels.columns.get_loc("RARE")] = "sensitive"  # 3 sensitive lines: too few
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    tumour.write_h5ad(tmp_path / "tumour.h5ad")
    labels.to_csv(tmp_path / "labels.csv")
    args = ["train-panel", "--overwrite",  # run again below: its --summary replaced
            "--bulk", str(tmp_path / "bulk.h5ad"), "--bulk-labels", str(tmp_path / "labels.csv"),
            "--target", str(tmp_path / "tumour.h5ad"), "--drugs", "demotinib,RARE,DEMOPLATIN", "--min-lines", "5",
            "--members", "3",  # an ensemble still (the default is 10): the heads and backbones a third
            "--pretrain-epochs", "2", "--epochs", "3", "--finetune-epochs", "1", "--folds", "2", "--threads", "1",
            "--summary", str(tmp_path / "summary.csv"), "--save-panel", "starter"]
    threads = __import__("torch").get_num_threads()
    # true labels of the target cells for one drug: checked before any training, then its target AUROC
    for bad, said in ((["--target-labels", "demotinib"], "not DRUG=COLUMN"),
                      (["--target-labels", "demotinib=nope"], "no column 'nope'"),
                      (["--target-labels", "OTHERDRUG=response"], "not in the label table"),
                      (["--target-labels", "DEMOLIMUS=response"], "not one of the drugs to train"),
                      (["--target-resistant-value", "0"], "no --target-labels was given")):
        labels.assign(DEMOLIMUS=labels["DEMOTINIB"]).to_csv(tmp_path / "labels.csv")
        assert main(args + bad) == 2 and said in capsys.readouterr().err, bad
    labels.to_csv(tmp_path / "labels.csv")
    assert main(args + ["--target-labels", "demotinib=response"]) == 0, capsys.readouterr().err
    assert "note: --epochs and --finetune-epochs have no effect: the default linear heads" in capsys.readouterr().err
    assert __import__("torch").get_num_threads() == threads  # --threads is the training's, not the process's
    first = pd.read_csv(tmp_path / "summary.csv")
    assert list(first["drug"]) == ["DEMOTINIB", "RARE", "DEMOPLATIN"]
    assert list(first["status"]) == ["trained", "skipped", "trained"]
    assert "3 sensitive" in first.loc[1, "note"]
    assert first.loc[0, "cv_auroc"] > 0 and first.loc[0, "n_sensitive"] > 5
    assert 0.5 < first.loc[0, "target_auroc"] <= 1 and first["target_auroc"].iloc[1:].isna().all()
    from scatd_core.bundle import list_library  # simulated cell lines (an h5ad written from them): demo models

    assert sorted(e.bundle.drug for e in list_library() if e.ok and e.bundle.is_demo) == ["DEMOPLATIN", "DEMOTINIB"]
    # each drug's model card in brief: its best baseline on the same bulk CV, and the card's verdict on it
    assert first.loc[0, "cv_best_baseline"].startswith(("logistic regression", "gradient boosting"))
    assert 0 < first.loc[0, "cv_best_baseline_auroc"] <= 1
    assert first.loc[0, "cv_best_baseline"].split(" (")[0].lower() in first.loc[0, "verdict"].lower()
    assert list(panel.list_panels(__import__("getpass").getuser(), cli=True)["starter"]["models"]) == list(
        first.loc[[0, 2], "bundle"])
    assert "cv_auroc_sd" not in first.columns  # empty for the linear heads: their interval instead
    assert 0 <= first.loc[0, "cv_auroc_ci_low"] <= first.loc[0, "cv_auroc_ci_high"] <= 1
    assert main(args + ["--target-labels", "demoplatin=response", "--replace-panel"]) == 0
    again = pd.read_csv(tmp_path / "summary.csv")
    assert list(again["status"]) == ["resumed", "skipped", "resumed"]
    assert "not evaluated on 'response' (that run had no target labels" in again.loc[2, "note"]
    assert again.loc[0, "target_auroc"] == first.loc[0, "target_auroc"]  # from its card
    assert list(again["bundle"].fillna("")) == list(first["bundle"].fillna(""))
    # QA: a raised --min-lines was ignored on resuming (Sorafenib, 12 sensitive lines, "resumed" with 13)
    fewest = int(min(first.loc[2, "n_sensitive"], first.loc[2, "n_resistant"]))
    raised = args[:args.index("--min-lines")] + ["--min-lines", str(fewest + 1)] + args[args.index("--min-lines") + 2:-2]
    capsys.readouterr()
    assert main(raised) in (0, 2)
    higher = pd.read_csv(tmp_path / "summary.csv").set_index("drug")
    assert higher.loc["DEMOPLATIN", "status"] == "skipped" and pd.isna(higher.loc["DEMOPLATIN", "bundle"])
    assert (f"too few labelled cell lines: {first.loc[2, 'n_sensitive']} sensitive, {first.loc[2, 'n_resistant']} "
            f"resistant in the bulk (at least {fewest + 1} of each needed)") == higher.loc["DEMOPLATIN", "note"]
    # a label table made again with a drug less: the trained drug on the same labels is kept, not trained again
    labels.drop(columns=["DEMOPLATIN"]).to_csv(tmp_path / "labels.csv")
    assert main(args[:args.index("--drugs")] + ["--drugs", "demotinib"] + args[args.index("--drugs") + 2:-2]) == 0
    fewer = pd.read_csv(tmp_path / "summary.csv")
    assert list(fewer["status"]) == ["resumed"] and fewer.loc[0, "bundle"] == first.loc[0, "bundle"]
    # changed labels for a drug: trained again
    labels.loc[labels.index[:4], "DEMOTINIB"] = "sensitive"
    labels.to_csv(tmp_path / "labels.csv")
    assert main(args[:args.index("--drugs")] + ["--drugs", "demotinib"] + args[args.index("--drugs") + 2:-2]) == 0
    assert list(pd.read_csv(tmp_path / "summary.csv")["status"]) == ["trained"]
    assert main(args[:-8] + ["--drugs", "NOTADRUG"]) == 2
    assert "NOTADRUG" in capsys.readouterr().err


def test_the_panel_report_builds_from_an_annotated_h5ad_read_back(library, tmp_path):
    """Each drug's warnings (none here) come back from an h5ad as a numpy array, whose truth value is an error."""

    data = make_dataset(120, seed=9)
    panel.predict_panel(data, _bundles(library, DRUGS[:2]))
    back = ad.read_h5ad(export.write_h5ad(data, tmp_path / "annotated.h5ad"))
    assert isinstance(back.uns[panel.members(back)[0].key]["warnings"], np.ndarray)
    assert panel.model_warnings(back) == []
    assert "<h2>Models</h2>" in export.panel_html_report(back, group_columns=["sample"])


def test_panel_report_html_has_the_figures(library):
    data = make_dataset(150, seed=9)
    panel.predict_panel(data, _bundles(library))
    uncalibrated = export.panel_html_report(data, group_columns=["sample"])
    assert "at uncalibrated thresholds" in uncalibrated and "possible multi-drug-resistant" not in uncalibrated
    assert "compare mean P" not in uncalibrated  # not comparable across models
    panel.calibrate_panel(data, 0.5)
    markers = panel.multi_resistant_markers(data, n_top=5)
    html = export.panel_html_report(data, group_columns=["sample"], markers=markers, data_name="t<b>.h5ad")
    assert html.count("class=\"plotly-graph-div\"") >= 3  # ranking, heatmap, dot plot
    assert "t&lt;b&gt;.h5ad" in html and "possible multi-drug-resistant subclone" in html
    assert "equal by construction" in html  # every drug calibrated to one fraction
    assert markers["gene"].iloc[0] in html
    # the footer names the files as they were downloaded, each with what it holds
    named = export.panel_html_report(data, files=["t_panel.csv", "t_panel_summary.csv", "t_panel_annotated.h5ad"])
    assert ("t_panel.csv (cells x drugs), t_panel_summary.csv (per cluster / sample and drug), "
            "t_panel_annotated.h5ad (one column set per drug)") in named
    # the drug-count UMAP names its grey only when a cell is grey (scored by no drug)
    data.obsm["X_umap"] = np.random.default_rng(0).normal(size=(data.n_obs, 2))
    assert "coloured by the number of drugs resisted" in export.panel_html_report(data)
    assert "grey: scored by no drug" not in export.panel_html_report(data)
    data.obs[_keys.PANEL_N_RESISTED] = data.obs[_keys.PANEL_N_RESISTED].astype("Int64")
    data.obs.loc[data.obs_names[0], _keys.PANEL_N_RESISTED] = pd.NA
    assert "grey: scored by no drug" in export.panel_html_report(data)


def test_scatd_demo_panel_writes_the_panel_files(library, tmp_path, monkeypatch, capsys):
    """`scatd demo --panel`'s panel step (the demo's models replaced by the test's, to stay fast)."""
    import argparse

    from scatd_core import demo
    from scatd_core.cli.demo import demo_panel

    monkeypatch.setattr(demo, "ensure_panel", lambda library=None, progress=None, root=library: _bundles(root))
    cells = make_dataset(150, seed=10)
    demo_panel(cells, argparse.Namespace(out=str(tmp_path), library=None))
    out = capsys.readouterr().out
    assert "  - DRUG" in out and "1. DRUG" not in out and "panel_report.html" in out  # uncalibrated: no ranks
    assert "(uncalibrated)" in out and "at uncalibrated thresholds" in out  # the demo panel is not calibrated
    table = pd.read_csv(tmp_path / "panel.csv")
    assert {"DRUGA_label", "response", "sample", "cluster"} <= set(table.columns)
    summary = pd.read_csv(tmp_path / "panel_summary.csv")
    assert set(summary["grouping"]) == {"all", "sample", "cluster"}
    report = (tmp_path / "panel_report.html").read_text()
    assert "Whole sample: fraction called resistant per drug, uncalibrated" in report  # not "best drug first"
    assert "does not rank the drugs" in report and "best drug first" not in report + out
    # the footer's annotated.h5ad holds what it says: one column set per drug
    assert "annotated.h5ad (one column set per drug)" in (tmp_path / "panel_report.html").read_text()
    written = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert "scatd_panel" in written.uns and "scatd_panel_resistant_to_all" in written.obs


def test_models_of_different_backbones_score_together(library, small_bundles):
    """A Dist_VAE model on genes and a VAE_sf model on the cells' scFoundation embeddings (obsm), in one panel."""
    vae_sf = small_bundles["vae_sf"][0]
    data = make_dataset(120, seed=11)
    data.obsm["X_scfoundation"] = np.random.default_rng(0).normal(size=(120, vae_sf.architecture.input_dim))
    members = panel.predict_panel(data, _bundles(library, ("DRUGA",)) + [vae_sf])
    assert [m.status for m in members] == ["scored", "scored"]
    assert [m.input_group for m in members] == [0, 1] and members[1].coverage == {}
    single = data.copy()
    predict(single, vae_sf)
    np.testing.assert_allclose(data.obs[f"{members[1].key}_prob_resistant"], single.obs["scatd_prob_resistant"])


def test_result_prefixes_never_overwrite_the_package_keys():
    taken: set[str] = set()
    names = [panel.drug_prefix(d, taken) for d in ("panel", "qc", "DRUG", "DRUG", "a/b", "a b")]
    assert names[:4] == ["scatd_panel_2", "scatd_qc_2", "scatd_DRUG", "scatd_DRUG_2"]
    assert len(set(names)) == 6 and all("/" not in n and " " not in n for n in names)


def test_two_models_of_one_drug_keep_their_own_columns(library):
    """Two models for the same drug (e.g. two trainings): each keeps its columns and summary rows,
    named DRUG and DRUG_2 in model order, with the model named in the member table."""
    first, other = _bundles(library, ("DRUGA", "DRUGB"))
    data = make_dataset(90, seed=12)
    members = panel.predict_panel(data, [first, other, first])
    assert [m.drug for m in members] == ["DRUGA", "DRUGB", "DRUGA_2"]
    table = panel.panel_table(data)
    for m in members:
        np.testing.assert_array_equal(table[f"{m.drug}_prob_resistant"], data.obs[f"{m.key}_prob_resistant"])
    single = make_dataset(90, seed=12)
    predict(single, other)
    np.testing.assert_allclose(table["DRUGB_prob_resistant"], single.obs["scatd_prob_resistant"])
    summary = panel.group_summary(data, "sample")
    assert sorted(set(summary["drug"])) == ["DRUGA", "DRUGA_2", "DRUGB"]


def test_cli_panel_beta_mode_is_each_models_single_prediction(small_bundles, tmp_path, capsys):
    """--beta-mode separate reaches every model of a panel: an imported original Dist_VAE checkpoint
    (beta_mode shared_with_head) gives in the panel what it gives alone with --beta-mode separate."""
    from scatd_core.bundle import import_checkpoint

    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    other = import_checkpoint(bundle.path.parent / "dist_vae.pth", "dist_vae", drug="OTHERDRUG", out=tmp_path / "other",
                              genes=bundle.path.parent / "genes.txt")
    x = np.abs(np.random.default_rng(6).normal(size=(40, enc[0]))).astype(np.float32)
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "cells.h5ad")
    cells = str(tmp_path / "cells.h5ad")
    runs = {}
    for name, extra in (("panel", ["--model", str(other.path)]), ("single", [])):
        for mode in ("separate", "shared_with_head"):
            out = tmp_path / f"{name}_{mode}"
            assert main(["predict", "--input", cells, "--model", str(bundle.path), *extra, "--output",
                         f"{out}.csv", "--h5ad", f"{out}.h5ad", "--beta-mode", mode]) == 0, capsys.readouterr().err
            back = ad.read_h5ad(f"{out}.h5ad")
            key = "scatd_TESTDRUG" if name == "panel" else "scatd"
            runs[name, mode] = (back.obs[f"{key}_prob_resistant"].to_numpy(), back.obsm[f"X_{key}"])
    for mode in ("separate", "shared_with_head"):
        for got, single in zip(runs["panel", mode], runs["single", mode]):
            np.testing.assert_array_equal(got, single)
    # the two modes differ (the original inference's encoder runs with the head's beta)
    assert np.abs(runs["panel", "separate"][1] - runs["panel", "shared_with_head"][1]).max() > 1e-2


def test_comparisons_say_what_compares_and_each_drug_gets_its_own_fraction(library):
    data = make_dataset(200, seed=13)
    panel.predict_panel(data, _bundles(library))
    notes = " ".join(panel.comparison_notes(data))
    assert "Uncalibrated" in notes and "compare mean P" not in notes
    assert "neither the fractions called resistant nor the mean P(resistant) compare" in notes
    panel.calibrate_panel(data, 0.3)
    assert "equal by construction" in " ".join(panel.comparison_notes(data))
    assert panel.one_expected_fraction(data) == 0.3
    done = panel.calibrate_panel(data, 0.3, {"druga": 0.1, "DRUGC": 0.5})
    assert done == {"DRUGA": 0.1, "DRUGB": 0.3, "DRUGC": 0.5}
    ranking = panel.drug_ranking(data).set_index("drug")
    for drug, fraction in done.items():
        assert ranking.loc[drug, "fraction_resistant"] == pytest.approx(fraction, abs=0.01)
    assert panel.one_expected_fraction(data) is None
    # QA: the whole-sample "best drug first" only repeated the fractions typed; the per-sample comparison is
    # what the cells add
    notes = " ".join(panel.comparison_notes(data))
    assert "(DRUGA 10%, DRUGB 30%, DRUGC 50%)" in notes and "ranks nothing" in notes and "per sample" in notes
    title = panel.ranking_title(data, "Whole sample")
    assert "best drug first" not in title and "expected fractions given" in title
    assert "ranks nothing" in panel.whole_sample_caveat(data)
    assert panel.ranking_title(data, "sample P1") == "sample P1: best drug first"
    panel.calibrate_panel(data, 0.3)  # one fraction for every drug: the whole-sample chart is retitled too
    assert panel.ranking_title(data, "Whole sample") == "Whole sample: every drug at the same expected fraction, " \
                                                        "so no ranking"
    assert "Equal by construction" in panel.whole_sample_caveat(data)
    with pytest.raises(InputError, match="No scored drug of the panel is called 'NOPE'"):
        panel.calibrate_panel(data, per_drug={"NOPE": 0.2})


def test_cli_expected_fraction_per_drug(lib_env, tmp_path, capsys):
    make_dataset(150, seed=14).write_h5ad(tmp_path / "cells.h5ad")
    base = ["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
            "--model", "DRUGC", "--output", str(tmp_path / "p.csv")]
    assert main(base + ["--expected-fraction", "DRUGA=0.1", "--expected-fraction", "0.4"]) == 0
    err = capsys.readouterr().err
    table = pd.read_csv(tmp_path / "p.csv")
    assert (table["DRUGA_label"] == "resistant").mean() == pytest.approx(0.1, abs=0.02)
    assert (table["DRUGB_label"] == "resistant").mean() == pytest.approx(0.4, abs=0.02)
    assert "equal by construction" not in err and table["DRUGC_calibrated"].all()
    assert main(base + ["--expected-fraction", "NOPE=0.1"]) == 2
    assert "not a drug of the panel" in capsys.readouterr().err
    one = ["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--output", str(tmp_path / "o.csv")]
    assert main(one + ["--expected-fraction", "DRUGA=0.1"]) == 2
    assert "this run has one model" in capsys.readouterr().err


def test_resistant_to_all_is_a_subclone_only_when_calibrated_and_two_drugs_scored(library, small_bundles):
    data = make_dataset(200, seed=15)
    panel.predict_panel(data, _bundles(library))
    text, subclone = panel.resistant_to_all_statement(data)
    assert "at uncalibrated thresholds (DRUGA, DRUGB, DRUGC)" in text and not subclone
    assert "possible multi-drug-resistant subclone" not in text
    panel.calibrate_panel(data, 0.5)
    text, subclone = panel.resistant_to_all_statement(data)
    assert text.endswith("a possible multi-drug-resistant subclone.") and subclone
    # one model scored, the other skipped: no cross-drug sentence
    lone = make_dataset(100, seed=15)
    panel.predict_panel(lone, _bundles(library, ("DRUGA",)) + [small_bundles["vae_sf"][0]])
    text, subclone = panel.resistant_to_all_statement(lone)
    assert "needs at least 2 scored drugs" in text and "resistant to all" not in text and not subclone
    assert "at least 2 scored drugs" in " ".join(panel.comparison_notes(lone))


def _set_calls(data, members, resistant_rows):
    """Each calibrated drug's calls set by hand: the rows given are resistant, the others sensitive."""
    from scatd_core._keys import result_keys

    for m, rows in zip(members, resistant_rows):
        calls = np.full(data.n_obs, "sensitive", dtype=object)
        calls[list(rows)] = "resistant"
        data.obs[result_keys(m.key).label] = pd.Categorical(calls)
    panel.refresh(data)


def test_cells_resistant_to_all_are_a_subclone_only_when_clearly_more_than_chance(library):
    """QA: "1 of 90 scored cells are called resistant to all 3 scored drugs: a possible multi-drug-resistant
    subclone", though three drugs each calling 30% resistant give 0.3^3 x 90 = 2.4 such cells by chance."""
    data = make_dataset(90, seed=15)
    members = panel.predict_panel(data, _bundles(library))
    panel.calibrate_panel(data, 0.3)
    # 27 cells (30%) resistant per drug, one cell (row 26) resistant to all three
    _set_calls(data, members, [range(0, 27), range(26, 53), [26, *range(53, 79)]])
    for app in (False, True):
        text, subclone = panel.resistant_to_all_statement(data, app=app)
        assert not subclone and "subclone." not in text.replace("not evidence of a multi-drug-resistant subclone.", "")
        assert text.startswith("1 of 90 scored cells are called resistant to all 3 scored drugs; about 2.4 would "
                               "be by chance if the drugs' calls were independent")
        assert "no more than chance would give, so it is not evidence of a multi-drug-resistant subclone." in text
    e = panel.resistant_to_all_enrichment(data)
    assert e["observed"] == 1 and e["n_cells"] == 90 and e["expected"] == pytest.approx(90 * 0.3 ** 3)
    # 8 of them: more than chance (p < 0.01), but too few cells to call a subclone
    _set_calls(data, members, [range(0, 27), [*range(19, 27), *range(27, 46)], [*range(19, 27), *range(46, 65)]])
    text, subclone = panel.resistant_to_all_statement(data)
    assert panel.resistant_to_all_enrichment(data)["p_value"] < 0.01 and not subclone and "under 10 cells" in text
    # 20 of them: clearly enriched, a possible subclone (and its biomarkers may be looked up)
    _set_calls(data, members, [range(0, 27), [*range(7, 27), *range(27, 34)], [*range(7, 27), *range(34, 41)]])
    text, subclone = panel.resistant_to_all_statement(data)
    assert subclone and text.startswith("20 of 90 scored cells") and "about 2.4 would be by chance" in text
    assert text.endswith("a possible multi-drug-resistant subclone.") and "binomial p = " in text


def test_cells_no_drug_scored_have_no_count_of_drugs_resisted(library, tmp_path):
    data = make_dataset(120, seed=16)
    qc = np.ones(120, dtype=bool)
    qc[:10] = False
    data.obs["scatd_qc_pass"] = qc
    panel.predict_panel(data, _bundles(library), mask="scatd_qc_pass")
    counts = data.obs["scatd_panel_n_resisted"]
    assert counts.isna().to_numpy()[:10].all() and counts.notna().to_numpy()[10:].all()
    assert (data.obs["scatd_panel_n_scored"].to_numpy() == np.where(qc, 3, 0)).all()
    assert np.isnan(panel.n_resisted_values(data)[:10]).all()
    table = panel.panel_table(data)
    assert table["n_drugs_resisted"].isna().sum() == 10 and (table["n_drugs_scored"].iloc[:10] == 0).all()
    for drug in DRUGS:  # per drug, whether it scored each cell and why not, as predictions.csv and the h5ad say
        assert list(table[f"{drug}_scored"]) == list(qc)
        assert list(table[f"{drug}_not_scored_reason"]) == ["filtered by QC"] * 10 + [""] * 110
    csv = pd.read_csv(__import__("io").BytesIO(export.to_csv_bytes(table)))
    assert csv["n_drugs_resisted"].isna().sum() == 10
    export.write_h5ad(data, tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.obs["scatd_panel_n_resisted"].isna().sum() == 10 and "scatd_panel_n_scored" in back.obs


def test_the_same_model_twice_is_scored_once(lib_env, tmp_path, capsys):
    make_dataset(80, seed=17).write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "p.csv"
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "DRUGA",
                 "--model", "DRUGB", "--output", str(out), "--h5ad", str(tmp_path / "p.h5ad")]) == 0
    err = capsys.readouterr().err
    assert "DRUGA (DRUGA) was given twice; it is scored once" in err
    table = pd.read_csv(out)
    assert "DRUGA_2_prob_resistant" not in table and {"DRUGA_label", "DRUGB_label"} <= set(table.columns)
    assert table["n_drugs_scored"].max() == 2
    # two different models of one drug: both scored, said to count as two, told apart by their folder
    make_bundle(lib_env / "DRUGA_v2", make_dataset(120, seed=1), drug="DRUGA", seed=9, steps=5)
    kept, notes = panel.check_models(_bundles(lib_env, ("DRUGA", "DRUGA_v2", "DRUGA")))
    assert [b.path.name for b in kept] == ["DRUGA", "DRUGA_v2"]
    assert any("DRUGA has 2 different models in the panel (DRUGA, DRUGA_v2)" in n and "DRUGA, DRUGA_2" in n
               for n in notes)
    data = make_dataset(60, seed=17)
    panel.predict_panel(data, kept)
    assert list(export.panel_models_table(data)["folder"]) == ["DRUGA", "DRUGA_v2"]


def test_cli_mask_scores_only_the_qc_passing_cells(lib_env, tmp_path, capsys):
    data = make_dataset(100, seed=18)
    data.obs["scatd_qc_pass"] = np.arange(100) >= 20
    data.write_h5ad(tmp_path / "cells.h5ad")
    cells = str(tmp_path / "cells.h5ad")
    assert main(["predict", "--input", cells, "--model", "DRUGA", "--output", str(tmp_path / "one.csv"),
                 "--mask", "scatd_qc_pass", "--h5ad", str(tmp_path / "one.h5ad")]) == 0
    assert ad.read_h5ad(tmp_path / "one.h5ad").uns["scatd"]["qc"]["mask"] == "scatd_qc_pass"  # named, not 'array'
    one = pd.read_csv(tmp_path / "one.csv")
    assert len(one) == 100 and one["prob_resistant"].isna().sum() == 20
    assert one["label"].iloc[:20].str.startswith("filtered").all() and one["prob_resistant"].iloc[20:].notna().all()
    assert main(["predict", "--input", cells, "--model", "DRUGA", "--model", "DRUGB", "--output",
                 str(tmp_path / "p.csv"), "--mask", "scatd_qc_pass"]) == 0
    assert "scoring 80 of 100 cells" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["DRUGB_prob_resistant"].isna().sum() == 20 and table["n_drugs_resisted"].isna().sum() == 20
    assert main(["predict", "--input", cells, "--model", "DRUGA", "--output", str(tmp_path / "x.csv"),
                 "--mask", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no obs column 'nope' to use as the mask" in err and "scatd_qc_pass" in err and "Traceback" not in err


def test_a_mask_column_of_ones_own_says_so_and_the_panel_csv_says_why_per_drug(lib_env, tmp_path, capsys):
    """--mask keep (the user's column, no QC ran): the cells it leaves out are 'left out by the mask
    column 'keep'', not 'filtered by QC', in predictions.csv, panel.csv (per drug: <DRUG>_scored,
    <DRUG>_not_scored_reason, as the h5ad's scatd_<DRUG>_* columns), metrics.csv and the messages;
    labelled 'left out (mask)', not 'filtered (QC)' (label columns, the h5ad's colours), and left out
    of the panel's calls as the QC filter's cells are."""
    data = make_dataset(80, seed=21)
    data.obs["keep"] = np.arange(80) >= 10
    data.write_h5ad(tmp_path / "cells.h5ad")
    cells, said = str(tmp_path / "cells.h5ad"), "left out by the mask column 'keep'"
    assert main(["predict", "--input", cells, "--model", "DRUGA", "--output", str(tmp_path / "one.csv"),
                 "--mask", "keep", "--h5ad", str(tmp_path / "one.h5ad")]) == 0
    assert f'labelled "left out (mask)", marked "{said}"' in capsys.readouterr().err
    one = pd.read_csv(tmp_path / "one.csv", keep_default_na=False)
    assert (one["not_scored_reason"].iloc[:10] == said).all() and (one["not_scored_reason"].iloc[10:] == "").all()
    assert set(one["label"].iloc[:10]) == {_keys.MASKED} and _keys.FILTERED not in set(one["label"])
    metrics = export.metrics_table(ad.read_h5ad(tmp_path / "one.h5ad"))
    assert metrics.set_index("metric").loc["filtered_by", "value"] == said
    assert "filtered by QC" not in metrics["value"].astype(str).str.cat()
    assert main(["predict", "--input", cells, "--model", "DRUGA", "--model", "DRUGB", "--mask", "keep",
                 "--output", str(tmp_path / "p.csv"), "--h5ad", str(tmp_path / "p.h5ad")]) == 0
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    for drug in ("DRUGA", "DRUGB"):
        assert list(table[f"{drug}_scored"]) == list(np.arange(80) >= 10)
        assert list(table[f"{drug}_not_scored_reason"]) == [said] * 10 + [""] * 70
        assert list(back.obs[f"scatd_{drug}_not_scored_reason"].astype(str)) == [said] * 10 + [""] * 70
        assert list(table[f"{drug}_label"].iloc[:10]) == [_keys.MASKED] * 10
        labels = back.obs[f"scatd_{drug}_label"]
        colours = dict(zip(labels.cat.categories, back.uns[f"scatd_{drug}_label_colors"]))
        assert colours[_keys.MASKED] == "#cfcfcf"  # the QC filter's light grey
    assert set(panel.drug_ranking(back)["n_called"]) == {70}  # the 10 left out are not calls
    # the app's QC filter (a plain mask, or its column) keeps its words
    qc = make_dataset(40, seed=22)
    qc.obs[_keys.QC_PASS] = np.arange(40) >= 5
    panel.predict_panel(qc, _bundles(lib_env, DRUGS[:1]), mask=qc.obs[_keys.QC_PASS].to_numpy())
    assert set(panel.panel_table(qc)["DRUGA_not_scored_reason"].iloc[:5]) == {"filtered by QC"}
    assert set(panel.panel_table(qc)["DRUGA_label"].iloc[:5]) == {_keys.FILTERED}
    predict(qc, load_bundle(lib_env / "DRUGA"), mask=_keys.QC_PASS)
    assert set(export.predictions_table(qc)["not_scored_reason"].iloc[:5]) == {"filtered by QC"}
    assert export.metrics_table(qc).set_index("metric").loc["filtered_by", "value"] == "filtered by QC"


def test_cli_messages_name_the_model_folder_and_no_app_page(lib_env, tmp_path, capsys):
    data = make_dataset(60, seed=19)
    other = data[:, :300].copy()
    other.var_names = [f"OTHER{i}" for i in range(300)]
    make_bundle(tmp_path / "OTHERGENES", other, drug="DRUGX", steps=2)
    data.write_h5ad(tmp_path / "cells.h5ad")
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model",
                 str(tmp_path / "OTHERGENES"), "--output", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning: DRUGX (model OTHERGENES) skipped" in err and "DRUGX (DRUGX" not in err
    assert "Only 1 drug scored the cells" in err and "resistant to all 1" not in err
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model",
                 str(tmp_path / "OTHERGENES"), "--output", str(tmp_path / "p3.csv"), "--strict"]) == 4
    err = capsys.readouterr().err  # --strict: a skipped drug makes a pipeline stop, with the reason
    assert "error: --strict" in err and "  - drug skipped: DRUGX" in err and (tmp_path / "p3.csv").exists()
    data.var_names = [f"X{i}" for i in range(data.n_vars)]
    data.write_h5ad(tmp_path / "nogenes.h5ad")
    assert main(["predict", "--input", str(tmp_path / "nogenes.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
                 "--output", str(tmp_path / "p2.csv")]) == 3
    err = capsys.readouterr().err
    assert "No model of the panel could score" in err and "Model page" not in err and "`scatd models`" in err


def test_train_panel_leaves_below_chance_models_out_of_the_saved_panel(tmp_path, monkeypatch, capsys):
    """A model at or below chance on the bulk CV is flagged in the summary and left out of --save-panel
    (--include-below-chance keeps it); a bad panel name is refused before any training."""
    from scatd_core.train._panel import _card_row

    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "lib"))
    lib = tmp_path / "lib"
    data = make_dataset(60, seed=20)
    bundles = [make_bundle(lib / d, data, drug=d, seed=i, steps=2) for i, d in enumerate(("GOOD", "OKAY", "BAD"))]
    for b, auroc in zip(bundles, (0.8, 0.7, 0.45)):
        b.manifest["metrics"] = {"cv": {"auroc": auroc}}
    # the card's interval of the bulk CV AUROC, not an sd the linear heads never record (QA: "None" on every row)
    bundles[0].manifest["card"] = {"evaluations": [{"name": "bulk_cv", "verdicts": [], "scores": [
        {"model": "this model", "auroc": 0.8, "auroc_ci": [0.71, 0.88]}]}]}
    rows = [_card_row(b.drug, "trained", b, None, 20, 20, 1.0) for b in bundles]
    assert "cv_auroc_sd" not in rows[0] and (rows[0]["cv_auroc_ci_low"], rows[0]["cv_auroc_ci_high"]) == (0.71, 0.88)
    assert rows[1]["cv_auroc_ci_low"] is None  # no card: no interval, said as empty
    assert [r["below_chance"] for r in rows] == [False, False, True]
    assert rows[2]["verdict"].startswith("Below chance: bulk CV AUROC 0.450 <= 0.5")
    summary = pd.DataFrame(rows)
    from scatd_core.train import summary_for_reading, verdict_lines

    assert verdict_lines(summary) == [f"BAD: {rows[2]['verdict']}"]  # the CLI's lines, the Train page's sentences
    shown = summary_for_reading(summary)
    assert "verdict" not in shown and list(shown["below_chance"]) == ["no", "no", "yes"]
    calls = []

    def fake_train_panel(*a, **k):
        calls.append(k)
        return summary, bundles

    monkeypatch.setattr("scatd_core.train.train_panel", fake_train_panel)
    args = ["train-panel", "--bulk", "b.h5ad", "--bulk-labels", "l.csv", "--drugs", "all", "--target", "t.h5ad"]
    assert main(args + ["--save-panel", "bad/name"]) == 2
    assert "not a valid panel name" in capsys.readouterr().err and calls == []
    assert main(args + ["--save-panel", "starter"]) == 0
    err = capsys.readouterr()
    assert "left out of panel 'starter', at or below chance on the bulk CV: BAD" in err.err
    assert "BAD: Below chance" in err.out
    user = __import__("getpass").getuser()
    assert panel.list_panels(user, cli=True)["starter"]["models"] == ["GOOD", "OKAY"]
    # QA: --save-panel replaced a saved panel of that name (whatever its case) unasked: refused before training
    capsys.readouterr()
    assert main(args + ["--save-panel", "STARTER", "--include-below-chance"]) == 2 and len(calls) == 1
    err = capsys.readouterr().err
    assert "You already have a panel named 'STARTER' (as 'starter': names are the same whatever their case) " \
           "(2 models: GOOD, OKAY); nothing was trained or replaced" in err and "--replace-panel" in err
    assert main(args + ["--replace-panel"]) == 2 and "--replace-panel is for --save-panel" in capsys.readouterr().err
    assert main(args + ["--save-panel", "starter", "--include-below-chance", "--replace-panel"]) == 0
    assert panel.list_panels(user, cli=True)["starter"]["models"] == ["GOOD", "OKAY", "BAD"]


def test_cli_panel_calibrates_on_labels_only_the_drug_they_record(lib_env, tmp_path, capsys):
    """A label column records the response to one drug: for a panel, --label-column DRUG=COLUMN
    calibrates that drug only (the others keep their default threshold, said); a bare column is
    refused before any work, saying what to write; labels that do not pin that drug's threshold
    down are said for that drug, and the panel's results are still written."""
    data = make_dataset(150, seed=21)
    alone = data.copy()
    predict(alone, load_bundle(lib_env / "DRUGA"))
    prob = alone.obs["scatd_prob_resistant"].to_numpy()
    data.obs["druga_response"] = np.where(prob > np.median(prob), "resistant", "sensitive")
    data.obs["noise"] = np.where(np.random.default_rng(0).random(150) < 0.5, "resistant", "sensitive")
    data.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "p.csv"
    base = ["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
            "--model", "DRUGC", "--calibrate-on-labels", "youden", "--output", str(out)]
    assert main(base + ["--label-column", "druga_response"]) == 2
    err = capsys.readouterr().err
    assert "--label-column druga_response does not say which drug's response the labels record" in err
    assert "Name it: --label-column DRUGA=druga_response" in err
    assert "Panel of" not in err and not out.exists()  # refused before any prediction
    for bad, said in ((["--label-column", "NOPE=druga_response"], "names 'NOPE', not a drug of the panel"),
                      ([], "--calibrate-on-labels needs --label-column DRUG=COLUMN")):
        assert main(base + bad) == 2 and said in capsys.readouterr().err, bad
    assert main(base + ["--label-column", "druga=druga_response"]) == 0
    err = capsys.readouterr().err
    table = pd.read_csv(out)
    assert table["DRUGA_calibrated"].all() and not table[["DRUGB_calibrated", "DRUGC_calibrated"]].any().any()
    assert "DRUGA: Threshold" in err and "labelled cells of 'druga_response'" in err
    assert "DRUGB, DRUGC keep their model's default threshold (uncalibrated" in err
    assert "druga_response" in table  # the label column itself, copied as for one model
    out.unlink()
    assert main(base + ["--label-column", "DRUGB=noise"]) == 0
    err = capsys.readouterr().err
    assert "warning: DRUGB (model DRUGB) is not calibrated on 'noise': The labelled cells of 'noise'" in err
    assert "It keeps its model's default threshold (uncalibrated)." in err
    assert not pd.read_csv(out)[[f"{d}_calibrated" for d in DRUGS]].any().any()
    # the panel's form given to one model: told to give the column alone
    one = ["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--output", str(tmp_path / "one.csv"),
           "--label-column", "DRUGA=druga_response"]
    assert main(one) == 2
    err = capsys.readouterr().err
    assert "that form is for a panel" in err and "give the column alone: --label-column druga_response" in err


def test_notes_name_each_uncalibrated_threshold_and_the_routes_where_the_reader_is(library):
    data = make_dataset(120, seed=22)
    members = panel.predict_panel(data, _bundles(library))
    set_threshold(data, 0.3, "user", key_added=members[1].key)
    panel.calibrate_panel(data, per_drug={"DRUGC": 0.2})
    cli, app = " ".join(panel.comparison_notes(data)), " ".join(panel.comparison_notes(data, app=True))
    for text in (cli, app):
        assert "Uncalibrated: DRUGA (its model's default, 0.5), DRUGB (a threshold set by hand, 0.3)." in text
        assert "0.05" not in text and "DRUGC" not in text
    # the ways to calibrate every drug where the reader is: the Panel page, or the command line's options
    assert "--expected-fraction DRUG=FRACTION for a drug's own" in cli and "page" not in cli
    assert "one per drug, on the Drug panel page" in app and "--" not in app and "labelled" not in app
    assert "--expected-fraction" in panel.resistant_to_all_statement(data)[0]
    statement = panel.resistant_to_all_statement(data, app=True)[0]
    assert "Drug panel page" in statement and "--" not in statement and "labelled" not in statement
    # a ranking says "best drug first" only once every drug is calibrated
    assert panel.ranking_title(data, "Whole sample") == "Whole sample: fraction called resistant per drug, uncalibrated"
    assert "does not rank the drugs" in panel.ranking_caveat(data, app=True)
    panel.calibrate_panel(data, 0.3, {"DRUGC": 0.2})
    assert panel.ranking_title(data, "sample P1") == "sample P1: best drug first"
    assert panel.ranking_caveat(data) is None


def test_cells_without_a_cluster_have_one_name_everywhere(library):
    from scatd_core import embed, metrics

    name = "no cluster (QC-filtered or not scored)"
    data = make_dataset(120, seed=23)
    data.obs["scatd_qc_pass"] = np.arange(120) >= 10
    predict(data, load_bundle(library / "DRUGA"), mask="scatd_qc_pass")
    embed.embed(data, n_epochs=30)
    panel.predict_panel(data, _bundles(library), mask="scatd_qc_pass")
    assert (data.obs["scatd_cluster"].iloc[:10] == name).all()  # in the h5ad, and the tables' cluster column
    assert name in set(export.predictions_table(data)["leiden_cluster"])
    assert name in set(panel.group_summary(data, "scatd_cluster")["group"])  # the Panel page's heatmap, dot plot
    assert name in set(metrics.group_table(data, "scatd_cluster")["group"])  # the Cells page
    html = export.panel_html_report(data)
    assert name in html and "not embedded" not in html
    # an annotated h5ad of an earlier version: what it called these cells shows by today's name
    data.obs["scatd_cluster"] = data.obs["scatd_cluster"].cat.rename_categories({name: "not embedded"})
    assert name in set(panel.group_summary(data, "scatd_cluster")["group"])
    assert name in set(metrics.group_table(data, "scatd_cluster")["group"])
    assert "not embedded" not in export.panel_html_report(data)


def test_train_panel_names_only_the_targets_own_columns_when_one_is_missing():
    """The tool's own scatd_* columns are never offered as the target's label columns."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from scatd_core.errors import InputError
    from scatd_core.train._panel import _target_label_columns

    target = ad.AnnData(np.ones((3, 2), dtype=np.float32),
                        obs=pd.DataFrame({"response": ["R", "S", "R"], "scatd_all_zero": [False] * 3},
                                         index=["a", "b", "c"]))
    table = pd.DataFrame({"DRUGA": ["resistant", "sensitive"]}, index=["L1", "L2"])
    with pytest.raises(InputError, match="no column 'nosuch' for DRUGA") as info:
        _target_label_columns({"DRUGA": "nosuch"}, table, ["DRUGA"], target)
    assert "response" in info.value.hint and "scatd_all_zero" not in info.value.hint


def test_panel_summary_names_the_leiden_clusters_as_every_other_table(library):
    """panel_summary.csv called the Leiden grouping by its h5ad key scatd_cluster, while
    predictions.csv, panel.csv and metrics.csv say leiden_cluster."""
    from scatd_core import _keys

    data = make_dataset(60, seed=11)
    panel.predict_panel(data, _bundles(library))
    data.obs[_keys.CLUSTER] = pd.Categorical(np.arange(60) % 3).astype(str)
    summary = export.panel_summary_table(data)
    assert set(summary["grouping"]) == {"all", export.CLUSTER_COLUMN}
    assert _keys.CLUSTER not in set(summary["grouping"])


def test_panel_summary_lists_the_drugs_in_panel_order_in_every_group(library):
    """QA: panel_summary.csv's `all` rows were in the ranking's order (lowest fraction resistant
    first), the per-sample rows in panel order: every group now lists the drugs in panel order."""
    data = make_dataset(200, seed=5)
    members = panel.predict_panel(data, _bundles(library))
    set_threshold(data, 0.0, "user", key_added=members[0].key)  # DRUGA: every cell resistant, ranked last
    panel.refresh(data)
    assert panel.drug_ranking(data)["drug"].iloc[-1] == "DRUGA"
    summary = export.panel_summary_table(data, ["sample"])
    order = [m.drug for m in members]
    for _, rows in summary.groupby(["grouping", "group"], sort=False):
        assert list(rows["drug"]) == order
    whole = summary[summary["grouping"] == "all"].set_index("drug")
    ranking = panel.drug_ranking(data).set_index("drug")
    pd.testing.assert_frame_equal(whole[ranking.columns.drop("rank")], ranking.drop(columns="rank").loc[order])
    assert list(summary["grouping"].unique()) == ["all", "sample"]  # only the columns asked for


def test_the_uncalibrated_ranking_has_no_rank_and_the_h5ad_says_whose_calls_are_whose(library, tmp_path):
    """QA: panel_report.html's uncalibrated table carried a rank column while its caption said the
    order does not rank the drugs; the Panel page's h5ad held the single-model calls (obs
    scatd_label, at the user's threshold) beside the panel's calls for the same drug at another
    threshold, with nothing saying which is which."""
    data = make_dataset(120, seed=11)
    bundles = _bundles(library)
    panel.predict_panel(data, bundles)
    html = export.panel_html_report(data)
    ranking = html.split("uncalibrated</h2>")[1].split("</table>")[0]
    assert "does not rank the drugs" in ranking and "<th>rank</th>" not in ranking
    panel.calibrate_panel(data, 0.3)
    # QA: every drug at one expected fraction is titled "no ranking" but still carried ranks 1, 2, 3
    html = export.panel_html_report(data)
    tie = html.split("so no ranking</h2>")[1].split("</table>")[0]
    assert "<th>rank</th>" not in tie and "<th>drug</th>" in tie
    lines = []
    say_panel_comparison(data, lines.append)
    assert lines[0] == "Whole sample: every drug at the same expected fraction, so no ranking:"
    assert all(line.startswith("  - DRUG") for line in lines[1:4]), lines
    from scatd_core.predict import calibrate

    calibrate(data, label_column="response", method="youden", key_added=panel.members(data)[0].key)
    panel.refresh(data)  # one drug calibrated on labels: the whole sample's order ranks the drugs, with ranks
    assert "best drug first" in panel.ranking_title(data, "Whole sample")
    assert "<th>rank</th>" in export.panel_html_report(data)
    lines = []
    say_panel_comparison(data, lines.append)
    assert lines[1].startswith("  1. DRUG")
    predict(data, bundles[0], threshold=0.8)  # the single-model prediction of DRUGA, at another threshold
    path = tmp_path / "panel.h5ad"
    path.write_bytes(export.h5ad_bytes(data))
    back = ad.read_h5ad(path)
    columns = back.uns["scatd_columns"]
    assert columns["prediction"]["threshold"] == pytest.approx(0.8) and columns["prediction"]["drug"] == "DRUGA"
    assert "scatd_label" in list(columns["prediction"]["columns"])
    druga = columns["panel"]["drugs"]["DRUGA"]
    key = panel.members(data)[0].key
    assert f"{key}_label" in list(druga["columns"]) and "scatd_label" not in list(druga["columns"])
    assert druga["threshold"] == pytest.approx(data.uns[key]["threshold"]["value"]) and druga["calibrated"]
    assert "can differ for the same drug" in columns["note"]
    for drug_key in (m.key for m in panel.members(data)):
        labels = back.obs[f"{drug_key}_label"]
        assert len(back.uns[f"{drug_key}_label_colors"]) == len(labels.cat.categories)
        assert set(labels.cat.categories) == set(labels.astype(str))


def _few_genes(n_cells: int = 60, n_genes: int = 300, seed: int = 11):
    """Cells holding only the first ``n_genes`` of the models' genes (QA's scad_fewgenes.h5ad in small):
    every model scores them, warning that few of its genes are in the data."""
    return make_dataset(n_cells, seed=seed)[:, :n_genes].copy()


def test_each_models_warnings_are_said_next_to_its_drug_in_the_tables_and_the_report(library):
    """QA: models covering 3/141 genes called 80-100% resistant under a green "9 of 9 models scored",
    their "Only 2% of the model's genes are in the data" warnings shown nowhere but the CLI's terminal."""
    data = _few_genes()
    panel.predict_panel(data, _bundles(library, DRUGS[:2]))
    warned = panel.model_warnings(data)
    coverage = [(d, w) for d, w in warned if "of the model's genes are in the data" in w]
    assert [d for d, _ in coverage] == ["DRUGA", "DRUGB"] and coverage[0][1].startswith("Only 15.8%")
    assert "2 of the 2 scored models warn about their predictions (DRUGA, DRUGB)" in panel.warnings_summary(data)
    table = export.panel_models_table(data)
    assert all("Only 15.8% of the model's genes are in the data" in w for w in table["warnings"])
    page = export.panel_html_report(data, app=True)  # the app's download (the CLI's --html: the test below)
    assert "<li><b>DRUGA</b>: Only 15.8% of the model&#x27;s genes are in the data" in page
    assert "2 of the 2 scored models warn" in page
    # a model with all its genes: nothing to warn of, no warnings block
    full = make_dataset(60, seed=11)
    panel.predict_panel(full, _bundles(library, DRUGS[:2]))
    assert panel.model_warnings(full) == [] and panel.warnings_summary(full) is None
    assert "warn about their predictions" not in export.panel_html_report(full)


def test_cli_panel_html_report_has_each_models_warnings(lib_env, tmp_path, capsys):
    _few_genes().write_h5ad(tmp_path / "few.h5ad")
    rep = tmp_path / "few.html"
    assert main(["predict", "--input", str(tmp_path / "few.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
                 "--output", str(tmp_path / "few.csv"), "--html", str(rep)]) == 0
    assert "DRUGA: warning: Only 15.8% of the model's genes" in capsys.readouterr().err
    assert "<li><b>DRUGB</b>: Only 15.8% of the model&#x27;s genes are in the data" in rep.read_text()


def test_a_saved_panel_is_replaced_only_when_asked_and_the_refusal_names_its_drugs(lib_env):
    """QA: the app replaced a saved 9-drug panel by 3 demo drugs unasked; the refusal says which
    models the saved panel holds, and how to replace it where the reader is."""
    panel.save_panel("real10", ["DRUGA", "DRUGB", "DRUGC"], "carol")
    with pytest.raises(InputError) as refused:
        panel.save_panel("real10", ["DRUGA", "SUBSET"], "carol")
    assert "You already have a panel named 'real10' (3 models: DRUGA, DRUGB, DRUGC); it was not replaced" \
        in refused.value.message
    assert "--replace" in refused.value.hint and "Replace it" in refused.value.app_hint
    assert panel.list_panels("carol")["real10"]["models"] == ["DRUGA", "DRUGB", "DRUGC"]
    record = panel.save_panel("real10", ["DRUGA", "SUBSET"], "carol", replace=True)
    assert panel.saved_panel_drugs(record) == "2 models: DRUGA, DRUGD"  # the drug, not the folder
    # a panel saved before drugs were recorded: its models' names, else their folders
    assert panel.saved_panel_drugs({"models": ["A", "B"], "names": {"A": "Drug A model"}}) == \
        "2 models: Drug A model, B"


def test_panel_names_are_one_name_whatever_their_case(lib_env, capsys):
    """QA: "keepme" and "Keepme" saved as two panels. A name is taken whatever its case (the user's
    spelling kept); load and delete find it so; `scatd panel remove` says what it removed."""
    panel.save_panel("keepme", ["DRUGA", "DRUGB", "DRUGC"], "dora")
    with pytest.raises(InputError, match=r"already have a panel named 'Keepme' \(as 'keepme'.*3 models: DRUGA"):
        panel.save_panel("Keepme", ["DRUGA", "DRUGB"], "dora")
    with pytest.raises(InputError, match="nothing was trained or replaced"):
        panel.check_panel_free(" KEEPME ", "dora")
    assert panel.check_panel_free("KEEPME", "dora", replace=True) == "KEEPME"
    assert [b.drug for b in panel.load_panel("KEEPME", "dora")[0]] == list(DRUGS)
    panel.save_panel("Keepme", ["DRUGA", "DRUGB"], "dora", replace=True)
    assert list(panel.list_panels("dora")) == ["Keepme"]  # replaced, not a second panel
    assert panel.delete_panel("keepME", "dora")[0] == "Keepme" and panel.list_panels("dora") == {}
    assert main(["panel", "save", "Mine", "--model", "DRUGA", "--model", "DRUGB"]) == 0
    assert main(["panel", "save", "mine", "--model", "DRUGC", "--model", "DRUGB"]) == 2
    capsys.readouterr()
    assert main(["panel", "remove", "MINE"]) == 0
    assert "Removed your panel 'Mine' (2 models: DRUGA, DRUGB); the models stay in the library." \
        in capsys.readouterr().out


def test_the_run_signature_does_not_depend_on_the_order_of_the_models(library):
    forward, backward = _bundles(library), _bundles(library)[::-1]
    assert panel.run_signature(forward) == panel.run_signature(backward)
    assert panel.run_signature(forward) != panel.run_signature(forward[:2])


def test_the_panel_says_it_does_not_run_on_ray_where_a_prediction_would(monkeypatch):
    from scatd_core.scaleout import _run

    monkeypatch.setenv("SCATD_SCALEOUT_MIN_CELLS", "100")
    monkeypatch.delenv("SCATD_RAY_ADDRESS", raising=False)
    monkeypatch.setattr(_run, "ray_available", lambda: True)
    assert panel.scaleout_note(100) is None
    note = panel.scaleout_note(150)
    assert "runs in the server process, one model after another, not on Ray" in note and "150 cells" in note
    monkeypatch.setattr(_run, "ray_available", lambda: False)  # Ray not installed: one process anyway
    assert panel.scaleout_note(150) is None


def test_the_panel_report_draws_each_drug_relative_to_the_threshold_its_calls_use(library, monkeypatch):
    """The heatmap, dot plot and ranking of the HTML report get each drug's current threshold (a
    threshold of 0.72 set on DRUGA), so that their colours say the calls (blue: sensitive, red: resistant)."""
    from scatd_core import pl

    data = make_dataset(150, seed=9)
    members = panel.predict_panel(data, _bundles(library))
    set_threshold(data, 0.72, "user", key_added=members[0].key)
    panel.refresh(data)
    expected = {"DRUGA": 0.72, **{m.drug: data.uns[m.key]["threshold"]["value"] for m in members[1:]}}
    assert panel.thresholds(data) == pytest.approx(expected) and list(panel.thresholds(data)) == list(DRUGS)
    seen = {}
    for name in ("panel_heatmap", "panel_dotplot", "drug_ranking_figure"):
        real = getattr(pl, name)
        monkeypatch.setattr(pl, name, lambda *a, _real=real, _name=name, **k: seen.setdefault(_name, k["thresholds"])
                            and _real(*a, **k))
    html = export.panel_html_report(data, group_columns=["sample"])
    assert seen == {name: pytest.approx(expected) for name in ("panel_heatmap", "panel_dotplot", "drug_ranking_figure")}
    assert "each drug's threshold" in html and "blue sensitive, red resistant" in html


def test_the_run_statement_counts_alignments_and_models_in_words():
    """QA: the Panel page said "(1 alignment(s) for 3 models)"."""
    adata = ad.AnnData(np.zeros((2000, 1), dtype=np.float32))
    member = {"key": "scatd_D", "drug": "D", "model": "m", "path": "/x/m", "backbone": "b", "status": "scored"}
    adata.uns[_keys.PANEL] = {"seconds": 4.25, "n_input_groups": 1, "members": {
        f"{i}": {**member, "key": f"scatd_D{i}", "drug": f"D{i}", "status": "skipped" if i == 2 else "scored"}
        for i in range(3)}}
    assert panel.run_statement(adata) == "2 of 3 models scored 2,000 cells in 4.2 s (1 alignment for 3 models)."
    adata.uns[_keys.PANEL]["n_input_groups"] = 2
    assert "(2 alignments for 3 models)" in panel.run_statement(adata)


def test_a_drug_refused_for_its_genes_is_named_with_the_model_genes_the_data_lack(library):
    """QA: a 3-drug panel with a drug refused for low gene coverage wrote only the others' columns, the
    report said "(2 drugs)", and the refusal listed the data's genes the model does not know
    ("A1BG ...") instead of the model's genes missing from the data."""
    data = make_dataset(80, seed=12)[:, 1100:].copy()  # 8% of SUBSET's (DRUGD's) genes, 42% of the others'
    subset_genes = list(load_bundle(library / "SUBSET").genes)
    members = panel.predict_panel(data, _bundles(library, ("DRUGA", "SUBSET", "DRUGB")))
    assert [m.status for m in members] == ["scored", "skipped", "scored"]
    refusal = members[1].problem
    assert f"The model's genes missing from the data (1,100) include {', '.join(subset_genes[:5])}." in refusal
    assert "genes the model does not know" not in refusal
    table = panel.panel_table(data)
    assert [c for c in table.columns if c.endswith("_prob_resistant")] == \
        ["DRUGA_prob_resistant", "DRUGD_prob_resistant", "DRUGB_prob_resistant"]  # every drug, in panel order
    assert (table["DRUGD_not_scored_reason"] == "drug not scored").all()
    html = export.panel_html_report(data, data_name="x" * 120)
    assert "scATD drug panel (3 drugs requested, 2 scored) on " in html
    assert "<b>3 drugs requested, 2 scored; not scored: DRUGD.</b><ul><li><b>DRUGD</b>: Too few" in html
    assert "refused (not scored)" in html
    assert "h1{margin-bottom:0;overflow-wrap:anywhere}" in html  # a long file name wraps at 390 px


def test_when_every_drug_is_refused_the_error_gives_one_line_per_drug(library):
    """QA: every reason joined by "; " into one very long line."""
    with pytest.raises(InputError) as caught:
        panel.predict_panel(make_dataset(40, seed=12)[:, :100].copy(), _bundles(library, ("DRUGA", "SUBSET")))
    lines = caught.value.message.split("\n")
    assert lines[0] == "No model of the panel could score these data (2 drugs requested, none scored):"
    assert [line.split(":")[0] for line in lines[1:]] == ["- DRUGA", "- DRUGD"]
    assert all("Too few of the model's genes" in line for line in lines[1:])


def test_cli_panel_threshold_is_per_drug_and_a_bare_value_is_refused(lib_env, tmp_path, capsys):
    """QA: --threshold 0.5 applied one raw value to every drug (each model has its own scale), and the
    resistant-to-every-drug note still blamed "a model's default threshold"."""
    path = _h5ad(tmp_path)
    out = tmp_path / "p.csv"
    base = ["predict", "--input", str(path), "--model", "DRUGA", "--model", "DRUGB", "--output", str(out)]
    assert main(base + ["--threshold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--threshold 0.5 would apply one raw value to all 2 drugs of the panel" in err
    assert "--threshold DRUGA=0.5 --threshold DRUGB=0.5" in err and not out.exists()
    assert main(base + ["--threshold", "NOPE=0.5"]) == 2 and "names NOPE, not a drug" in capsys.readouterr().err
    assert main(base + ["--threshold", "druga=0.9", "--h5ad", str(tmp_path / "p.h5ad")]) == 0
    err = capsys.readouterr().err
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.uns["scatd_DRUGA"]["threshold"]["value"] == pytest.approx(0.9)
    assert back.uns["scatd_DRUGB"]["threshold"]["value"] == pytest.approx(
        back.uns["scatd_DRUGB"]["model"]["default_threshold"])
    assert "DRUGA: Threshold 0.9: set with --threshold" in err
    assert "a model's default threshold can call" not in err
    assert "a threshold not calibrated to these cells (a model's default, or one set by hand)" in err
    # the panel's form given to one model: told to give the value alone
    assert main(["predict", "--input", str(path), "--model", "DRUGA", "--output", str(tmp_path / "one.csv"),
                 "--threshold", "DRUGA=0.4"]) == 2
    assert "Give the threshold alone: --threshold 0.4." in capsys.readouterr().err


def test_a_drugs_auroc_against_its_labels_is_the_single_predictions(lib_env, tmp_path, capsys):
    """QA: the panel gave no AUROC for the drug whose response a label column records; and its report
    said "0.7653, calibrated yes" without how the threshold was set."""
    from scatd_core.metrics import evaluate_column, interval_ends

    data = make_dataset(150, seed=23)
    data.write_h5ad(tmp_path / "cells.h5ad")
    alone = data.copy()
    predict(alone, load_bundle(lib_env / "DRUGB"))
    ev = evaluate_column(alone, "response")[0]
    low, high = interval_ends(*ev.auroc_ci)
    rep = tmp_path / "p.html"
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "DRUGB",
                 "--output", str(tmp_path / "p.csv"), "--html", str(rep), "--h5ad", str(tmp_path / "p.h5ad"),
                 "--label-column", "DRUGB=response", "--calibrate-on-labels", "youden"]) == 0
    err = capsys.readouterr().err
    said = (f"DRUGB against 'response' ({ev.n_evaluated:,} cells): AUROC {ev.auroc:.3f} (95% interval {low}-{high}, "
            "Hanley-McNeil)")
    assert said in err
    html = rep.read_text()
    assert said in html.replace("&#x27;", "'")
    assert "maximises Youden" in html.replace("&#x27;", "'") and "threshold set by" in html
    stored = ad.read_h5ad(tmp_path / "p.h5ad").uns["scatd_panel"]["label_evaluation"]
    assert stored["drug"] == "DRUGB" and float(stored["auroc"]) == pytest.approx(ev.auroc)


def test_a_drug_not_loaded_has_its_summary_rows_its_sd_column_and_no_resistant_to_all(library):
    """QA r1: a saved panel's drug that could not be loaded (removed) had no row in panel_summary.csv, no
    `_prob_resistant_sd` where the scored drugs had one, and panel.csv's `resistant_to_all` was True for
    cells resistant to the 2 scored drugs though the third never scored."""
    data = make_dataset(40, seed=3)
    panel.predict_panel(data, _bundles(library, DRUGS[:2]), mode="sample", n_samples=4,
                        not_loaded=[("DRUGC", "model DRUGC not in the model library any more (removed)")])
    table = panel.panel_table(data)
    assert "resistant_to_all" not in table.columns
    np.testing.assert_array_equal(table["resistant_to_all_scored"].to_numpy(),
                                  data.obs[_keys.PANEL_RESISTANT_TO_ALL].to_numpy())
    assert "DRUGA_prob_resistant_sd" in table and table["DRUGC_prob_resistant_sd"].isna().all()
    summary = export.panel_summary_table(data, ["sample"])
    for _, rows in summary.groupby(["grouping", "group"], sort=False):
        assert list(rows["drug"]) == ["DRUGA", "DRUGB", "DRUGC"]
    lost = summary[summary["drug"] == "DRUGC"]
    assert (lost["n_called"] == 0).all() and lost["fraction_resistant"].isna().all()
    assert lost["not_scored_reason"].str.startswith("drug not scored: model DRUGC not in the model library").all()
    assert (summary.loc[summary["drug"] != "DRUGC", "not_scored_reason"] == "").all()
    assert int(lost.loc[lost["grouping"] == "all", "n_cells"].iloc[0]) == 40
    assert "resistant to all 2 scored drugs" in export.panel_html_report(data)
    # every drug scored: the column keeps its name
    full = make_dataset(40, seed=3)
    panel.predict_panel(full, _bundles(library, DRUGS[:2]))
    assert "resistant_to_all" in panel.panel_table(full).columns


def _with_bulk_card(library, tmp_path, name="DRUGA"):
    """A copy of a library model whose manifest records a bulk CV AUROC and its card's baselines."""
    import json
    import shutil

    folder = tmp_path / "carded" / name
    shutil.copytree(library / name, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.setdefault("metrics", {})["cv"] = {"auroc": 0.81}
    manifest["card"] = {"evaluations": [{"name": "bulk_cv", "scores": [
        {"model": "this model", "auroc": 0.81, "auroc_ci": [0.72, 0.9]},
        {"model": "ridge on genes", "auroc": 0.74}, {"model": "majority class", "auroc": 0.5}], "verdicts": []}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(folder)


def test_a_refused_drugs_reason_is_said_once_per_drug_not_on_every_cell_row(library, tmp_path):
    """QA: panel.csv repeated a refused drug's reason ("drug not scored: Too few of the model's genes ...")
    on every cell row: a huge, repetitive file. Each cell row now only flags the drug not scored; the
    reason is in the per-drug metrics (one row per drug) and the run's messages."""
    data = make_dataset(80, seed=12)[:, 1100:].copy()  # too few of SUBSET's (DRUGD's) genes: refused
    panel.predict_panel(data, _bundles(library, ("DRUGA", "SUBSET", "DRUGB")),
                        not_loaded=[("DRUGC", "model DRUGC not in the model library any more (removed)")])
    csv = export.to_csv_bytes(panel.panel_table(data)).decode()
    assert "Too few of the model's genes" not in csv and "not in the model library" not in csv
    back = pd.read_csv(io.StringIO(csv))
    for drug in ("DRUGD", "DRUGC"):
        assert (back[f"{drug}_not_scored_reason"] == panel.DRUG_NOT_SCORED).all()
        assert back[f"{drug}_prob_resistant"].isna().all() and not back[f"{drug}_scored"].any()
    drugs = export.panel_drug_metrics(data)
    assert list(drugs["drug"]) == ["DRUGA", "DRUGD", "DRUGB", "DRUGC"]
    reasons = dict(zip(drugs["drug"], drugs["not_scored_reason"]))
    assert reasons["DRUGD"].startswith("Too few of the model's genes") and reasons["DRUGA"] == ""
    assert reasons["DRUGC"] == "model DRUGC not in the model library any more (removed)"


def test_the_per_drug_metrics_have_one_row_per_drug_with_its_figures(library, tmp_path):
    """QA: the per-drug figures a panel knows (the AUROC against a drug's labels, the model's bulk CV AUROC
    and its best baseline, the cells called resistant and sensitive, why a drug was refused) were in no
    per-drug CSV."""
    data = make_dataset(120, seed=5)
    carded = _with_bulk_card(library, tmp_path)
    panel.predict_panel(data, [carded, load_bundle(library / "DRUGB"), load_bundle(library / "SUBSET")])
    panel.calibrate_panel(data, 0.3)
    data.obs["response"] = np.where(np.arange(120) % 2 == 0, "resistant", "sensitive")
    found = panel.set_label_drug(data, "DRUGB", "response")
    drugs = export.panel_drug_metrics(data)
    assert list(drugs.columns) == list(export.PANEL_DRUG_COLUMNS)
    assert list(drugs["drug"]) == ["DRUGA", "DRUGB", "DRUGD"] and (drugs["status"] == "scored").all()
    row = drugs.set_index("drug")
    assert row.loc["DRUGA", "bulk_cv_auroc"] == pytest.approx(0.81)
    assert (row.loc["DRUGA", "bulk_cv_auroc_ci_low"], row.loc["DRUGA", "bulk_cv_auroc_ci_high"]) == (0.72, 0.9)
    assert row.loc["DRUGA", "bulk_best_baseline"] == "ridge on genes"
    assert row.loc["DRUGA", "bulk_best_baseline_auroc"] == pytest.approx(0.74)
    assert pd.isna(row.loc["DRUGB", "bulk_cv_auroc"]) and row.loc["DRUGB", "bulk_best_baseline"] == ""
    for drug in ("DRUGA", "DRUGB", "DRUGD"):
        labels = data.obs[f"scatd_{drug}_label"].astype(str)
        assert row.loc[drug, "n_resistant"] == (labels == "resistant").sum()
        assert row.loc[drug, "n_sensitive"] == (labels == "sensitive").sum()
        assert row.loc[drug, "n_scored"] == 120 and bool(row.loc[drug, "calibrated"])
    assert row.loc["DRUGB", "label_column"] == "response"
    assert row.loc["DRUGB", "label_auroc"] == pytest.approx(found["auroc"])
    assert pd.isna(row.loc["DRUGA", "label_auroc"]) and row.loc["DRUGA", "label_column"] == ""


def test_cli_panel_writes_the_per_drug_metrics_and_says_each_refusal_once(lib_env, tmp_path, capsys):
    data = make_dataset(80, seed=12)[:, 1100:].copy()
    data.write_h5ad(tmp_path / "cells.h5ad")
    out, drugs = tmp_path / "panel.csv", tmp_path / "drugs.csv"
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA", "--model", "SUBSET",
                 "--model", "DRUGB", "--output", str(out), "--drug-metrics", str(drugs)]) == 0
    err = capsys.readouterr().err
    assert f"Wrote {drugs}" in err
    table = pd.read_csv(drugs, keep_default_na=False)
    assert list(table["drug"]) == ["DRUGA", "DRUGD", "DRUGB"]
    reason = table.set_index("drug").loc["DRUGD", "not_scored_reason"]
    assert reason.startswith("Too few of the model's genes") and reason in err  # in the messages too
    assert "Too few" not in out.read_text()
    assert (pd.read_csv(out)["DRUGD_not_scored_reason"] == "drug not scored").all()
    assert main(["predict", "--input", str(tmp_path / "cells.h5ad"), "--model", "DRUGA",
                 "--output", str(tmp_path / "one.csv"), "--drug-metrics", str(tmp_path / "d2.csv")]) == 2
    assert "--drug-metrics is for a panel" in capsys.readouterr().err


def _manifest_reads(monkeypatch):
    """Counts the manifests panel_drug_metrics reads from disk, by folder (none kept before: a fresh cache)."""
    from collections import Counter

    from scatd_core._cache import StampedLRU

    reads, real = Counter(), export._manifest_of
    monkeypatch.setattr(export, "_MANIFEST_FIGURES", StampedLRU(256), raising=False)

    def counted_read(folder):
        reads[str(folder)] += 1
        return real(folder)

    monkeypatch.setattr(export, "_manifest_of", counted_read)
    return reads


def _rewrite_auroc(folder, auroc, mtime_ns):
    """Write ``auroc`` as the model's bulk CV AUROC into its manifest, and give the file ``mtime_ns``
    (its own time, so that the change is seen whatever the file system's clock resolution)."""
    import json
    import os

    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"]["cv"] = {"auroc": auroc}
    manifest["card"]["evaluations"][0]["scores"][0]["auroc"] = auroc
    path.write_text(json.dumps(manifest))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_per_drug_metrics_read_the_models_manifests_again_only_when_they_changed(library, tmp_path, monkeypatch):
    """The Panel page builds the per-drug metrics (its panel_drugs.csv download) on every rerun, i.e. every
    click, and each time read every drug's manifest from disk. They are now kept by the file's identity
    (path, mtime_ns, size): a rerun with the files unchanged reads none, a touched or changed one is read
    again (and its new figures are given)."""
    import os

    data = make_dataset(120, seed=5)
    carded = _with_bulk_card(library, tmp_path)
    panel.predict_panel(data, [carded, load_bundle(library / "DRUGB")])
    reads = _manifest_reads(monkeypatch)
    first = export.panel_drug_metrics(data, app=True)
    assert sum(reads.values()) == 2 and first.set_index("drug").loc["DRUGA", "bulk_cv_auroc"] == pytest.approx(0.81)
    reads.clear()
    again = export.panel_drug_metrics(data, app=True)
    assert not reads  # nothing read: the files did not change
    pd.testing.assert_frame_equal(again, first)
    manifest = Path(carded.path) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    os.utime(manifest, ns=(stamp + 10**9, stamp + 10**9))  # touched: read again
    export.panel_drug_metrics(data, app=True)
    assert list(reads.values()) == [1] and Path(next(iter(reads))).name == "DRUGA"
    reads.clear()
    _rewrite_auroc(carded.path, 0.77, stamp + 2 * 10**9)
    changed = export.panel_drug_metrics(data, app=True).set_index("drug")
    assert sum(reads.values()) == 1 and changed.loc["DRUGA", "bulk_cv_auroc"] == pytest.approx(0.77)
    assert changed.loc["DRUGA", "bulk_cv_auroc_ci_low"] == 0.72  # the rest of the file as it is


def test_the_kept_per_drug_manifest_figures_are_per_folder_and_bounded(library, tmp_path, monkeypatch):
    """Two users' (or libraries') models of the same folder name with the very same file times and sizes
    never share their kept figures: the key is the file's path; and no more than the bound is kept."""
    import os

    one = _with_bulk_card(library, tmp_path / "alice")
    other = _with_bulk_card(library, tmp_path / "bob")
    stamp = 1_700_000_000 * 10**9
    _rewrite_auroc(one.path, 0.61, stamp)
    _rewrite_auroc(other.path, 0.62, stamp)  # same size, same time: only the path tells them apart
    assert os.stat(Path(one.path) / "manifest.json").st_size == os.stat(Path(other.path) / "manifest.json").st_size
    figures = {}
    for who, bundle in (("alice", one), ("bob", other)):
        data = make_dataset(60, seed=7)
        panel.predict_panel(data, [bundle])
        figures[who] = export.panel_drug_metrics(data).set_index("drug").loc["DRUGA", "bulk_cv_auroc"]
    assert figures == {"alice": pytest.approx(0.61), "bob": pytest.approx(0.62)}
    reads = _manifest_reads(monkeypatch)  # a fresh cache, of one entry at most
    monkeypatch.setattr(export._MANIFEST_FIGURES, "size", 1)
    for bundle in (one, other, one):
        data = make_dataset(60, seed=7)
        panel.predict_panel(data, [bundle])
        export.panel_drug_metrics(data)
        assert list(export._MANIFEST_FIGURES) == [str(Path(bundle.path).absolute() / "manifest.json")]
    assert sum(reads.values()) == 3  # alice's dropped for bob's: read again


def test_on_the_drug_panel_page_the_way_to_calibrate_is_its_controls_not_the_page_name(library):
    """QA: on the Drug panel page the notes said "Calibrate every drug (... on the Drug panel page)", to a reader
    already there. On the page they point to its controls by their labels; the HTML report (read elsewhere)
    still names the page, the command line its options."""
    data = make_dataset(120, seed=22)
    panel.predict_panel(data, _bundles(library))
    said = [*panel.comparison_notes(data, app=True, on_page=True), panel.ranking_caveat(data, app=True, on_page=True),
            panel.resistant_to_all_statement(data, app=True, on_page=True)[0]]
    with pytest.raises(InputError) as raised:
        panel.multi_resistant_markers(data)
    said.append(raised.value.app_hint)
    for text in said:
        assert "Drug panel page" not in text and "--" not in text, text
        assert ("'Expected resistant fraction (every drug)' above and press 'Calibrate every drug to it', or give "
                "each drug its own under 'Or one expected resistant fraction per drug'") in text, text
    # elsewhere (the HTML report downloaded from the app) the page is named
    assert "one per drug, on the Drug panel page" in " ".join(panel.comparison_notes(data, app=True))
    assert "on the Drug panel page" in panel.resistant_to_all_statement(data, app=True)[0]
