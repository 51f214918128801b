"""Geneformer: find and check its files, the rank-value tokenizer, and cell embeddings.

Files (in :func:`scatd_core.config.geneformer_dir`, ``$SCATD_GENEFORMER_DIR``):

- the dictionaries of the model's generation, in that folder or its ``geneformer/``,
  ``geneformer/gene_dictionaries_30m/`` (Hugging Face layout) subfolders: V1 (gc30M:
  ``token_dictionary.pkl`` or ``token_dictionary_gc30M.pkl``, the gene medians, optionally the
  symbol -> Ensembl ``gene_name_id_dict`` and the ``ensembl_mapping_dict``), V2 (the same with
  ``_gc104M``). They are pickles of plain dicts, read with a restricted unpickler that builds
  numbers and strings only (:func:`scatd_core.genes.load_pickled_dict`).
- a model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``): the folder
  itself, one of its subfolders, or ``$SCATD_GENEFORMER_MODEL``. VAE_gf was trained on the
  12-layer V1 model ``gf-12L-30M-i2048`` (512-d embeddings); with several models present the one
  whose embedding size the drug model takes is used.

Tokenizer (Geneformer's ``TranscriptomeTokenizer``, ``backbones.md`` B.3): counts of genes that
map to the same Ensembl ID are summed (V2, or whenever the ``ensembl_mapping_dict`` is present,
IDs are first collapsed through it); each cell's counts are divided by its total count over all
genes, times 10,000, divided by each gene's median over Geneformer's corpus; the expressed genes
are ranked by that value (a stable sort, so ties keep the dictionary order; Geneformer's sort is
not stable) and cut to the model's input size; V2 adds ``<cls>`` first and ``<eos>`` last.

Embedding (as scATD used it, ``EmbExtractor(emb_layer=-1)``): the output of the second-to-last
layer, averaged over the gene tokens (padding, ``<cls>`` and ``<eos>`` excluded); ``emb_mode="cls"``
takes the ``<cls>`` token instead (V2 only). Layers after the one used are never run.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from scatd_core.config import geneformer_dir, geneformer_model_dir
from scatd_core.errors import CheckpointError, InputError, ScatdError
from scatd_core.foundation._assets import Probe, ProbeCache, Problem, access_state, check_file, file_state, \
    lfs_pointer_size, lfs_problem, torch_load_tensors, unreachable_problem, unreadable_problem
from scatd_core.foundation._dictionaries import DICTIONARIES, content_kind, find_dictionary, misplaced_text

NAME = "Geneformer"
#: The model's input size tells its generation (2048: V1, no special tokens; 4096: V2).
INPUT_SIZE_VERSION = {2048: "V1", 4096: "V2"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: A safetensors file given the name of PyTorch weights: the folder reads it under its own name.
SAFETENSORS_NAME_HINT = ("Geneformer's model folder reads safetensors weights too: name the file model.safetensors "
                         "(next to config.json).")
#: The published Geneformer models (backbones.md B.1), by what their weights show (layers, hidden
#: size, feed-forward size, input size): name and attention heads. All use ReLU. The weights do not
#: show the number of heads nor the activation, so config.json is compared with these.
PUBLISHED_CONFIGS = {(6, 256, 512, 2048): ("gf-6L-30M-i2048", 4), (12, 512, 1024, 2048): ("gf-12L-30M-i2048", 8),
                     (12, 512, 1024, 4096): ("gf-12L-95M-i4096", 8), (20, 896, 1792, 4096): ("gf-20L-95M-i4096", 14),
                     (12, 768, 3072, 4096): ("Geneformer-V2-104M", 12),
                     (18, 1152, 4608, 4096): ("Geneformer-V2-316M", 18)}
PUBLISHED_ACTIVATION = "relu"
EMB_MODES = ("cell", "cls")
TARGET_SUM = 10_000
VAE_GF_MODEL = "gf-12L-30M-i2048"
INSTALL_HINT = ("Put the Geneformer model folder ({model}: config.json and model.safetensors or pytorch_model.bin, "
                "from the Hugging Face repository ctheodoris/Geneformer with git lfs, or scATD's figshare copy) in "
                "{folder}/, and its dictionaries (token_dictionary.pkl, gene_median_dictionary.pkl, "
                "gene_name_id_dict.pkl) in {folder}; or set SCATD_GENEFORMER_DIR (and SCATD_GENEFORMER_MODEL) to "
                "where they are.")


# --------------------------------------------------------------------------- transformers

#: The BERT classes read from ``transformers`` (resolved once, under the lock).
BERT_CLASSES = ("BertConfig", "BertModel", "BertForMaskedLM")
_TRANSFORMERS_LOCK = threading.Lock()
_TRANSFORMERS = None


def transformers_module():
    """The ``transformers`` module, its BERT classes (:data:`BERT_CLASSES`) resolved: the only
    place scATD imports it. Two threads importing it for the first time at once (two sessions
    opening the Model page) made one of them fail with "cannot import name 'BertConfig'":
    ``transformers`` fills in its names lazily and a second import sees the module half done. The
    first import and the lazy names are therefore resolved once per process, under a lock; later
    calls return the module at once. Raises :class:`ScatdError` when the package is missing."""
    global _TRANSFORMERS
    if _TRANSFORMERS is not None:
        return _TRANSFORMERS
    with _TRANSFORMERS_LOCK:
        if _TRANSFORMERS is None:
            try:
                import transformers

                for name in BERT_CLASSES:
                    getattr(transformers, name)
            except (ImportError, AttributeError) as exc:
                raise ScatdError(f"Geneformer needs the transformers package, which cannot be imported here "
                                 f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).",
                                 "Install it on the server: pip install 'transformers>=4.46' (see "
                                 "requirements.txt), then restart scATD Studio.") from None
            _TRANSFORMERS = transformers
    return _TRANSFORMERS


def warm_up() -> None:
    """Import ``transformers`` once (the app's start-up), so that no page waits for it; a missing
    package is said by the Geneformer probe, not here."""
    try:
        transformers_module()
    except ScatdError:
        pass


# --------------------------------------------------------------------------- dictionaries

def version_hint(version: str, folder: Path) -> str:
    """What to do when the model is Geneformer ``version`` and the dictionaries are not."""
    other = "V2" if version == "V1" else "V1"
    files = ", ".join(DICTIONARIES[version][k][0] for k in ("tokens", "medians", "names"))
    return (f"Put the Geneformer {version} dictionaries ({files}) in {folder}, or replace the model with a Geneformer "
            f"{other} model that matches the dictionaries there (scATD's published VAE_gf models take the V1 model "
            f"{VAE_GF_MODEL}); see README, 'Backbone files'.")



@dataclass
class Vocabulary:
    """Geneformer's dictionaries of one generation.

    ``tokens``: Ensembl ID (and special tokens) -> token id; ``medians``: Ensembl ID -> the
    gene's non-zero median over the corpus; ``names``: symbol -> Ensembl ID; ``mapping``:
    Ensembl ID -> canonical Ensembl ID (collapsing).
    """

    version: str
    tokens: dict
    medians: dict
    names: dict | None = None
    mapping: dict | None = None
    files: dict = field(default_factory=dict)

    @property
    def special_tokens(self) -> bool:
        return "<cls>" in self.tokens and "<eos>" in self.tokens

    @property
    def genes(self) -> list[str]:
        """The Ensembl IDs that can be tokens (those with a median), in token-id order."""
        return sorted(self.medians, key=self.tokens.__getitem__)

    def symbols(self, ensembl_ids) -> list[str]:
        """Gene symbols of Ensembl IDs where the name dictionary knows them, else the ID."""
        inverse = {v: k for k, v in (self.names or {}).items()}
        return [inverse.get(g, g) for g in ensembl_ids]


def read_vocabulary(version: str = "V1", folder: str | Path | None = None) -> Vocabulary:
    """Load and check the dictionaries of ``version`` (:class:`CheckpointError` on any problem)."""
    from scatd_core.genes import load_pickled_dict

    root = Path(folder) if folder is not None else geneformer_dir()
    loaded, files = {}, {}
    for kind in ("tokens", "medians", "names", "mapping"):
        path = find_dictionary(kind, version, root)
        if path is None:
            if kind in ("tokens", "medians"):
                raise CheckpointError(f"Geneformer {version} {kind} dictionary ({DICTIONARIES[version][kind][-1]}) "
                                      f"not found in {root}.", INSTALL_HINT.format(model=VAE_GF_MODEL, folder=root))
            continue
        problem = check_file(path, "Dictionary", INSTALL_HINT.format(model=VAE_GF_MODEL, folder=root))
        if problem is not None:
            raise problem.error()
        try:
            loaded[kind] = load_pickled_dict(path, allow_numpy_scalars=True)
        except InputError as exc:
            raise CheckpointError(exc.message, "Use the dictionary files shipped with Geneformer.") from None
        files[kind] = path
    # a file holding another dictionary's content (two swapped, or one copied over another): named as such,
    # before the checks below would call them dictionaries of different releases
    misplaced = misplaced_text({kind: content_kind(d) for kind, d in loaded.items()}, files, version)
    if misplaced is not None:
        raise CheckpointError(*misplaced)
    vocab = Vocabulary(version, loaded["tokens"], loaded["medians"], loaded.get("names"), loaded.get("mapping"), files)
    if not set(vocab.medians) <= set(vocab.tokens):
        raise CheckpointError(f"{files['medians'].name} has genes missing from {files['tokens'].name}: the two "
                              "dictionaries come from different Geneformer releases.",
                              "Use the token and median dictionaries of the same release.")
    if "<pad>" not in vocab.tokens:
        raise CheckpointError(f"{files['tokens'].name} has no <pad> token; it is not a Geneformer token dictionary.",
                              "Use the dictionary files shipped with Geneformer.")
    return vocab


# --------------------------------------------------------------------------- model folders

@dataclass
class ModelFolder:
    """One Geneformer model folder, read from its ``config.json`` and weight header (no weights)."""

    path: Path
    config: dict
    weights: Path | None
    config_error: str | None = None  # why config.json could not be read (e.g. "line 1, column 2")

    @property
    def hidden_size(self) -> int:
        return int(self.config.get("hidden_size", 0))

    @property
    def n_layers(self) -> int:
        return int(self.config.get("num_hidden_layers", 0))

    @property
    def input_size(self) -> int:
        return int(self.config.get("max_position_embeddings", 0))

    @property
    def version(self) -> str | None:
        return INPUT_SIZE_VERSION.get(self.input_size)

    def describe(self) -> str:
        return (f"{self.path.name}: Geneformer {self.version or '?'} ({self.n_layers} layers x {self.hidden_size}, "
                f"input {self.input_size})")


def published_folder(name: str) -> ModelFolder:
    """A stand-in for a published model not installed (its sizes only, no weights): what the cost
    of its embeddings is estimated from."""
    (layers, hidden, inner, size), (_, heads) = next((k, v) for k, v in PUBLISHED_CONFIGS.items() if v[0] == name)
    config = {"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": inner,
              "num_attention_heads": heads, "max_position_embeddings": size, "hidden_act": PUBLISHED_ACTIVATION,
              "vocab_size": 25426 if size == 2048 else 20275}
    return ModelFolder(Path(name), config, None)


def model_folders(folder: str | Path | None = None) -> list[ModelFolder]:
    """Model folders in ``$SCATD_GENEFORMER_MODEL`` or the Geneformer folder and its subfolders."""
    explicit = geneformer_model_dir() if folder is None else None
    root = Path(folder) if folder is not None else geneformer_dir()
    candidates = [explicit] if explicit is not None else \
        [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    out = []
    for path in candidates:
        if not (path / "config.json").is_file():
            continue
        config, error = {}, None
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            error = f"is not valid JSON (line {exc.lineno}, column {exc.colno})"
        except UnicodeDecodeError:
            error = "is not text (UTF-8)"
        except OSError as exc:
            error = f"cannot be read ({exc.strerror or exc})"
        if error is None and not isinstance(config, dict):
            config, error = {}, "is not a JSON object"
        weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
        out.append(ModelFolder(path, config, weights, error))
    return out


def choose_model(folders: list[ModelFolder], embedding_dim: int | None) -> ModelFolder | None:
    """The folder whose embedding size is ``embedding_dim`` (else the first one)."""
    matching = [f for f in folders if not f.config_error and (embedding_dim is None or f.hidden_size == embedding_dim)]
    unreadable = [f for f in folders if f.config_error]  # may be the one wanted: its problem is the one to tell
    return (matching or unreadable or folders or [None])[0]


def _weight_shapes(path: Path) -> dict[str, tuple]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types for every corrupt header
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc}).",
                                  f"Download {path.name} again.") from None
    state = torch_load_tensors(path, "Geneformer weights", SAFETENSORS_NAME_HINT)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} does not hold a state dict.", f"Download {path.name} again.")
    return {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _bert_key(key: str) -> str | None:
    """The ``BertModel`` name of a checkpoint tensor, or ``None`` for what the encoder does not use."""
    if key.startswith("cls.") or key.endswith("position_ids") or key.startswith(("pooler.", "bert.pooler.")):
        return None  # the masked-LM head, the pooler and a buffer old transformers versions saved
    return key[len("bert."):] if key.startswith("bert.") else key


def check_model(model: ModelFolder, vocab: Vocabulary | None) -> list[Problem]:
    """Problems of a model folder: not BERT, weights missing or an LFS pointer, header shapes, and
    whether its vocabulary and input size match the dictionaries."""
    hint = INSTALL_HINT.format(model=VAE_GF_MODEL, folder=model.path.parent)
    out = []
    if model.config.get("model_type") != "bert":
        out.append(Problem("not_bert", f"{model.path}/config.json is not a BERT config (model_type "
                                       f"{model.config.get('model_type')!r}).", "Give a Geneformer model folder."))
        return out
    if model.weights is None:
        return [Problem("missing_weights", f"{model.path} has config.json but no model.safetensors or "
                                           "pytorch_model.bin.", hint)]
    unreadable = unreadable_problem(model.weights, "The weights file")
    if unreadable is not None:
        return [unreadable]
    size = lfs_pointer_size(model.weights)
    if size is not None:
        return [lfs_problem(model.weights, size)]
    try:
        shapes = _weight_shapes(model.weights)
    except CheckpointError as exc:
        return [Problem("bad_weights", exc.message, exc.hint or "")]
    shapes = {_bert_key(k): v for k, v in shapes.items() if _bert_key(k) is not None}
    want = (int(model.config.get("vocab_size", -1)), model.hidden_size)
    got = shapes.get("embeddings.word_embeddings.weight")
    if got != want:
        out.append(Problem("wrong_shape", f"{model.weights.name}: the word embeddings are {got}, but config.json "
                           f"says {want} (vocabulary x hidden size).", f"Download {model.path.name} again."))
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layer.")}
    if layers != set(range(model.n_layers)):
        out.append(Problem("wrong_shape", f"{model.weights.name} holds {len(layers)} encoder layers; config.json "
                           f"says {model.n_layers}.", f"Download {model.path.name} again."))
    if not out:
        try:
            mismatch = config_mismatch(model, shapes)
        except ScatdError as exc:  # transformers missing: the model cannot be built
            return [Problem("missing_package", exc.message, exc.hint or "")]
        if mismatch is not None:
            out.append(Problem("wrong_shape", f"{model.weights.name} does not match {model.path.name}/config.json: "
                               f"{mismatch}.", f"Download {model.path.name} again (config.json and the weights "
                               "of one release)."))
    if model.version is None:
        out.append(Problem("unknown_version", f"{model.path.name} takes {model.input_size} tokens; Geneformer V1 "
                           "takes 2048 and V2 4096.", "Give a Geneformer V1 or V2 model."))
    elif vocab is not None:
        if vocab.version != model.version:
            out.append(Problem("version_mismatch", f"The model {model.path.name} is Geneformer {model.version} but the "
                               f"dictionaries are {vocab.version}: it cannot embed cells with them.",
                               version_hint(model.version, model.path.parent)))
        elif len(vocab.tokens) != want[0]:
            out.append(Problem("version_mismatch", f"{model.path.name} has a vocabulary of {want[0]:,} tokens but "
                               f"{vocab.files['tokens'].name} has {len(vocab.tokens):,}: they are from different "
                               "Geneformer releases.", "Use the dictionaries of the model's release."))
    return out


def config_mismatch(model: ModelFolder, shapes: dict[str, tuple]) -> str | None:
    """How the weight shapes (names as :func:`_bert_key` gives them) contradict ``config.json``,
    or ``None``: the encoder ``config.json`` describes is built on the meta device (no memory),
    and every tensor's shape compared."""
    heads, hidden = model.config.get("num_attention_heads"), model.hidden_size
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or hidden < 1 or hidden % heads:
        return (f"config.json gives {heads!r} attention heads for a hidden size of {hidden}, but the hidden size "
                "must be a multiple of the number of heads")
    tf = transformers_module()
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in tf.BertModel(tf.BertConfig.from_dict(model.config),
                                                                   add_pooling_layer=False).state_dict().items()}
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        return f"config.json describes no valid BERT encoder ({exc})"
    expected = {k: v for k, v in expected.items() if not k.endswith(("position_ids", "token_type_ids"))}
    missing = [k for k in expected if k not in shapes]
    if missing:
        return f"it lacks {len(missing)} tensor{'s' if len(missing) > 1 else ''} the encoder needs (e.g. {missing[0]})"
    unexpected = [k for k in shapes if k not in expected and not k.endswith(("position_ids", "token_type_ids"))]
    if unexpected:
        return f"it holds tensors the encoder does not have (e.g. {unexpected[0]})"
    wrong = [k for k in expected if tuple(shapes[k]) != expected[k]]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        return f"{k} is {tuple(shapes[k])} but config.json makes it {expected[k]}{more}"
    return None


