"""``embed_cells``: foundation-model embeddings into ``obsm``, cached per (data, backbone, settings)."""

from __future__ import annotations

import hashlib
import json
import time

import anndata as ad
import numpy as np

from scatd_core import _keys, matrices
from scatd_core._words import percent
from scatd_core.errors import CheckpointError, InputError
from scatd_core.foundation import geneformer, scfoundation

#: The module of each embedding backbone.
MODULES = {"vae_sf": scfoundation, "vae_gf": geneformer}
#: Options each backbone's embedding accepts (see :func:`embed_cells`), with their defaults.
OPTIONS = {"vae_sf": {"key": scfoundation.DEFAULT_KEY, "resolution": scfoundation.DEFAULT_RESOLUTION,
                      "max_genes": scfoundation.DEFAULT_MAX_GENES},
           "vae_gf": {"embedding_dim": None, "emb_mode": "cell", "emb_layer": -1}}
#: Seconds an embedding run costs besides the layers (finding the files, the model already loaded,
#: reading and tokenising the cells, storing the result): a floor that matters only for tiny runs.
RUN_OVERHEAD_S = 0.01


#: A foundation model's gene coverage is low when it knows fewer than this share of the data's genes
#: (a whole-transcriptome matrix with symbols or Ensembl IDs matches ~95% or more, an HVG subset as
#: well; wrong or unmapped identifiers match a few percent) ...
LOW_DATA_GENE_FRACTION = 0.5
#: ... or fewer than this many genes in all (each cell then reaches the model through a handful of
#: tokens, far from the thousands of expressed genes it saw in pre-training); for a model of fewer
#: than 1,000 genes (a test model), half its genes.
MIN_MATCHED_GENES = 500


