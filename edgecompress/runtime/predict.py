"""``edgecompress predict MODEL.onnx DATA...``: top-k classes for an .npz or image files.

numpy + onnxruntime + onnx only — never torch, directly or through another edgecompress
module — so it runs on an edge board (tested with torch made unimportable). Pillow is optional:
PGM/PPM are parsed here; PNG/JPEG/... need Pillow.

The input size and scaling come from the file's metadata (``input.shape``,
``input.normalization``, ``classes``, written by ``edgecompress export``) or, for any other ONNX
classifier, from the graph input. Images are decoded to [0, 1] (8-bit / 255, 16-bit / 65535),
resized with an antialiased bilinear (triangle) filter in numpy (same result with or without
Pillow) and laid out NCHW (or, for a model that records it in ``input.preprocess``, by that
recipe: edgecompress.runtime.imageprep); .npz arrays ``x`` follow the training convention (uint8 / 255, float
as is) and must already have the model's sample shape.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import BadInput, one_line
from edgecompress.runtime.imageprep import META_KEY, ImagePrep, read_image, read_pnm, resize
from edgecompress.runtime.session import check_model_file, make_session

__all__ = ["predict", "read_pnm", "resize", "format_table"]

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8}  # fmt: skip


@dataclass(frozen=True)
class ModelInput:
    name: str
    dtype: Any  # numpy dtype fed to the session
    dims: tuple[int | None, ...]  # per-sample dims (no batch); None = symbolic / unknown
    batch: int | None  # fixed batch size of the graph, None = dynamic
    shape_from: str  # graph | metadata | --input-shape
    normalization: str
    classes: tuple[str, ...] | None
    prep: ImagePrep | None = None  # the run's image preprocessing (metadata input.preprocess), if recorded


def open_model(path: Path, threads: int = 1):
    """(session, metadata) for a checked ONNX file; BadInput for anything unusable."""
    check_model_file(path)
    try:
        sess = make_session(path, threads)
    except Exception as e:
        raise BadInput(f"{path}: onnxruntime cannot load it ({one_line(e)}); re-export the model") from None
    return sess, dict(sess.get_modelmeta().custom_metadata_map)


def model_input(sess, meta: dict[str, str], input_shape: list[int] | None = None) -> ModelInput:
    inp = sess.get_inputs()[0]
    if inp.type not in _NP_TYPES:
        raise BadInput(f"the model's input {inp.name!r} is {inp.type}; predict feeds float or uint8 tensors only")
    graph = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
    if not graph:
        raise BadInput(f"the model's input {inp.name!r} is a scalar; predict needs a batched input")
    dims, source = list(graph[1:]), "graph"
    try:
        md = json.loads(meta["input.shape"]) if "input.shape" in meta else None
    except ValueError:
        md = None
    if isinstance(md, list) and len(md) == len(graph) and all(isinstance(v, int) and v > 0 for v in md):
        if any(d is None for d in dims):
            source = "metadata"
        dims = [g if g is not None else m for g, m in zip(dims, md[1:], strict=True)]
    if input_shape:
        want = list(input_shape)
        if len(want) == len(graph):
            want = want[1:]
        if len(want) != len(dims) or any(g is not None and g != w for g, w in zip(graph[1:], want, strict=True)):
            raise BadInput(f"--input-shape {','.join(map(str, input_shape))} does not fit the model input "
                           f"{_fmt_dims(inp.shape)}; give N,C,H,W with the model's fixed dims")
        dims, source = want, "--input-shape"
    classes = None
    if "classes" in meta:
        try:
            c = json.loads(meta["classes"])
            classes = tuple(str(v) for v in c) if isinstance(c, list) and c else None
        except ValueError:
            classes = None
    prep = ImagePrep.from_meta(meta[META_KEY]) if META_KEY in meta else None
    return ModelInput(inp.name, _NP_TYPES[inp.type], tuple(dims), graph[0], source,
                      meta.get("input.normalization", "float32 in [0,1]: uint8 pixels / 255 (assumed)"), classes, prep)


# --- inputs ----------------------------------------------------------------------------------


def load_data(items: list[str], mi: ModelInput) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(source names, float32 batch in the model's sample shape, labels or None)."""
    names: list[str] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray | None] = []
    for item in items:
        p = Path(item)
        if not p.is_file():
            raise BadInput(f"{item}: no such file; pass an .npz with array x or image files")
        if p.suffix.lower() == ".npz":
            x, y = _load_npz(p, mi)
            names += [f"{item}[{i}]" for i in range(len(x))]
            xs.append(x)
            ys.append(y)
        else:
            xs.append(_load_image(p, mi)[None])
            names.append(item)
            ys.append(None)
    x = np.concatenate(xs).astype(np.float32, copy=False)
    labelled = all(y is not None for y in ys)
    return names, x, (np.concatenate(ys) if labelled else None)