def published_config_note(model: ModelFolder) -> str | None:
    """A warning when ``config.json`` describes a published Geneformer model by its sizes (those the
    weights show) but gives it other attention heads or another activation, which the weights do
    not show: the model would run, with embeddings other than the published model's."""
    try:
        sizes = (model.n_layers, model.hidden_size, int(model.config.get("intermediate_size", 0)), model.input_size)
    except (TypeError, ValueError):
        return None
    if sizes not in PUBLISHED_CONFIGS:
        return None
    name, heads = PUBLISHED_CONFIGS[sizes]
    act = model.config.get("hidden_act", PUBLISHED_ACTIVATION)
    said = []
    if model.config.get("num_attention_heads") != heads:
        said.append(f"{model.config.get('num_attention_heads')!r} attention heads where {name} has {heads}")
    if act != PUBLISHED_ACTIVATION:
        said.append(f"the activation {act!r} where {name} uses {PUBLISHED_ACTIVATION!r}")
    if not said:
        return None
    return (f"{model.path.name}/config.json describes the published {name} ({model.n_layers} layers x "
            f"{model.hidden_size}) but gives {' and '.join(said)}. The weights do not show this, so the model "
            f"runs as config.json says and its embeddings differ from {name}'s"
            + (", which scATD's VAE_gf models were trained on" if name == VAE_GF_MODEL else "")
            + ". Put back the config.json that came with the weights.")