def coverage_warning(backbone: str, coverage: dict) -> str | None:
    """A warning when the foundation model knows few of the data's genes (``coverage``: a
    :meth:`~scatd_core.genes.GeneAlignment.summary`), else ``None``."""
    n, n_data, n_model = (int(coverage.get(k) or 0) for k in ("n_matched", "n_data_genes", "n_model_genes"))
    if not n_data:
        return None
    share = n / n_data
    if share >= LOW_DATA_GENE_FRACTION and n >= min(MIN_MATCHED_GENES, n_model // 2):
        return None
    name = _module(backbone).NAME
    return (f"Low gene coverage: {name} knows only {n:,} of the data's {n_data:,} genes ({percent(share)}; "
            f"{n:,} of its {n_model:,}). The other genes are ignored, so the embeddings (and the predictions) "
            f"rest on few genes and may be unreliable. {IDENTIFIER_ADVICE[backbone]} Give the full gene matrix if "
            "you have it.")


#: What gene identifiers each foundation model reads, and how others reach it (the low-coverage warning).
IDENTIFIER_ADVICE = {
    "vae_sf": ("Check that the genes are human gene symbols (scFoundation reads symbols): Ensembl IDs match only "
               "once mapped to symbols, by the file's own symbol column, Geneformer's gene-name dictionary "
               "(gene_name_id_dict.pkl) on the server, or a BioMart table of 'Gene stable ID' and 'Gene name'."),
    "vae_gf": ("Check that the genes are human Ensembl IDs (Geneformer reads Ensembl IDs): symbols match only through "
               "Geneformer's gene-name dictionary (gene_name_id_dict.pkl) on the server, or a BioMart table of "
               "'Gene stable ID' and 'Gene name'."),
}


def coverage_of(alignment, backbone: str) -> dict:
    """The gene coverage of an alignment as stored and shown: its summary, the share of the data's
    genes the model knows, and the warning (``None`` when coverage is fine)."""
    return coverage_of_summary(alignment.summary(), backbone)


#: Layers that may hold a file's raw counts beside a normalised X, in the order they are tried
#: (then ``adata.raw``): :data:`scatd_core.matrices.COUNT_LAYERS`, the one rule of every backbone.
COUNT_LAYERS = matrices.COUNT_LAYERS


def counts_source(adata: ad.AnnData, backbone: str) -> tuple[ad.AnnData, dict]:
    """The expression a foundation model is given, as scATD made its embeddings: from raw counts.

    When X holds counts: ``adata`` itself. When X holds other values (log-normalised, TPM-like)
    and the file also has the cells' raw counts (``layers['counts']``, ``layers['raw_counts']``
    or ``adata.raw``): an AnnData of those counts (same cells, their genes, the foundation
    embeddings of ``obsm``), with a ``note``
    saying so. Otherwise ``adata``, with a ``warning`` for scFoundation on log-normalised values
    (Geneformer refuses them: :func:`~scatd_core.foundation.geneformer.tokenizer`).

    Returns ``(source, info)``; ``info`` (JSON-safe): ``matrix`` (``"X"``, ``"layers['counts']"``,
    ...), ``value_type`` (of X), and ``note`` / ``warning`` when there is one.
    """
    import pandas as pd

    from scatd_core.preprocess import detect_value_type

    report = adata.uns.get(_keys.INPUT_REPORT, {})
    kind = report.get("value_type") or detect_value_type(adata.X)["kind"]
    info = {"matrix": "X", "value_type": kind}
    # the matrix the foundation model suits best (the raw counts beside a normalised X), or the
    # user's choice: the rule of every model (scatd_core.matrices)
    choice = matrices.choose(adata, "foundation")
    if choice.name == "X":
        if kind == "counts":
            return adata, info
    else:
        c = choice.candidate
        name = _module(backbone).NAME
        source = ad.AnnData(X=c.matrix, obs=pd.DataFrame(index=adata.obs_names.copy()), var=c.var.copy())
        for key in _keys.FOUNDATION_EMBEDDING.values():  # the embeddings made so far (gene-level explanations)
            if key in adata.obsm:
                source.obsm[key] = adata.obsm[key]
        what = "raw counts" if c.kind == "counts" else f"{c.kind.replace('_', '-')} values"
        if choice.chosen_by_user:
            note = f"{name} is given the {what} in {c.where}, as you chose."
        else:
            note = (f"X holds {kind.replace('_', '-')} values, so {name} is given the {what} in {c.where} instead"
                    + (" (scATD made its embeddings from counts)." if c.kind == "counts" else "."))
        info.update(matrix=c.where, note=note)
        if c.kind == "counts":
            return source, info
        adata, kind = source, c.kind
    if backbone == "vae_sf" and kind == "log_normalized":
        given = f"{info['matrix']}, as you chose" if choice.chosen_by_user else info["matrix"]
        info["warning"] = (f"scFoundation was given log-normalised values ({given}), and "
                           + ("the file has no raw counts (layers['counts'] or adata.raw)" if not choice.chosen_by_user
                              else "not the raw counts")
                           + ": its total-count tokens then come from the sum of the log "
                           "values, so the embeddings, and some calls, differ from those made from the cells' counts, "
                           "as scATD made them. Give the raw counts for the embeddings scATD's models expect.")
    return adata, info


def gene_coverage(adata: ad.AnnData, backbone: str, **options) -> dict:
    """How many of ``adata``'s genes the installed foundation model knows (:func:`coverage_of`),
    before embedding; reads the model's gene list only (raises as :meth:`Probe.require` when the
    backbone is not installed)."""
    from scatd_core.genes import align_genes, names_for

    options = _options(backbone, options)
    state = probe(backbone, embedding_dim=options.get("embedding_dim"))
    state.require()
    adata = counts_source(adata, backbone)[0]
    if backbone == "vae_sf":
        genes = scfoundation.read_gene_list(state.files["gene_list"])
        return coverage_of(align_genes(names_for(adata, "symbol"), genes), backbone)
    folder = geneformer.choose_model(geneformer.model_folders(), options["embedding_dim"])
    vocab = geneformer.read_vocabulary(folder.version)
    # symbols without the name dictionary: that file is what to fix, not a coverage of 0 genes
    geneformer.require_names(adata, vocab, geneformer.geneformer_dir())
    return coverage_of(align_genes(geneformer.gene_ids(adata, vocab), vocab.genes), backbone)


def _module(backbone: str):
    if backbone not in MODULES:
        raise InputError(f"{backbone!r} has no foundation model; use 'vae_sf' (scFoundation) or 'vae_gf' (Geneformer).")
    return MODULES[backbone]


def _options(backbone: str, options: dict) -> dict:
    unknown = set(options) - set(OPTIONS[backbone])
    if unknown:
        raise InputError(f"Unknown {'option' if len(unknown) == 1 else 'options'} for {backbone}: "
                         f"{', '.join(sorted(unknown))}; "
                         f"known: {', '.join(OPTIONS[backbone])}.")
    return {**OPTIONS[backbone], **options}


def probe(backbone: str, *, embedding_dim: int | None = None):
    """The :class:`~scatd_core.foundation._assets.Probe` of one backbone's files (no weights loaded)."""
    if _module(backbone) is geneformer:
        return geneformer.probe(embedding_dim=embedding_dim)
    return scfoundation.probe()


def probe_all() -> list[dict]:
    """Both backbones' probes as JSON-safe dicts (what ``scatd doctor`` and the Model page show):
    ``backbone``, ``name``, ``available``, ``version``, ``embedding_dim``, ``location``,
    ``configured_by``, ``files``, ``problems`` (each ``code``, ``message``, ``hint``), ``details``."""
    from scatd_core.nn.models import PUBLISHED_SIZES

    return [probe(b, embedding_dim=PUBLISHED_SIZES[b][0][0] if b == "vae_gf" else None).to_dict() for b in MODULES]


#: Version of the data fingerprint; a record holding another (or none) is simply not reused.
FINGERPRINT_VERSION = "v2"
#: Rows hashed at once by :func:`fingerprint` (bounded memory on backed data).
FINGERPRINT_ROWS = 16_384


def _hash_x(X) -> str:
    """sha256 over every stored value of X, read by row blocks: for sparse data the row lengths,
    column indices and values (three streams, so the block size does not matter); for dense data
    the rows' bytes. One pass, memory bounded by one block (backed data are read from disk)."""
    import scipy.sparse as sp

    from scatd_core._matrix import is_backed_sparse, row_batches

    n = X.shape[0]
    lengths, indices, values = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    arrays = None
    if sp.issparse(X) and X.format == "csr":
        arrays = X.indptr, X.indices, X.data
    elif is_backed_sparse(X) and X.format == "csr":
        arrays = X.group["indptr"], X.group["indices"], X.group["data"]
    if arrays is not None:
        indptr, idx, data = arrays
        dtype = np.dtype(data.dtype)
        for a in range(0, n, FINGERPRINT_ROWS):
            b = min(a + FINGERPRINT_ROWS, n)
            ptr = np.asarray(indptr[a:b + 1], dtype=np.int64)
            lengths.update(np.diff(ptr).tobytes())
            indices.update(np.asarray(idx[ptr[0]:ptr[-1]], dtype=np.int32).tobytes())
            values.update(np.ascontiguousarray(data[ptr[0]:ptr[-1]]).tobytes())
        kind = f"sparse:{dtype.str}"
    else:
        kind = None
        for _, _, block in row_batches(X, FINGERPRINT_ROWS):
            if sp.issparse(block):  # CSC or another format: the same streams as CSR
                kind = f"sparse:{np.dtype(block.dtype).str}"
                lengths.update(np.diff(block.indptr).astype(np.int64).tobytes())
                indices.update(block.indices.astype(np.int32).tobytes())
                values.update(np.ascontiguousarray(block.data).tobytes())
            else:
                kind = f"dense:{block.dtype.str}"
                values.update(np.ascontiguousarray(block).tobytes())
    h = hashlib.sha256(f"{kind}|{X.shape[0]}x{X.shape[1]}".encode())
    for part in (lengths, indices, values):
        h.update(part.digest())
    return h.hexdigest()


def fingerprint(adata: ad.AnnData) -> str:
    """Identifies the expression a foundation model is given (:func:`counts_source`): cell and gene
    names and a hash of every stored value of that matrix (one pass by row blocks, ~1 GB/s; see
    :func:`_hash_x`). Of X as before; of the raw counts beside a normalised X (``layers['counts']``,
    ...) with the matrix's name too, so embeddings made from X are never reused for the counts, nor
    the other way round. Starts with :data:`FINGERPRINT_VERSION`."""
    source, given = counts_source(adata, "vae_sf")  # which matrix is embedded does not depend on the backbone
    h = hashlib.sha256()
    for names in (adata.obs_names, source.var_names):
        h.update("\x00".join(map(str, names)).encode("utf-8"))
        h.update(b"\x01")
    if given["matrix"] != "X":
        h.update(f"{given['matrix']}\x01".encode("utf-8"))
    h.update(_hash_x(source.X).encode())
    value = f"{FINGERPRINT_VERSION}:{h.hexdigest()[:32]}"
    _remember(adata, value)
    return value


#: The last fingerprint of each AnnData object of this process (``id`` -> (weak reference, guard,
#: fingerprint)), for :func:`cells_to_embed`, which the app calls on every page.
_MEMO: dict[int, tuple] = {}


def _guard(adata: ad.AnnData) -> tuple:
    """What must be unchanged for a remembered fingerprint to stand: the same X object, shape and
    buffers (a value changed in place inside the same buffers is not seen: :func:`cached`, which
    decides reuse, always hashes afresh)."""
    X = adata.X
    parts = [id(X), tuple(X.shape), adata.n_obs, adata.n_vars]
    # the raw counts beside X, which the fingerprint hashes instead of X when X is normalised
    parts += [(name, id(adata.layers[name])) for name in COUNT_LAYERS if name in adata.layers]
    parts += [str(adata.uns.get(_keys.MATRIX, "auto"))]  # the user's choice of matrix
    raw = getattr(adata, "raw", None)
    parts += [None if raw is None else (id(raw), tuple(raw.shape))]
    for name in ("data", "indices", "indptr"):
        arr = getattr(X, name, None)
        if isinstance(arr, np.ndarray):
            parts += [id(arr), arr.size, arr.ctypes.data]
    if isinstance(X, np.ndarray):
        parts += [X.ctypes.data]
    return tuple(parts)


def _remember(adata: ad.AnnData, value: str) -> None:
    import weakref

    try:
        ref = weakref.ref(adata)
    except TypeError:
        return
    for key in [k for k, (r, _, _) in _MEMO.items() if r() is None]:
        del _MEMO[key]
    _MEMO[id(adata)] = (ref, _guard(adata), value)


def _remembered_fingerprint(adata: ad.AnnData) -> str:
    entry = _MEMO.get(id(adata))
    if entry is not None and entry[0]() is adata and entry[1] == _guard(adata):
        return entry[2]
    return fingerprint(adata)


def matching_record(adata: ad.AnnData, backbone: str, *, fingerprint_of=None) -> dict | None:
    """The stored record of ``backbone``'s embeddings when it was made for these data (one entry
    per cell in ``tried``, the same data fingerprint, the embeddings in ``obsm``), whatever the
    settings; ``None`` otherwise (e.g. a subset of an annotated h5ad, which keeps ``uns`` as it was)."""
    record = adata.uns.get(_keys.FOUNDATION, {}).get(backbone)
    if record is None or _keys.FOUNDATION_EMBEDDING[backbone] not in adata.obsm:
        return None
    tried = np.asarray(record.get("tried", ()))
    if tried.shape != (adata.n_obs,):
        return None
    if record.get("fingerprint") != (fingerprint_of or fingerprint)(adata):
        return None
    return record


_SAMPLES: dict[tuple, str] = {}
#: Bytes read from each place of a model file for its content identity.
SAMPLE_BYTES = 1 << 20
#: Places read between the first and the last MB.
SAMPLE_PLACES = 16


def _sample(path, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of a model file's first and last MB and of :data:`SAMPLE_PLACES` 64 kB blocks spread
    between them (the whole file when it is small): weights replaced by others of the same size
    and layout differ there, and it reads ~3 MB whatever the file's size."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 3 * SAMPLE_BYTES:
            h.update(fh.read())
        else:
            offsets = [0] + [int(o) for o in np.linspace(SAMPLE_BYTES, size - SAMPLE_BYTES - (64 << 10),
                                                          SAMPLE_PLACES)] + [size - SAMPLE_BYTES]
            for i, offset in enumerate(offsets):
                fh.seek(offset)
                h.update(fh.read(SAMPLE_BYTES if i in (0, len(offsets) - 1) else 64 << 10))
    value = h.hexdigest()[:32]
    _SAMPLES[(str(path), size, mtime_ns, inode)] = value
    return value


def file_identity(path) -> list:
    """``[name, size, sampled sha256]`` of a model file (:func:`_sample`; remembered per path,
    size, mtime and inode, so a run reads each file once)."""
    from pathlib import Path

    path = Path(path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    return [path.name, st.st_size, _SAMPLES.get(key) or _sample(path, *key[1:])]


def _identity(backbone: str, options: dict) -> dict:
    """The settings and the model files an embedding depends on (name, size and a content hash of
    each file, :func:`file_identity`)."""
    from pathlib import Path

    state = probe(backbone, embedding_dim=options.get("embedding_dim"))
    state.require()
    files = {k: file_identity(p) for k, p in state.files.items() if Path(p).is_file()}
    return {"options": {k: v for k, v in options.items()}, "version": state.version, "files": files}


def cached(adata: ad.AnnData, backbone: str, **options) -> dict | None:
    """The stored record of ``backbone``'s embeddings when they match these data and settings."""
    record = matching_record(adata, backbone)
    if record is None:
        return None
    same = json.loads(record.get("identity", "{}")) == _identity(backbone, _options(backbone, options))
    return record if same else None


def embed_cells(adata: ad.AnnData, backbone: str, *, mask: np.ndarray | None = None, device: str = "auto",
                batch_tokens: int | None = None, progress=None, should_stop=None, recompute: bool = False,
                **options) -> dict:
    """Compute scFoundation (``'vae_sf'``) or Geneformer (``'vae_gf'``) cell embeddings from expression.

    Parameters
    ----------
    adata
        Cells x genes: raw counts (scFoundation also takes log-normalised values; with counts in
        ``layers['counts']`` or ``adata.raw`` beside a normalised X those are used,
        :func:`counts_source`), genes as
        symbols or Ensembl IDs (matched by name; see :mod:`scatd_core.foundation.scfoundation`
        and :mod:`~scatd_core.foundation.geneformer`).
    backbone
        ``"vae_sf"`` or ``"vae_gf"``.
    mask
        Cells to embed (e.g. the QC mask); the others keep NaN rows. Cells already embedded with
        the same data and settings are not recomputed (the cache is the AnnData itself).
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    batch_tokens
        Tokens per forward pass (default 8,192 on a CPU, 65,536 on CUDA).
    progress, should_stop
        ``progress(fraction, message)`` (the message carries the time left);
        ``should_stop()`` polled between batches raises :class:`~scatd_core.errors.Cancelled`.
    recompute
        Ignore stored embeddings.
    **options
        scFoundation: ``key`` (``"rde"``), ``resolution`` (``"a5"``), ``max_genes`` (8,000).
        Geneformer: ``embedding_dim`` (choose the model folder by its size), ``emb_mode``
        (``"cell"`` or ``"cls"``), ``emb_layer`` (-1: second-to-last layer).

    Returns
    -------
    The record stored in ``uns`` (below). Sets the following fields:

    - ``adata.obsm['X_scfoundation' | 'X_geneformer']``: float32 embeddings, NaN rows for cells
      not embedded (outside ``mask``, or without an expressed gene of the model, see ``info``);
    - ``adata.uns['scatd_foundation'][backbone]``: model, settings, gene coverage, cells
      embedded and not embedded (by reason), device and time, and the data fingerprint the
      cache is checked against.
    """
    module = _module(backbone)
    options = _options(backbone, options)
    n = adata.n_obs
    wanted = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if wanted.shape != (n,):
        raise InputError(f"The mask has {wanted.size} entries for {n} cells.")
    key = _keys.FOUNDATION_EMBEDDING[backbone]
    record = None if recompute else cached(adata, backbone, **options)
    tried = np.asarray(record["tried"], dtype=bool) if record is not None else np.zeros(n, dtype=bool)
    todo = wanted & ~tried
    if record is not None and not todo.any():
        return record
    t0 = time.perf_counter()
    source, given = counts_source(adata, backbone)
    faulty: dict = {}
    new, info = module.embed(source, todo, device=device, batch_tokens=batch_tokens, progress=progress,
                             should_stop=should_stop, faulty=faulty, **options)
    # a model other than the published one (said before embedding): kept with the embeddings, for each prediction
    info = {**info, "expression": given,
            "model_warnings": list(probe(backbone, embedding_dim=options.get("embedding_dim")).embedding_warnings)}
    if record is not None:
        matrix = np.array(adata.obsm[key], dtype=np.float32)
        matrix[todo] = new[todo]
        seconds = float(record["seconds"])
        for reason, rows in faulty_rows_of(record).items():  # the cells embedded before keep their reasons
            rows = rows[~todo[rows]]
            faulty[reason] = np.union1d(rows, faulty.get(reason, np.zeros(0, dtype=np.int64)))
    else:
        matrix, seconds = new, 0.0
    return store_embeddings(adata, backbone, matrix, info, _identity(backbone, options), tried | todo, device,
                            seconds + time.perf_counter() - t0, faulty=faulty)


#: The key of a record (``uns['scatd_foundation'][backbone]``) holding the rows of the cells not
#: embedded for values no expression has (NaN, infinite, negative), by reason.
FAULTY_ROWS = "not_embedded_rows"


def faulty_rows_of(record: dict | None) -> dict[str, np.ndarray]:
    """``{reason: rows}`` of the cells a record left out for NaN, infinite or negative values
    (:data:`FAULTY_ROWS`; empty for records made before they were kept)."""
    stored = (record or {}).get(FAULTY_ROWS) or {}
    return {str(k): np.asarray(v, dtype=np.int64).ravel() for k, v in stored.items()}


def faulty_reasons(adata: ad.AnnData, backbone: str) -> dict[str, np.ndarray]:
    """``{reason: rows}`` of ``adata``'s cells that ``backbone``'s stored embeddings left out for
    NaN, infinite or negative values (:func:`faulty_rows_of`), when the record was made for as
    many cells as ``adata`` has (a subset of an annotated file keeps ``uns`` as it was); else
    empty. :class:`~scatd_core.inputs.ModelInput` counts such cells under these reasons instead
    of "no embedding"."""
    record = adata.uns.get(_keys.FOUNDATION, {}).get(backbone)
    if not isinstance(record, dict) or np.asarray(record.get("tried", ())).shape != (adata.n_obs,):
        return {}
    return {k: v[(v >= 0) & (v < adata.n_obs)] for k, v in faulty_rows_of(record).items()}


def not_embedded_text(backbone: str, reason: str) -> str:
    """Why cells have no embedding, in words, for a reason of ``info['not_embedded']``."""
    from scatd_core.foundation._work import NON_FINITE_OUTPUT
    from scatd_core.inputs import REASON_TEXT

    module = _module(backbone)
    if reason == NON_FINITE_OUTPUT:
        return f"{module.NAME} produced non-finite values: {REASON_TEXT['non_finite_embedding']}"
    return module.NOT_EMBEDDED.get(reason, reason.replace("_", " "))


def store_embeddings(adata, backbone: str, matrix: np.ndarray, info: dict, identity: dict, tried: set, device: str,
                     seconds: float, faulty: dict | None = None) -> dict:
    """Put the embeddings in ``obsm`` and their record (what made them, which cells were tried, how
    long it took) in ``uns['scatd_foundation']``, as one process and the Ray engine both store them.
    ``faulty``: the rows of the cells left out for NaN, infinite or negative values, by reason
    (kept under :data:`FAULTY_ROWS`, so the prediction names them)."""
    from scatd_core.predict import device_description, resolve_device

    adata.obsm[_keys.FOUNDATION_EMBEDDING[backbone]] = matrix
    if info.get("gene_coverage"):
        info = {**info, "gene_coverage": coverage_of_summary(info["gene_coverage"], backbone)}
    record = {"backbone": backbone, "info": info, "identity": json.dumps(identity, sort_keys=True),
              "fingerprint": _remembered_fingerprint(adata), "tried": tried,
              "n_embedded": int(np.isfinite(matrix).all(axis=1).sum()),
              "device": device_description(resolve_device(device)), "seconds": round(seconds, 3)}
    faulty = {k: np.asarray(v, dtype=np.int64) for k, v in (faulty or {}).items() if len(v)}
    if faulty:
        record[FAULTY_ROWS] = faulty
    stored = dict(adata.uns.get(_keys.FOUNDATION, {}))
    stored[backbone] = record
    adata.uns[_keys.FOUNDATION] = stored
    return record


def coverage_of_summary(coverage: dict, backbone: str) -> dict:
    """An alignment summary with the share of the data's genes and the warning added."""
    cov = dict(coverage)
    n_data = int(cov.get("n_data_genes") or 0)
    cov["fraction_of_data_genes"] = round(int(cov.get("n_matched") or 0) / n_data, 4) if n_data else 0.0
    cov["warning"] = coverage_warning(backbone, cov)
    return cov


def embeddings_summary(adata: ad.AnnData, backbone: str) -> dict:
    """How the cells' foundation-model embeddings were made, flat and JSON-safe, for the
    prediction record, ``metrics.csv`` (section ``embeddings``) and the report: the model and its
    version, the settings (scFoundation's key, resolution and gene cap; Geneformer's mode and
    layer), what it was given, the gene coverage, the cells embedded and not embedded (by reason),
    the device and time, and each model file (name, size, sha256 of samples of it)."""
    record = adata.uns.get(_keys.FOUNDATION, {}).get(backbone)
    if not record:
        return {"source": "given with the data (not computed by scATD Studio)"}
    info, identity = record.get("info") or {}, json.loads(record.get("identity") or "{}")
    out = {"source": "computed by scATD Studio", "model": info.get("model"), "version": identity.get("version")}
    out.update({k: v for k, v in (identity.get("options") or {}).items() if v is not None})
    given = info.get("expression") or {}
    out["values_given"] = given.get("matrix", "X")
    out["values"] = info.get("values")
    cov = info.get("gene_coverage") or {}
    for k in ("n_matched", "n_data_genes", "fraction_of_data_genes", "n_model_genes", "fraction_matched"):
        if k in cov:
            out[f"genes: {k}"] = cov[k]
    out["cells embedded"] = record.get("n_embedded")
    for reason, n in (info.get("not_embedded") or {}).items():
        out[f"cells not embedded: {reason}"] = int(n)
    out["device"], out["seconds"] = record.get("device"), record.get("seconds")
    for k, (name, size, sha) in (identity.get("files") or {}).items():
        out[f"file: {k}"] = f"{name} ({int(size):,} bytes, sampled sha256 {sha})"
    return {k: v for k, v in out.items() if v is not None}


def _is_expression(adata: ad.AnnData) -> bool:
    from scatd_core.genes import detect_id_type

    return detect_id_type(adata.var_names) in ("symbol", "ensembl", "mixed", "mouse_symbol")


def needs_embedding(adata: ad.AnnData, bundle) -> bool:
    """Whether ``bundle`` (VAE_sf/VAE_gf) needs embeddings computed from ``adata``'s expression: the
    data carry genes, not embeddings given by the user (``obsm`` or ``X`` by position)."""
    if bundle.input_kind != "embedding":
        return False
    key = _keys.FOUNDATION_EMBEDDING[bundle.backbone]
    record = adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone)
    if key in adata.obsm and record is None and wrong_width(adata, bundle) is None:
        return False  # embeddings the user brought (of another width, an expression file's are computed anew)
    if key not in adata.obsm and not _is_expression(adata) and record is None:
        return False  # an embedding file (X by position; of another size, ModelInput says so)
    return True


def wrong_width(adata: ad.AnnData, bundle) -> int | None:
    """The width of the embeddings stored in an expression file (``obsm['X_scfoundation' |
    'X_geneformer']``, not computed here) when it is not the width ``bundle`` takes, else ``None``:
    such embeddings are not used, and the file's genes give them anew (:func:`stored_width_note`)."""
    key = _keys.FOUNDATION_EMBEDDING.get(bundle.backbone)
    if key not in adata.obsm or adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone) is not None:
        return None
    width = int(np.shape(adata.obsm[key])[1]) if np.ndim(adata.obsm[key]) == 2 else 0
    if width == bundle.architecture.input_dim or not _is_expression(adata):
        return None
    return width


def stored_width_note(adata: ad.AnnData, bundle, installed: bool = True) -> str | None:
    """What happens to embeddings of the wrong width stored in an expression file
    (:func:`wrong_width`): not used, computed from the file's genes instead (``installed``: the
    backbone is installed here; else they cannot be); ``None`` when there are none. Said by the
    CLI and the app before embedding, and kept with the prediction."""
    width = wrong_width(adata, bundle)
    if width is None:
        return None
    key, name = _keys.FOUNDATION_EMBEDDING[bundle.backbone], _module(bundle.backbone).NAME
    dim = bundle.architecture.input_dim
    said = f"The file's obsm['{key}'] holds {width:,}-d embeddings, but {bundle.name} takes {dim:,}-d {name} embeddings"
    if not installed:
        return f"{said}, so they cannot be used; and {name} is not ready here to compute them from the file's genes."
    return (f"{said}, so they are not used: the {name} embeddings are computed from the file's genes instead "
            "(and replace them in the annotated h5ad).")


def check_size(bundle) -> None:
    """Raise when the installed foundation model's embedding size differs from the drug model's input."""
    dim = bundle.architecture.input_dim
    state = probe(bundle.backbone, embedding_dim=dim)
    try:
        state.require()
    except CheckpointError as exc:  # not installed here: embeddings made elsewhere do as well
        key = _keys.FOUNDATION_EMBEDDING[bundle.backbone]
        raise CheckpointError(
            exc.message,
            f"{exc.hint or ''} Or bring the cells' {dim:,}-d {state.name} embeddings computed elsewhere: a .npy "
            f"(cells x features) as --input, or an h5ad with them in obsm['{key}'].".strip(),
            app_hint=f"{exc.hint or ''} Or upload the cells' {dim:,}-d {state.name} embeddings computed elsewhere "
                     f"on the Data page: a .npy (cells x features), or an h5ad with them in obsm['{key}'].".strip(),
        ) from None
    if state.embedding_dim != dim:
        raise CheckpointError(f"The installed {state.name} gives {state.embedding_dim}-d embeddings, but {bundle.name} "
                              f"takes {dim}-d ones.", f"Install the {state.name} model the drug model was trained on.")


def stored_without_backbone(adata: ad.AnnData, bundle, *, mask: np.ndarray | None = None, **options) -> dict | None:
    """The embeddings stored with the data, when ``bundle``'s foundation model is not installed here
    but every wanted cell already has its embedding: the stored record matches these data
    (:func:`matching_record`), was made with these settings and the drug model's embedding size,
    and tried every cell of ``mask``. Returns a copy of the record with a ``note`` saying what
    computed them (for the CLI and the app alike), else ``None`` (the backbone is installed: the
    usual cache check applies; or the embeddings are not all there)."""
    backbone, dim = bundle.backbone, bundle.architecture.input_dim
    state = probe(backbone, embedding_dim=dim)
    if state.available:
        return None
    record = matching_record(adata, backbone)
    if record is None or adata.obsm[_keys.FOUNDATION_EMBEDDING[backbone]].shape[1] != dim:
        return None
    wanted = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if (wanted & ~np.asarray(record["tried"], dtype=bool)).any():
        return None
    if backbone == "vae_gf":
        options.setdefault("embedding_dim", dim)
    identity = json.loads(record.get("identity", "{}"))
    made_with = identity.get("options", {})
    if any(made_with.get(k) != v for k, v in _options(backbone, options).items()):
        return None
    return {**record, "note": stored_note(record, state.name)}


def stored_note(record: dict, name: str) -> str:
    """What a record says made its embeddings, for a run that uses them without the backbone."""
    identity = json.loads(record.get("identity", "{}"))
    settings = ", ".join(f"{k} {v}" for k, v in identity.get("options", {}).items() if v is not None)
    made = str(identity.get("version") or name).split(";")[0]
    return (f"{name} is not installed here: using the {name} embeddings stored with the data "
            f"({int(record.get('n_embedded', 0)):,} cells, computed by {made} with {settings or 'its defaults'}, "
            f"on {record.get('device', '?')}).")


def ensure_embeddings(adata: ad.AnnData, bundle, *, mask: np.ndarray | None = None, device: str = "auto",
                      progress=None, should_stop=None, **options) -> dict | None:
    """Make ``adata`` carry the embeddings a VAE_sf/VAE_gf ``bundle`` reads, computing them from the
    expression when needed (:func:`needs_embedding`); a no-op for Dist_VAE and for data that
    already are embeddings. The hook the CLI and the app call before
    :class:`~scatd_core.inputs.ModelInput`.

    Returns the :func:`embed_cells` record, or ``None`` when nothing was needed. When it computes,
    it sets the fields :func:`embed_cells` sets (``obsm['X_scfoundation' | 'X_geneformer']``,
    ``uns['scatd_foundation']``). Raises :class:`~scatd_core.errors.CheckpointError` when the
    foundation model is not installed (the probe's first problem and what to do) or gives
    embeddings of another size than the drug model takes.
    """
    if not needs_embedding(adata, bundle):
        return None
    if bundle.backbone == "vae_gf":
        options.setdefault("embedding_dim", bundle.architecture.input_dim)
    stored = stored_without_backbone(adata, bundle, mask=mask, **options)
    if stored is not None:
        return stored
    note = stored_width_note(adata, bundle)
    try:
        check_size(bundle)
    except CheckpointError as exc:
        if note is None:
            raise
        raise CheckpointError(f"{stored_width_note(adata, bundle, installed=False)[:-1]}: {exc.message}", exc.hint,
                              app_hint=exc.app_hint) from None
    record = require_some_finite(embed_cells(adata, bundle.backbone, mask=mask, device=device, progress=progress,
                                             should_stop=should_stop, **options), bundle.backbone)
    if note is not None:  # kept with the embeddings' record, so the prediction records it too
        record["info"] = {**record["info"], "notes": [note]}
        adata.uns[_keys.FOUNDATION] = {**adata.uns[_keys.FOUNDATION], bundle.backbone: record}
    return record


def require_some_finite(record: dict, backbone: str) -> dict:
    """``record``, unless every cell that went through the backbone came out non-finite: then the
    model files are at fault (damaged weights, or a half-precision overflow), and a
    :class:`~scatd_core.errors.CheckpointError` says so rather than that no cell can be scored."""
    from scatd_core.foundation._work import NON_FINITE_OUTPUT

    failed = int(record["info"].get("not_embedded", {}).get(NON_FINITE_OUTPUT, 0))
    if failed and not int(record["n_embedded"]):
        name = _module(backbone).NAME
        raise CheckpointError(f"{name} produced non-finite values (NaN or infinite) for all {failed:,} cells that had "
                              "expressed genes: the fault is in the model, not in your data.",
                              f"Check or re-install the {name} files (its weights are likely damaged); on a GPU in "
                              "half precision a value may have overflowed: try the CPU.")
    return record


#: The problems that leave only the weights missing: the cost can then be estimated from the
#: published model's size (:func:`estimate_seconds` ``published_if_absent``).
ONLY_WEIGHTS_MISSING = {"vae_sf": {"missing_weights"}, "vae_gf": {"missing_model"}}


def estimate_seconds(adata: ad.AnnData, backbone: str, *, mask: np.ndarray | None = None, device: str = "auto",
                     published_if_absent: bool = False, **options) -> dict:
    """How much work :func:`embed_cells` has left, before running it.

    Returns ``{"n_cells", "n_tokens", "seconds", "device", "gene_coverage", "expression"}``: the cells still to
    embed, their tokens, the expected time, how many of the data's genes the model knows
    (:func:`coverage_of`, with its low-coverage warning), and what it is given (:func:`counts_source`).
    Reads the data once (token counts), loads no weights.

    The time: the cells are grouped into the batches the embedding will run (length-sorted, padded
    to the longest), and one layer of the backbone's real shape (hidden size, heads, feed-forward
    size; random weights) is timed on this device on the costliest of them, cut to a small batch
    (:func:`scatd_core.foundation._work.layer_time_model`: cached per process and shape, well under
    0.5 s). An estimate from a generic matrix-product rate was 4-15x off: attention, layer norms and
    the layer's own calls run far below that rate.

    ``published_if_absent``: when only the weights (scFoundation) or the model folder (Geneformer)
    are missing, the layer timed has the published model's size (scATD's: scFoundation's 12 x 768
    encoder, Geneformer ``gf-12L-30M-i2048``), and ``assumed`` says so; the cells' tokens still
    come from the gene list or dictionaries on the server, so without those it raises as
    :meth:`Probe.require`.
    """
    from scatd_core.foundation import _work
    from scatd_core.predict import device_description, resolve_device

    options = _options(backbone, options)
    dev = resolve_device(device)
    wanted = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    record = cached(adata, backbone, **options)
    if record is not None:
        wanted &= ~np.asarray(record["tried"], dtype=bool)
    state = probe(backbone, embedding_dim=options.get("embedding_dim"))
    assumed = None
    if published_if_absent and state.problems and {p.code for p in state.problems} <= ONLY_WEIGHTS_MISSING[backbone]:
        model = ("scFoundation encoder (12 layers x 768)" if backbone == "vae_sf" else
                 f"{geneformer.VAE_GF_MODEL} (12 layers x 512)")
        assumed = f"the published {model}'s size: its weights are not installed"
    else:
        state.require()
    adata, given = counts_source(adata, backbone)
    if backbone == "vae_sf":
        cfg = (scfoundation.ScFoundationConfig() if assumed else
               scfoundation.ScFoundationConfig.from_dict(state.details["config"]))
        p = scfoundation.plan(adata, wanted, scfoundation.read_gene_list(state.files["gene_list"]),
                              options["resolution"], options["max_genes"])
        tokens = (p.n_expressed + 2)[p.embed]
        alignment = p.prepared.alignment
        n_layers, hidden = cfg.depth, cfg.hidden_dim
        key = ("scfoundation", cfg.hidden_dim, cfg.heads, cfg.ff_mult, cfg.norm_first)

        def make_layer():
            import torch

            return torch.nn.TransformerEncoderLayer(cfg.hidden_dim, cfg.heads, cfg.hidden_dim * cfg.ff_mult,
                                                    dropout=0.0, batch_first=True, norm_first=cfg.norm_first)

        def layer_flops(cells, length):  # as scfoundation.flops_per_cell, one layer: (linear, attention)
            h = cfg.hidden_dim
            return cells * 2.0 * (4 * h * h + 2 * cfg.ff_mult * h * h) * length, cells * 4.0 * h * length * length

        def no_padding(cells, length):
            import torch

            return torch.zeros(cells, length, dtype=torch.bool)

        call = {"src_key_padding_mask": no_padding}
    else:
        folder = (geneformer.published_folder(geneformer.VAE_GF_MODEL) if assumed else
                  geneformer.choose_model(geneformer.model_folders(), options["embedding_dim"]))
        vocab = geneformer.read_vocabulary(folder.version)
        geneformer.require_names(adata, vocab, geneformer.geneformer_dir())  # as embed: the missing file, not "no gene known"
        tok = geneformer.tokenizer(adata, vocab, folder.input_size)
        tokens = geneformer.cell_plan(tok, adata.X, wanted)[0]
        tokens = tokens[tokens > 0]
        alignment = tok.alignment
        n_layers, hidden, config = folder.n_layers + options["emb_layer"], folder.hidden_size, folder.config
        key = ("geneformer", hidden, config.get("num_attention_heads"), config.get("intermediate_size"),
               config.get("hidden_act"))

        def make_layer():
            import sys

            tf = geneformer.transformers_module()
            bert_config = tf.BertConfig.from_dict(config)
            bert_config._attn_implementation = "sdpa"  # as BertModel picks on its own (a lone layer does not)
            return sys.modules[tf.BertModel.__module__].BertLayer(bert_config)

        def layer_flops(cells, length):  # as geneformer.flops_per_cell, one layer: (linear, attention)
            h, inner = hidden, int(config["intermediate_size"])
            return cells * 2.0 * (4 * h * h + 2 * h * inner) * length, cells * 4.0 * h * length * length

        call = {}
    shapes = _work.batch_shapes(tokens, _work.batch_tokens(dev))
    seconds = (n_layers * _work.layer_time_model(make_layer, key, layer_flops, shapes, hidden, dev, **call)
               + (RUN_OVERHEAD_S if tokens.size else 0.0))
    return {"n_cells": int(tokens.size), "n_tokens": int(tokens.sum()), "seconds": seconds,
            "device": device_description(dev), "gene_coverage": coverage_of(alignment, backbone),
            "expression": given, **({"assumed": assumed} if assumed else {})}


def cells_to_embed(adata: ad.AnnData, bundle, mask: np.ndarray | None = None) -> int:
    """How many cells (of ``mask``) still need an embedding before ``bundle`` can predict (0 when the
    data carry their own embeddings, or for Dist_VAE). Reads no model file; a stored record counts
    only when it was made for these data (:func:`matching_record`; the data fingerprint is
    remembered per AnnData object, so the app's pages do not hash X again)."""
    if not needs_embedding(adata, bundle):
        return 0
    wanted = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    record = matching_record(adata, bundle.backbone, fingerprint_of=_remembered_fingerprint)
    if record is not None:
        wanted = wanted & ~np.asarray(record["tried"], dtype=bool)
    return int(wanted.sum())


def explain_seconds(adata: ad.AnnData, backbone: str, *, n_cells: int, n_steps: int = 50, n_genes: int = 100) -> float | None:
    """Expected time of :func:`~scatd_core.foundation.explain_genes`, from the speed the embeddings
    were computed at here: integrated gradients cost about 3 passes (forward and backward) per
    step and cell, deletion one pass per candidate gene a cell holds. ``None`` before any embedding."""
    record = adata.uns.get(_keys.FOUNDATION, {}).get(backbone)
    if record is None or not record.get("n_embedded"):
        return None
    per_cell = float(record["seconds"]) / int(record["n_embedded"])
    passes = 3 * n_steps if backbone == "vae_sf" else n_genes + 1
    return per_cell * passes * n_cells