def _load_npz(p: Path, mi: ModelInput) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files:
                raise BadInput(f"{p} has no array 'x' (found {sorted(z.files)}); save the samples as x")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except BadInput:
        raise
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise BadInput(f"cannot read {p} as .npz ({one_line(e)}); write it with numpy.savez") from None
    if x.ndim == 0 or len(x) == 0:
        raise BadInput(f"{p}: x is empty; it needs at least one sample")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise BadInput(f"{p}: x contains NaN or infinite values; clean the data first")
    else:
        raise BadInput(f"{p}: x has dtype {x.dtype}; use uint8 (scaled by 1/255) or float")
    if len(mi.dims) == 3 and x.ndim == 3:
        x = x[:, None]  # N,H,W -> N,1,H,W
    if x.ndim != len(mi.dims) + 1 or any(d is not None and d != s for d, s in zip(mi.dims, x.shape[1:], strict=True)):
        raise BadInput(f"{p}: samples have shape {tuple(x.shape[1:])} but the model takes "
                       f"{_fmt_dims(mi.dims)}; reshape/resize x (images are resized automatically)")
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            y = None  # labels are optional here: used only for an accuracy line
    return x, y


def _load_image(p: Path, mi: ModelInput) -> np.ndarray:
    if mi.prep is not None:  # the run's own preprocessing: the same sample as its evaluation
        return mi.prep.load(p)
    if len(mi.dims) != 3:
        raise BadInput(f"{p}: images need a model with an N,C,H,W input; this one takes "
                       f"{_fmt_dims(mi.dims)} (pass an .npz with array x)")
    c, h, w = mi.dims
    if c not in (1, 3):
        raise BadInput(f"{p}: the model takes {c} channels; images give 1 (gray) or 3 (RGB): pass an .npz")
    if h is None or w is None:
        raise BadInput(f"the model's input size is symbolic ({_fmt_dims(mi.dims)}); pass --input-shape N,C,H,W")
    img = read_image(p)  # H x W x channels, float in [0, 1]
    img = _match_channels(img, c, p)
    return resize(img, h, w).transpose(2, 0, 1)


def _match_channels(img: np.ndarray, c: int, p: Path) -> np.ndarray:
    have = img.shape[2]
    if have == c:
        return img
    if c == 1 and have == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return img[..., :1]  # a gray image stored as RGB: nothing is lost
    kind = {1: "gray (1 channel)", 3: "RGB (3 channels)"}
    raise BadInput(f"{p} is {kind.get(have, f'{have} channels')} but the model takes {kind.get(c, c)}; "
                   f"convert the image to {'grayscale' if c == 1 else 'RGB'} first")


# --- running ---------------------------------------------------------------------------------


def _to_model_dtype(x: np.ndarray, dtype) -> np.ndarray:
    if dtype is np.uint8:
        return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return x.astype(dtype, copy=False)