# --------------------------------------------------------------------------- probe

#: The probes made last, per folder and settings (:class:`~scatd_core.foundation._assets.ProbeCache`).
_PROBES = ProbeCache()


def configured_by() -> str:
    """What names the Geneformer files (the Model page's "set by ..."): the model folder's setting
    when one is given, else the folder's: its variable, its key in the configuration file (named),
    or the default (the precedence of :func:`scatd_core.config.settings`: a variable over the file)."""
    from scatd_core.config import settings

    conf = settings()
    if conf["geneformer_model"]:
        return conf.set_by("geneformer_model") or "SCATD_GENEFORMER_MODEL"
    return conf.set_by("geneformer_dir") or "default ($SCATD_HOME/geneformer)"


def probe(folder: str | Path | None = None, embedding_dim: int | None = None) -> Probe:
    """Check the Geneformer files without loading the weights (cached until a file, its permissions,
    or the setting that names it changes)."""
    root = Path(folder) if folder is not None else geneformer_dir()
    by = configured_by()
    try:
        folders = model_folders(folder)
        dictionaries = [find_dictionary(k, v, root) for v in DICTIONARIES for k in DICTIONARIES[v]]
        where = (str(root), embedding_dim, str(geneformer_model_dir() if folder is None else ""), by)
        state = tuple(access_state(p) for p in [root] + [f.path for f in folders]) + tuple(
            access_state(p) for f in folders for p in (f.path / "config.json", f.weights) if p is not None) + tuple(
            access_state(p) for p in dictionaries if p is not None) + tuple(
            access_state(p) for p in stray_configs(root))
        return _PROBES.get(where, state, lambda: _probe(root, folders, embedding_dim, by))
    except PermissionError as exc:  # a folder this account may not open: said, not a traceback (not kept)
        out = Probe("vae_gf", NAME, str(root), by)
        out.problems.append(unreachable_problem(exc, NAME))
        return out


