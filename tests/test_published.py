"""Getting the published scATD models, against a local stand-in for figshare's public API.

The real service cannot be reached from the test machines; this server answers the same two
requests (the article's file list, and each file's download) with files made here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import original_scatd as orig
from conftest import SMALL, small_gene_names
from scatd_core import published
from scatd_core.bundle import FIGSHARE_ARTICLE, NameTaken, list_library, load_bundle
from scatd_core.errors import InputError

DAL = "checkpoint_fold5_final_epoch_150.pth"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def figshare(tmp_path, monkeypatch):
    """A figshare-like API on localhost holding a small DAL checkpoint and the gene list."""
    enc, z, _ = SMALL["dist_vae"]
    files = {}
    torch.save(orig.dal_checkpoint("dist_vae", enc, z, seed=5), tmp_path / DAL)
    files[DAL] = (tmp_path / DAL).read_bytes()
    files[published.GENE_LIST] = ("gene_name\tindex\n" + "".join(
        f"{g}\t{i}\n" for i, g in enumerate(small_gene_names(enc[0])))).encode()
    files["README.txt"] = b"not a checkpoint"
    files["broken.pth"] = files[DAL]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    listing = [{"id": i, "name": name, "size": len(data), "download_url": f"{base}/files/{i}",
                "computed_md5": hashlib.md5(data).hexdigest() if name != "broken.pth" else "0" * 32}
               for i, (name, data) in enumerate(files.items())]
    by_id = {str(i): data for i, data in enumerate(files.values())}
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            if self.path.startswith(f"/v2/articles/{FIGSHARE_ARTICLE}/files"):
                body = json.dumps(listing).encode()
            elif self.path.startswith("/files/") and self.path.split("/")[-1] in by_id:
                body = by_id[self.path.split("/")[-1]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SCATD_FIGSHARE_API", f"{base}/v2")
    monkeypatch.setenv("SCATD_GENE_LIST_URL", f"{base}/files/404")  # the article holds the list itself
    yield requests
    server.shutdown()


def test_list_download_check_and_import(figshare):
    files = published.list_files()
    assert {f.name for f in files} >= {DAL, published.GENE_LIST, "README.txt"}
    assert next(f for f in files if f.name == DAL).recognised.drug == "DOCETAXEL"
    progress = []
    [bundle] = published.install([DAL], files=files, user="alice", progress=lambda f, m: progress.append(f))
    assert bundle.drug == "DOCETAXEL" and bundle.backbone == "dist_vae" and bundle.kind == "classifier"
    assert bundle.genes == small_gene_names(SMALL["dist_vae"][0][0])
    prov = bundle.manifest["provenance"]
    assert prov["imported_by"] == "alice" and prov["source_url"].endswith("/files/0") and prov["source_file"] == DAL
    assert progress[-1] == 1.0 and [b.path for b in (e.bundle for e in list_library())] == [bundle.path]
    with pytest.raises(Exception, match="already exists"):  # installed once; never silently replaced
        published.install([DAL], files=files)


def test_a_corrupted_download_is_refused(figshare):
    files = published.list_files()
    broken = next(f for f in files if f.name == "broken.pth")
    with pytest.raises(InputError, match="does not match figshare's checksum"):
        published.download(broken, Path(__import__("tempfile").mkdtemp()))
    with pytest.raises(InputError, match="not a checkpoint scATD Studio recognises"):
        published.install(["README.txt"], files=files)


def test_offline_says_what_to_download_by_hand(monkeypatch):
    monkeypatch.setenv("SCATD_FIGSHARE_API", f"http://127.0.0.1:{_free_port()}/v2")  # nothing listens there
    with pytest.raises(InputError, match="figshare could not be reached") as err:
        published.list_files()
    assert DAL in err.value.hint and published.GENE_LIST in err.value.hint and "scatd import-checkpoint" in err.value.hint


def test_offline_instructions_give_each_file_its_own_import_command(tmp_path, monkeypatch, capsys):
    """QA: the offline instructions imported all four files with `--backbone dist_vae --drug DRUG`: three are
    pretrained backbones (dist_vae, vae_sf, vae_gf) and the drug model's drug, DOCETAXEL, was not named. Each
    command given is run here on a stand-in of that file and imports it as the published install would."""
    import re
    import shlex

    from scatd_core.cli import main

    hint = published.manual_instructions()
    commands = re.findall(r"`(scatd import-checkpoint [^`]+)`", hint)
    assert len(commands) == 4 and "--drug DRUG" not in hint
    monkeypatch.chdir(tmp_path)
    (tmp_path / published.GENE_LIST).write_text("gene_name\tindex\n" + "".join(
        f"{g}\t{i}\n" for i, g in enumerate(small_gene_names(SMALL["dist_vae"][0][0]))))
    for command in commands:
        args = shlex.split(command)[1:]
        what = published.KNOWN[args[1]]
        enc, z, dec = SMALL[what.backbone]
        state = (orig.dal_checkpoint(what.backbone, enc, z, seed=1) if what.kind == "classifier" else
                 orig.pretraining_checkpoint(what.backbone, enc, z, dec, seed=1))
        torch.save(state, tmp_path / args[1])
        assert main(args) == 0, capsys.readouterr().err
        assert ("--drug" in args) == (what.kind == "classifier")
    bundles = {e.bundle.path.name: e.bundle for e in list_library()}
    assert {(b.kind, b.backbone, b.drug or None) for b in bundles.values()} == {
        (w.kind, w.backbone, w.drug) for w in published.KNOWN.values() if w.kind in ("classifier", "backbone")}
    assert bundles["DOCETAXEL_dist_vae"].kind == "classifier"


def test_cli_models_fetch(figshare, capsys):
    from scatd_core.cli import main

    assert main(["models", "fetch"]) == 0
    assert "Dist_VAE drug model, docetaxel" in capsys.readouterr().out
    assert main(["models", "fetch", DAL]) == 0
    assert "Installed DOCETAXEL · Dist_VAE" in capsys.readouterr().out
    assert main(["models", "fetch", "nothing.pth"]) == 2


def _models_page_with_the_list(monkeypatch) -> AppTest:
    """The Model library page, the published models listed."""
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("app_pages/8_Models.py")
    at.run()
    at.button(key="btn_list_published").click().run()
    return at


def test_models_page_installs_the_published_models(figshare, monkeypatch):
    at = _models_page_with_the_list(monkeypatch)
    choice = at.multiselect(key="models_published_choice")
    assert choice.options and any(DAL in o for o in choice.options)
    choice.set_value([DAL]).run()
    at.button(key="btn_install_published").click().run()
    assert not at.exception and "Installed" in "".join(str(s.value) for s in at.success)
    assert len(list_library()) == 1


def _own_docetaxel_import(tmp_path, user="bob"):
    """A user's own Dist_VAE docetaxel checkpoint, imported with no display name: the folder
    DOCETAXEL_dist_vae, the published model's default."""
    from scatd_core.bundle import import_checkpoint

    enc, z, _ = SMALL["dist_vae"]
    torch.save(orig.dal_checkpoint("dist_vae", enc, z, seed=99), tmp_path / "my_docetaxel.pth")
    (tmp_path / "genes.txt").write_text("\n".join(small_gene_names(enc[0])) + "\n")
    return import_checkpoint(tmp_path / "my_docetaxel.pth", "dist_vae", drug="DOCETAXEL", genes=tmp_path / "genes.txt",
                             provenance={"imported_by": user})