def run_model(sess, mi: ModelInput, x: np.ndarray, batch: int) -> np.ndarray:
    step = mi.batch or batch
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if mi.batch and n < mi.batch:  # fixed-batch graph: pad the last chunk, drop the padding after
            chunk = np.concatenate([chunk, np.zeros((mi.batch - n, *chunk.shape[1:]), chunk.dtype)])
        try:
            out = sess.run(None, {mi.name: _to_model_dtype(chunk, mi.dtype)})[0]
        except Exception as e:
            raise BadInput(f"onnxruntime rejected the input {tuple(chunk.shape)} ({one_line(e)}); "
                           "check --input-shape and the data") from None
        outs.append(np.asarray(out)[:n])
    return np.concatenate(outs)


def probabilities(out: np.ndarray) -> np.ndarray:
    """N x K scores -> probabilities (softmax, unless they already are probabilities)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim > 2:
        out = out.reshape(out.shape[0], -1) if all(d == 1 for d in out.shape[2:]) else out
    if out.ndim != 2:
        raise BadInput(f"the model's output has shape {out.shape}; predict handles classifiers (N x classes)")
    if not np.isfinite(out).all():
        raise BadInput("the model produced NaN or infinite scores for this input; check the data's scaling")
    if (out >= 0).all() and np.allclose(out.sum(1), 1.0, atol=1e-3):
        return out
    e = np.exp(out - out.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def predict(model: str | Path, data: list[str], *, top_k: int = 3, threads: int = 1, batch: int = 32,
            input_shape: list[int] | None = None) -> dict[str, Any]:
    if top_k < 1 or threads < 1 or batch < 1:
        raise BadInput("--top-k, --threads and --batch must be >= 1")
    path = Path(model)
    sess, meta = open_model(path, threads)
    mi = model_input(sess, meta, input_shape)
    names, x, y = load_data(data, mi)
    probs = probabilities(run_model(sess, mi, x, batch))
    k_all = probs.shape[1]
    labels = list(mi.classes) if mi.classes and len(mi.classes) == k_all else [str(i) for i in range(k_all)]
    k = min(top_k, k_all)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    preds = [{"index": i, "source": names[i],
              "top": [{"class": int(j), "label": labels[j], "prob": float(probs[i, j])} for j in order[i]]}
             for i in range(len(names))]  # fmt: skip
    res: dict[str, Any] = {
        "model": str(path), "count": len(preds), "num_classes": k_all, "top_k": k,
        "input": {"name": mi.name, "shape": [mi.batch or "N", *mi.dims], "shape_from": mi.shape_from,
                  "normalization": mi.normalization},
        "classes": labels if mi.classes and len(mi.classes) == k_all else None,
        "predictions": preds,
    }  # fmt: skip
    if mi.classes and len(mi.classes) != k_all:
        res["warning"] = f"metadata lists {len(mi.classes)} classes but the model has {k_all} outputs; showing indices"
    if y is not None:
        res["top1_accuracy"] = float((probs.argmax(1) == y).mean())
    return res


def format_table(res: dict[str, Any]) -> str:
    width = max([len("source"), *(len(p["source"]) for p in res["predictions"])])
    shape = "x".join(map(str, res["input"]["shape"][1:]))
    lines = [f"{res['model']}: {res['count']} input(s) of {shape}, {res['num_classes']} classes"]
    lines.append(f"{'#':>5}  {'source':<{width}}  " + "  ".join(f"top-{i + 1}" for i in range(res["top_k"])))
    for p in res["predictions"]:
        tops = "  ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in p["top"])
        lines.append(f"{p['index']:>5}  {p['source']:<{width}}  {tops}")
    if "top1_accuracy" in res:
        lines.append(f"top-1 accuracy against y: {100 * res['top1_accuracy']:.2f}%")
    if "warning" in res:
        lines.append(f"warning: {res['warning']}")
    return "\n".join(lines)


def _fmt_dims(dims) -> str:
    return "(" + ", ".join("?" if d is None or not isinstance(d, int) else str(d) for d in dims) + ")"