def found_dictionaries(root: Path) -> dict[str, Path]:
    """The V1 dictionaries in ``root`` (else the V2 ones), by kind: what a probe says is already there."""
    for version in DICTIONARIES:
        found = {k: p for k in DICTIONARIES[version] if (p := find_dictionary(k, version, root)) is not None}
        if found:
            return found
    return {}


def stray_configs(root: Path) -> list[Path]:
    """JSON files that look like a model's config under another name than config.json (e.g.
    ``gf-12L-30M-config.json``), in ``root`` and its subfolders: a model folder reads config.json only."""
    if not root.is_dir():
        return []
    places = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    return [f for place in places for f in sorted(place.glob("*.json"))
            if f.name != "config.json" and "config" in f.name.lower()]


def found_text(found: dict[str, Path]) -> str:
    """The dictionaries already there, as a sentence (``""``: none)."""
    return f"Found: the dictionaries {', '.join(p.name for p in found.values())}." if found else ""


def missing_model_text(root: Path) -> str:
    """No model folder: said with a config under another name when there is one (the dictionaries
    already there are :func:`found_text`, said after it where they are not ticked on their own)."""
    text = (f"No Geneformer model folder in {root} or its subfolders (a folder holding config.json and "
            "model.safetensors or pytorch_model.bin).")
    for stray in stray_configs(root):
        where = stray.parent.name + "/" if stray.parent != root else ""
        text += (f" {where}{stray.name} looks like a model's config, but a model folder's must be named config.json, "
                 "beside its weights.")
    return text