def test_another_model_in_the_published_folder_is_never_taken_for_the_published_one(figshare, tmp_path, capsys):
    """QA: a user's own docetaxel import took DOCETAXEL_dist_vae; the published install then said it was
    'installed already', and --model DOCETAXEL_dist_vae meant the user's weights."""
    from scatd_core.cli import main

    theirs = _own_docetaxel_import(tmp_path)
    assert theirs.path.name == "DOCETAXEL_dist_vae"
    files = published.list_files()
    said = []
    [bundle] = published.install([DAL], files=files, user="alice", notice=said.append)
    assert bundle.path.name == "DOCETAXEL_dist_vae_published" and bundle.manifest["provenance"]["source_file"] == DAL
    assert said == ["The published Dist_VAE drug model, docetaxel (GSE140440) was installed as "
                    "DOCETAXEL_dist_vae_published, not DOCETAXEL_dist_vae: DOCETAXEL_dist_vae holds another model, "
                    f"'DOCETAXEL (dist_vae)' (imported by bob on {theirs.manifest['provenance']['created'][:10]}). "
                    "Choose it by its folder name DOCETAXEL_dist_vae_published."]
    assert load_bundle(theirs.path).manifest["weights_sha256"] == theirs.manifest["weights_sha256"]  # untouched
    downloads = len([r for r in figshare if r.startswith("/files/")])
    with pytest.raises(NameTaken) as again:  # found where it went, without downloading it again
        published.install([DAL], files=files)
    assert "is installed already: the model library's DOCETAXEL_dist_vae_published already exists and holds it " \
           "(imported by alice on " in again.value.message
    assert str(theirs.path.parent) not in again.value.message + again.value.app_hint
    assert len([r for r in figshare if r.startswith("/files/")]) == downloads
    assert main(["models", "fetch", DAL]) == 2 and "installed already" in capsys.readouterr().err


def test_the_published_checkpoint_imported_by_hand_is_installed_already(figshare, tmp_path):
    """The offline path (manual_instructions): the same file imported by hand is recognised by its sha256."""
    from scatd_core.bundle import import_checkpoint

    files = published.list_files()
    by_hand = tmp_path / DAL
    with published._get(next(f for f in files if f.name == DAL).url) as response:
        by_hand.write_bytes(response.read())
    genes = published.download(next(f for f in files if f.name == published.GENE_LIST), tmp_path)
    mine = import_checkpoint(by_hand, "dist_vae", drug="DOCETAXEL", genes=genes, provenance={"imported_by": "carol"})
    with pytest.raises(NameTaken, match="installed already: the model library's DOCETAXEL_dist_vae already exists and "
                                        "holds it \\(imported by carol"):
        published.install([DAL], files=files)
    assert [e.path for e in list_library()] == [mine.path]