def model_hint(root: Path, found: dict[str, Path]) -> str:
    """What to do without a model folder: the folder only when the dictionaries are there."""
    if not {"tokens", "medians"} <= set(found):
        return INSTALL_HINT.format(model=VAE_GF_MODEL, folder=root)
    strays = stray_configs(root)
    config = (f" (a config you have, e.g. {strays[0].name}, goes there as config.json, with the weights beside it)"
              if strays else "")
    return (f"Put the Geneformer model folder {VAE_GF_MODEL} (config.json and model.safetensors or pytorch_model.bin, "
            "from the Hugging Face repository ctheodoris/Geneformer with git lfs, or scATD's figshare copy) in "
            f"{root}/, as {root}/{VAE_GF_MODEL}/{config}; the dictionaries are already there. Or set "
            "SCATD_GENEFORMER_MODEL to the model folder.")


def dictionaries_hint(root: Path, version: str, found: dict[str, Path]) -> str:
    """What to do when the model is there but dictionaries are not: the missing ones only."""
    missing = [DICTIONARIES[version][k][-1] for k in ("tokens", "medians", "names") if find_dictionary(k, version, root)
               is None]
    return (f"Put Geneformer's {version} dictionaries {', '.join(missing)} in {root} (beside the model folder); or "
            "set SCATD_GENEFORMER_DIR to the folder holding them.")


def _probe(root: Path, folders: list[ModelFolder], embedding_dim: int | None, by: str) -> Probe:
    out = Probe("vae_gf", NAME, str(root), by)
    hint = INSTALL_HINT.format(model=VAE_GF_MODEL, folder=root)
    out.details["models"] = [f.describe() for f in folders]
    model = choose_model(folders, embedding_dim)
    found = found_dictionaries(root)
    if model is None:
        out.files.update({f"{k}_dictionary": p for k, p in found.items()})
        out.add("missing_model", missing_model_text(root), model_hint(root, found), found=found_text(found))
    elif model.config_error:  # its own problem: not "0-d embeddings" nor "not a BERT config"
        out.files["model"] = model.path
        unreadable = unreadable_problem(model.path / "config.json", "The model's config")
        if unreadable is not None:
            out.problems.append(unreadable)
        else:
            out.add("bad_config", f"config.json in {model.path.name} {model.config_error}.",
                    f"Download the model folder {model.path.name} again (or repair its config.json).")
    else:
        out.files["model"] = model.path
        out.embedding_dim = model.hidden_size or None
        if embedding_dim is not None and model.hidden_size != embedding_dim:
            out.add("wrong_model", f"The Geneformer model{'s' if len(folders) > 1 else ''} found "
                    f"({'; '.join(f.describe() for f in folders)}) give{'' if len(folders) > 1 else 's'} "
                    f"{model.hidden_size}-d embeddings, but the drug model takes {embedding_dim}-d ones.",
                    f"Install {VAE_GF_MODEL} (the 12-layer V1 model scATD-gf was trained on, 512-d) as a subfolder "
                    f"of {root}, or set SCATD_GENEFORMER_MODEL to it.")
    version = (model.version if model is not None else None) or "V1"
    vocab = None
    try:
        vocab = read_vocabulary(version, root)
    except CheckpointError as exc:
        other = "V2" if version == "V1" else "V1"
        if find_dictionary("tokens", other, root) is not None and find_dictionary("tokens", version, root) is None:
            out.add("version_mismatch", f"The model is Geneformer {version} but only {other} dictionaries are in "
                    f"{root}: it cannot embed cells with them.", version_hint(version, root))
        else:
            unreadable = getattr(exc, "code", None) == "unreadable_file"
            missing = not unreadable and "not found" in exc.message
            out.add("unreadable_file" if unreadable else "missing_dictionaries" if missing else "bad_dictionary",
                    exc.message,
                    dictionaries_hint(root, version, found) if missing and model is not None else exc.hint or hint)
    if vocab is not None:
        out.files.update({f"{k}_dictionary": p for k, p in vocab.files.items()})
        out.details["n_genes"] = len(vocab.medians)
        if "names" not in vocab.files:
            out.warnings.append(names_missing(vocab, root) + " Data with Ensembl IDs are embedded as usual.")
        if vocab.special_tokens != (version == "V2"):
            out.add("version_mismatch", f"{vocab.files['tokens'].name} {'has' if vocab.special_tokens else 'lacks'} "
                    f"the <cls>/<eos> tokens, so it is not a {version} dictionary.",
                    f"Use the Geneformer {version} dictionaries.")
    if model is not None and not model.config_error:
        out.files["weights"] = model.weights or "missing"
        out.problems.extend(check_model(model, vocab))
        note = published_config_note(model)
        if note is not None:
            out.warn(note, about_embeddings=True)
        out.version = model.describe() + (f"; {vocab.version} dictionaries ({len(vocab.medians):,} genes)"
                                          if vocab is not None else "")
    out.available = not out.problems
    return out


# --------------------------------------------------------------------------- model

_MODELS: dict[tuple, tuple] = {}


def load(folder: str | Path | None = None, embedding_dim: int | None = None, device: str | torch.device = "cpu",
         emb_layer: int = -1):
    """``(encoder, vocabulary, model folder)``: a ``transformers.BertModel`` in eval mode on ``device``
    holding the layers up to the one the embedding is read from (``num_layers + emb_layer``).

    The weights come from ``model.safetensors`` or, failing that, ``pytorch_model.bin`` read with
    ``torch.load(weights_only=True)``; every tensor of the encoder must be present (strict).
    Cached until a file changes.
    """
    state_of = probe(folder, embedding_dim)
    state_of.require()
    model_folder = choose_model(model_folders(folder), embedding_dim)
    n_used = model_folder.n_layers + int(emb_layer)
    if not 1 <= n_used <= model_folder.n_layers:
        raise InputError(f"emb_layer {emb_layer} is outside the model's {model_folder.n_layers} layers.",
                         "Use -1 (the second-to-last layer, as scATD) or 0 (the last layer).")
    stamp = (str(device), n_used) + tuple(file_state(Path(p)) for p in state_of.files.values() if p != "missing")
    if stamp not in _MODELS:
        _MODELS.clear()  # one Geneformer in memory at a time
        _MODELS[stamp] = (_load_bert(model_folder, n_used, device),
                          read_vocabulary(model_folder.version, Path(folder) if folder else geneformer_dir()),
                          model_folder)
    return _MODELS[stamp]


def _load_bert(model: ModelFolder, n_used: int, device):
    tf = transformers_module()
    if model.weights.suffix == ".safetensors":
        from scatd_core._torchfile import load_safetensors

        raw = load_safetensors(model.weights)  # in memory, not mapped from the file
    else:
        raw = torch_load_tensors(model.weights, "Geneformer weights", SAFETENSORS_NAME_HINT)
    state = {_bert_key(k): v for k, v in raw.items() if _bert_key(k) is not None}
    try:
        config = tf.BertConfig.from_dict(model.config)
        bert = tf.BertModel(config, add_pooling_layer=False)
        missing, unexpected = bert.load_state_dict(state, strict=False)
    except (ValueError, RuntimeError, TypeError) as exc:  # a config.json that does not fit the weights
        mismatch = config_mismatch(model, {k: tuple(v.shape) for k, v in state.items()
                                           if isinstance(v, torch.Tensor)}) or str(exc).splitlines()[0]
        raise CheckpointError(f"{model.weights.name} does not match {model.path.name}/config.json: {mismatch}.",
                              f"Download {model.path.name} again (config.json and the weights of one "
                              "release).") from None
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise CheckpointError(f"{model.weights.name} does not match its config.json: "
                              + "; ".join(f"{what}: {', '.join(keys[:4])}" for what, keys in
                                          (("missing", missing), ("unexpected", unexpected)) if keys) + ".",
                              f"Download {model.path.name} again.")
    # The embedding is read after layer n_used: the layers after it would only cost time.
    bert.encoder.layer = bert.encoder.layer[:n_used]
    bert.config.num_hidden_layers = n_used
    bert = bert.float().eval().to(device)
    for p in bert.parameters():
        p.requires_grad_(False)
    return bert


# --------------------------------------------------------------------------- tokenizer