def test_the_models_page_says_where_the_published_model_went(figshare, tmp_path, monkeypatch):
    _own_docetaxel_import(tmp_path)
    at = _models_page_with_the_list(monkeypatch)
    at.multiselect(key="models_published_choice").set_value([DAL]).run()
    at.button(key="btn_install_published").click().run()
    assert not at.exception
    assert "DOCETAXEL_dist_vae_published" in "".join(str(s.value) for s in at.success).replace("\\", "")
    shown = "".join(str(s.value) for s in at.info).replace("\\", "")
    assert "installed as DOCETAXEL_dist_vae_published, not DOCETAXEL_dist_vae" in shown and "bob" in shown
    assert str(tmp_path) not in shown


def test_the_names_the_published_install_uses_are_kept_for_it(figshare, tmp_path, capsys):
    """QA: a user's own import (or one named so) could take DOCETAXEL_dist_vae_published, or call itself
    "(published scATD)": a lab member then chose it as the published model, and the published install
    went on to DOCETAXEL_dist_vae_published-2. The offline path, the published checkpoint imported by hand
    (DRUG_backbone, as someone's own checkpoint of that drug and backbone), is as before."""
    from scatd_core.bundle import import_checkpoint
    from scatd_core.cli import main

    theirs = _own_docetaxel_import(tmp_path)  # their own docetaxel model, no display name: as before
    assert theirs.path.name == "DOCETAXEL_dist_vae"
    pth, genes = tmp_path / "my_docetaxel.pth", tmp_path / "genes.txt"
    for name, said in (("DOCETAXEL_dist_vae_published", "The folder name DOCETAXEL_dist_vae_published is kept for "
                                                        "the published Dist_VAE drug model, docetaxel (GSE140440)"),
                       ("DOCETAXEL_dist_vae_published-3", "is kept for the published"),
                       ("Docetaxel (Published scATD)", "The display name 'Docetaxel (Published scATD)' says "
                                                       "'published scATD'")):
        with pytest.raises(InputError) as err:
            import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, name=name)
        assert said in err.value.message and "Nothing was imported" in err.value.message
        assert "figshare's checksum" in err.value.message and "another display name" in err.value.app_hint
        assert str(tmp_path) not in err.value.message + err.value.app_hint
    # the published model's own folder, for a model of another drug: refused too (CLI, --name or --out)
    code = main(["import-checkpoint", str(pth), "--backbone", "dist_vae", "--drug", "CISPLATIN", "--genes", str(genes),
                 "--name", "DOCETAXEL_dist_vae"])
    err = capsys.readouterr().err
    assert code == 2 and "DOCETAXEL_dist_vae is where the published Dist_VAE drug model, docetaxel (GSE140440) goes" in err
    assert "only a Dist_VAE (scATD-sf-dist) drug model of DOCETAXEL may take it" in err and "--name" in err
    code = main(["import-checkpoint", str(pth), "--backbone", "dist_vae", "--drug", "DOCETAXEL", "--genes", str(genes),
                 "--out", str(tmp_path / "elsewhere" / "DOCETAXEL_dist_vae_published")])
    assert code == 2 and "is kept for the published" in capsys.readouterr().err
    assert [e.path for e in list_library()] == [theirs.path]
    # the published install takes its own folder, free
    said = []
    [bundle] = published.install([DAL], files=published.list_files(), user="alice", notice=said.append)
    assert bundle.path.name == "DOCETAXEL_dist_vae_published"
    assert bundle.name == "Dist_VAE drug model, docetaxel (GSE140440) (published scATD)"


def test_models_page_offline_gives_real_links_and_commands_as_code(monkeypatch):
    """QA (11_fetch.png): with figshare unreachable, the page's addresses were plain text holding an
    invisible U+2060 after "https" (a copied address did not work), and the commands showed raw
    backticks. Now the addresses are markdown links, clean to copy, and each command is an st.code block."""
    from scatd_core.config import settings

    monkeypatch.setenv("SCATD_FIGSHARE_API", f"http://127.0.0.1:{_free_port()}/v2")  # nothing listens there
    at = _models_page_with_the_list(monkeypatch)
    assert not at.exception
    assert "figshare could not be reached" in at.error[0].value
    shown = [e.value for e in (*at.error, *at.markdown, *at.warning, *at.code)]
    assert not any("\u2060" in text for text in shown)
    assert not any("`scatd" in text or "\\`" in text for text in shown)  # no raw backticks
    links = "".join(shown)
    for url in (published.FIGSHARE_URL, settings()["gene_list_url"]):
        assert f"]({url})" in links
    codes = [c.value for c in at.code]
    assert codes == [published.manual_command(name, what) for name, what in published.KNOWN.items()
                     if what.kind in ("classifier", "backbone")]