@dataclass
class Tokenizer:
    """Rank-value encoding of a dataset's cells with one vocabulary (see the module docstring)."""

    vocab: Vocabulary
    input_size: int
    alignment: object      # scatd_core.genes.GeneAlignment: data genes -> self.genes
    genes: list[str]       # Ensembl IDs, in token-id order
    token_ids: np.ndarray  # token id of each gene
    medians: np.ndarray
    value_kind: str        # counts or tpm_like (scatd_core.preprocess.detect_value_type)

    @property
    def max_genes(self) -> int:
        return self.input_size - (2 if self.vocab.special_tokens else 0)

    def aligned(self, block) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts of a block of cells on the vocabulary's genes (CSR) and each cell's total count."""
        block = sp.csr_matrix(block)
        totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        return (block @ self.alignment.matrix).tocsr(), totals

    def n_tokens(self, block) -> np.ndarray:
        counts, _ = self.aligned(block)
        n = np.bincount(np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[counts.data > 0],
                        minlength=counts.shape[0])
        return np.where(n > 0, np.minimum(n, self.max_genes) + (self.input_size - self.max_genes), 0)

    def tokenize(self, block) -> list[np.ndarray]:
        """Token ids of every cell of a block (an empty array for a cell with no vocabulary gene)."""
        counts, totals = self.aligned(block)
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        counts.sort_indices()
        out = []
        for i in range(counts.shape[0]):
            lo, hi = counts.indptr[i], counts.indptr[i + 1]
            genes, values = counts.indices[lo:hi], counts.data[lo:hi].astype(np.float64)
            keep = values > 0
            genes, values = genes[keep], values[keep] * scale[i] / self.medians[genes[keep]]
            ranked = self.token_ids[genes[np.argsort(-values, kind="stable")]][: self.max_genes]
            if self.vocab.special_tokens and ranked.size:
                ranked = np.concatenate([[self.vocab.tokens["<cls>"]], ranked, [self.vocab.tokens["<eos>"]]])
            out.append(ranked.astype(np.int64))
        return out


def gene_ids(adata, vocab: Vocabulary) -> list[str]:
    """The data's genes as the vocabulary's Ensembl IDs (symbols through its name dictionary;
    collapsed through its mapping dictionary when present)."""
    from scatd_core.genes import map_gene_ids, names_for

    mapped = map_gene_ids(names_for(adata, "ensembl"), "ensembl", geneformer_dict=vocab.names).names
    if vocab.mapping is None:
        return mapped
    collapsed = (vocab.mapping.get(g.upper(), "") for g in mapped)
    return [g if g in vocab.tokens else "" for g in collapsed]  # as Geneformer: unmapped IDs are dropped


def names_missing(vocab: Vocabulary, root: Path) -> str:
    """What the missing gene-name dictionary of ``vocab`` costs, naming the file."""
    return (f"Geneformer's gene-name dictionary ({DICTIONARIES[vocab.version]['names'][-1]}, gene symbol -> "
            f"Ensembl ID) is not in {root}, so gene symbols cannot be matched to Geneformer's genes.")


def require_names(adata, vocab: Vocabulary, root: Path) -> None:
    """:class:`CheckpointError` naming the missing gene-name dictionary when the data's genes are
    symbols with no Ensembl IDs beside them (else Geneformer would find none of them)."""
    from scatd_core.genes import detect_id_type, names_for

    if vocab.names is not None or not adata.n_vars:
        return
    if detect_id_type(names_for(adata, "ensembl")) not in ("symbol", "mouse_symbol"):
        return
    raise CheckpointError(names_missing(vocab, root),
                          f"Put {DICTIONARIES[vocab.version]['names'][-1]} (shipped with Geneformer, beside "
                          f"{vocab.files['tokens'].name}) in {vocab.files['tokens'].parent}, or give the data with "
                          "Ensembl IDs (--biomart: a BioMart table of 'Gene stable ID' and 'Gene name' maps symbols).",
                          app_hint="Ask the administrator to install Geneformer's gene_name_id_dict.pkl (see "
                                   "`scatd doctor`), or add a BioMart table on the Data page to map the symbols.")


def tokenizer(adata, vocab: Vocabulary, input_size: int) -> Tokenizer:
    """The :class:`Tokenizer` of ``adata``'s genes; :class:`InputError` when none is known or the
    values are not counts."""
    from scatd_core import _keys
    from scatd_core.genes import align_genes
    from scatd_core.preprocess import check_backbone_compatibility, detect_value_type

    genes = vocab.genes
    alignment = align_genes(gene_ids(adata, vocab), genes)
    if alignment.n_matched == 0:
        raise InputError(f"None of the {adata.n_vars:,} genes in the data (e.g. {', '.join(map(str, adata.var_names[:3]))})"
                         f" is among Geneformer's {len(genes):,} genes.",
                         "Give human gene symbols or Ensembl IDs (--biomart: a BioMart table of 'Gene stable ID' and "
                         "'Gene name' maps others).",
                         app_hint="Give human gene symbols or Ensembl IDs (a BioMart table on the Data page maps "
                                  "others).")
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    value_type = {"kind": report["value_type"], "evidence": report.get("value_type_evidence") or {}} \
        if report.get("value_type") else detect_value_type(adata.X)
    problems = check_backbone_compatibility(value_type, "vae_gf")
    if problems:
        raise InputError(problems[0], "Give the raw counts (the 10x output, or adata.raw / layers['counts']).",
                         app_hint="Upload the raw counts (the 10x output, or adata.raw / layers['counts']).")
    return Tokenizer(vocab, int(input_size), alignment, genes,
                     np.array([vocab.tokens[g] for g in genes], dtype=np.int64),
                     np.array([vocab.medians[g] for g in genes], dtype=np.float64), value_type["kind"])


# --------------------------------------------------------------------------- embedding

def pad(token_lists: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, lengths)`` of right-padded token lists."""
    lengths = np.array([t.size for t in token_lists], dtype=np.int64)
    ids = np.full((len(token_lists), int(lengths.max())), pad_id, dtype=np.int64)
    for i, t in enumerate(token_lists):
        ids[i, : t.size] = t
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(lengths)


def pool(states: torch.Tensor, lengths: torch.Tensor, emb_mode: str, special_tokens: bool) -> torch.Tensor:
    """The cell embedding from the token states: the ``<cls>`` state, or the mean over gene tokens."""
    if emb_mode == "cls":
        return states[:, 0]
    first = 1 if special_tokens else 0
    last = lengths - (1 if special_tokens else 0)
    positions = torch.arange(states.shape[1], device=states.device)[None, :]
    genes = ((positions >= first) & (positions < last[:, None])).unsqueeze(-1)
    return (states * genes).sum(dim=1) / (last - first)[:, None].to(states.dtype)


def embed_tokens(bert, token_lists: list[np.ndarray], vocab: Vocabulary, emb_mode: str, device) -> torch.Tensor:
    """Cell embeddings ``[B, hidden]`` of token lists (one forward pass; no gradient)."""
    from scatd_core.foundation._work import autocast

    ids, mask, lengths = pad(token_lists, vocab.tokens["<pad>"])
    with torch.inference_mode(), autocast(torch.device(device)):
        states = bert(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        return pool(states.float(), lengths.to(device), emb_mode, vocab.special_tokens)


def flops_per_cell(config: dict, n_used: int, n_tokens: np.ndarray) -> np.ndarray:
    """Multiply-adds x 2 of ``n_used`` BERT layers for cells of ``n_tokens`` tokens."""
    h, inner, n = int(config["hidden_size"]), int(config["intermediate_size"]), np.asarray(n_tokens, dtype=np.float64)
    return n_used * (2 * (4 * h * h + 2 * h * inner) * n + 4 * h * n * n)


#: Why a cell gets no embedding (beyond the caller's mask).
NOT_EMBEDDED = {"non_finite": "NaN or infinite values (no count is; an infinite or NaN value also spoils the "
                              "cell's total count, which Geneformer divides by)",
                "negative_values": "negative values, which counts never have (Geneformer would drop them without a "
                                   "word and rank the rest)",
                "no_expressed_gene": "no expressed gene in Geneformer's vocabulary"}


def cell_plan(tok: Tokenizer, X, wanted: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(tokens per cell, {reason: cells not embedded}) ``: one pass over ``X``. A wanted cell
    with a NaN, infinite or negative value in any gene (its total count is over all genes) is
    left out (``non_finite``, ``negative_values``), as one without a vocabulary gene
    (``no_expressed_gene``); the others have tokens."""
    from scatd_core._matrix import row_batches
    from scatd_core.foundation._work import FAULTY, faulty_rows

    n = X.shape[0]
    n_tokens = np.zeros(n, dtype=np.int64)
    faulty = {reason: np.zeros(n, dtype=bool) for reason in FAULTY}
    for start, stop, block in row_batches(X, 8192):
        for reason, rows in faulty_rows(block).items():
            faulty[reason][start:stop] = rows
        with np.errstate(invalid="ignore"):
            n_tokens[start:stop] = tok.n_tokens(block)
    reasons, left = {}, np.asarray(wanted, dtype=bool).copy()
    for reason, rows in faulty.items():
        reasons[reason] = left & rows
        left &= ~rows
    reasons["no_expressed_gene"] = left & (n_tokens == 0)
    n_tokens[~left | reasons["no_expressed_gene"]] = 0
    return n_tokens, reasons


def embed(adata, wanted: np.ndarray | None = None, *, folder: str | Path | None = None,
          embedding_dim: int | None = None, emb_mode: str = "cell", emb_layer: int = -1, device: str = "auto",
          batch_tokens: int | None = None, progress=None, should_stop=None,
          lengths: list | None = None, faulty: dict | None = None) -> tuple[np.ndarray, dict]:
    """Geneformer cell embeddings of the ``wanted`` cells of ``adata`` (raw counts).

    Returns ``(embeddings, info)``: float32 ``(n_obs, hidden)``, NaN rows for the cells not
    embedded, and a JSON-safe dict of the settings and counts. Batches are length-sorted
    (``batch_tokens`` tokens each), with bf16 autocast on CUDA. Use
    :func:`scatd_core.foundation.embed_cells` to store the result. ``lengths``, a list, receives
    the tokens of each embedded cell (the Ray engine merges shards' medians from them).
    ``faulty``, a dict, receives the rows of the cells left out for NaN, infinite or negative
    values, by reason (:func:`cell_plan`).
    """
    from scatd_core._matrix import row_batches
    from scatd_core.foundation import _work
    from scatd_core.predict import resolve_device

    if emb_mode not in EMB_MODES:
        raise InputError(f"Unknown Geneformer embedding mode {emb_mode!r}; use 'cell' (mean over genes) or 'cls'.")
    dev = resolve_device(device)
    bert, vocab, model_folder = load(folder, embedding_dim, dev, emb_layer)
    if emb_mode == "cls" and not vocab.special_tokens:
        raise InputError("The <cls> embedding needs a Geneformer V2 model; V1 has no <cls> token.",
                         "Use emb_mode='cell' (the mean over gene tokens, as scATD).")
    require_names(adata, vocab, Path(folder) if folder else geneformer_dir())
    tok = tokenizer(adata, vocab, model_folder.input_size)
    wanted = np.ones(adata.n_obs, dtype=bool) if wanted is None else np.asarray(wanted, dtype=bool)
    n_tokens, reasons = cell_plan(tok, adata.X, wanted)
    ok = n_tokens > 0
    n_used = bert.config.num_hidden_layers
    work = _work.Work(flops_per_cell(model_folder.config, n_used, n_tokens[ok]).sum(), int(ok.sum()),
                      f"{NAME} embeddings", progress, should_stop)
    budget = _work.batch_tokens(dev, batch_tokens)
    out = np.full((adata.n_obs, model_folder.hidden_size), np.nan, dtype=np.float32)
    finite = ok.copy()
    for start, stop, block in row_batches(adata.X, _work.CHUNK_CELLS):
        rows = np.flatnonzero(ok[start:stop])
        if rows.size == 0:
            continue
        lists = tok.tokenize(block[rows])
        at = rows + start
        for batch in _work.length_batches(n_tokens[at], budget):
            work.check()
            result = embed_tokens(bert, [lists[i] for i in batch], vocab, emb_mode, dev).cpu().numpy()
            finite[at[batch]] = _work.finite_rows(result)
            out[at[batch]] = result
            work.step(batch.size, flops_per_cell(model_folder.config, n_used, n_tokens[at[batch]]).sum())
    if lengths is not None:
        lengths.append(n_tokens[finite])
    if faulty is not None:
        faulty.update({k: np.flatnonzero(v) for k, v in reasons.items() if k != "no_expressed_gene" and v.any()})
    not_embedded = {k: int(v.sum()) for k, v in reasons.items() if v.any()}
    if (ok & ~finite).any():
        not_embedded[_work.NON_FINITE_OUTPUT] = int((ok & ~finite).sum())
    info = {"model": NAME, "model_folder": model_folder.path.name, "version": model_folder.version,
            "emb_mode": emb_mode, "emb_layer": int(emb_layer), "layers_used": int(n_used),
            "input_size": model_folder.input_size, "gene_coverage": tok.alignment.summary(),
            "n_embedded": int(finite.sum()), "not_embedded": not_embedded, "embedding_dim": model_folder.hidden_size,
            "median_tokens": int(np.median(n_tokens[finite])) if finite.any() else 0}
    return out, info
