"""onnxruntime sessions and the checks before one runs a file (numpy + onnx + onnxruntime only).

Nothing in ``edgecompress.runtime`` imports torch or the compression side: ``edgecompress bench``
and ``predict`` run on an edge board with just numpy, onnx and onnxruntime installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgecompress.errors import BadInput, one_line


def make_session(path: Path | str, threads: int = 1, optimized_out: Path | None = None,
                 profile_prefix: Path | None = None):
    """An onnxruntime CPU session with graph optimisation ALL (QDQ fusion needs >= EXTENDED);
    ``profile_prefix`` turns onnxruntime's profiler on (``end_profiling()`` returns its file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def fixed_batch(sess) -> int | None:
    """The batch size the graph's input fixes (its first dimension), None when it is dynamic."""
    shape = sess.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def pad_batch(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` padded to ``n`` samples with copies of its own samples from the start (a fixed-batch graph)."""
    return x if len(x) >= n else x[np.arange(n) % len(x)]


def run_batched(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The first output of ``sess`` on ``x`` (see :func:`run_batched_all`)."""
    return run_batched_all(sess, x, batch)[0]


def run_batched_all(sess, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Every output of ``sess`` on ``x``, in the file's output order, ``batch`` samples per run, or the
    graph's own batch size when its input fixes one (the last chunk padded, the padding's outputs dropped)."""
    name = sess.get_inputs()[0].name
    fixed = fixed_batch(sess)
    parts = []
    for i in range(0, len(x), fixed or batch):
        chunk = x[i : i + (fixed or batch)]
        parts.append([o[: len(chunk)] for o in sess.run(None, {name: pad_batch(chunk, fixed) if fixed else chunk})])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(sess.get_outputs()))]


def input_shape_of(sess, batch: int) -> tuple[int, ...]:
    shape = []
    for i, d in enumerate(sess.get_inputs()[0].shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise ValueError(f"input dimension {i} is symbolic ({d!r}); pass --input-shape")
    if shape[0] != batch and not isinstance(sess.get_inputs()[0].shape[0], int):
        shape[0] = batch
    return tuple(shape)


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}  # fmt: skip


def random_feed(sess, batch: int, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform random input of ``sess`` at ``batch`` (``input_shape`` for symbolic dims)."""
    inp = sess.get_inputs()[0]
    shape = tuple(input_shape) if input_shape else input_shape_of(sess, batch)
    x = np.random.default_rng(seed).random((batch, *shape[1:])).astype(_NP_TYPES.get(inp.type, np.float32))
    return {inp.name: x}


def model_files(path: Path | str) -> list[Path]:
    """An ONNX model file and the external-data files it references (those that exist), the model first."""
    import onnx

    path = Path(path)
    files = [path]
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return files
    for init in m.graph.initializer:
        for entry in init.external_data:
            f = path.parent / entry.value
            if entry.key == "location" and f not in files and f.exists():
                files.append(f)
    return files


def file_bytes(path: Path | str) -> int:
    """Size of an ONNX model including any external-data files it references."""
    return sum(f.stat().st_size for f in model_files(path))


def check_model_file(path: Path) -> None:
    """A one-line BadInput unless ``path`` is a valid ONNX file."""
    import onnx

    if path.is_dir():
        raise BadInput(f"{path}: is a directory; pass the .onnx file inside it")
    if not path.is_file():
        raise BadInput(f"{path}: no such file; check the path")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise BadInput(f"{path}: not a valid ONNX model ({one_line(e, 200)}); "
                       "pass a .onnx file (e.g. one written by edgecompress export)") from None


@contextlib.contextmanager
def ort_errors(path: Path) -> Iterator[None]:
    """onnxruntime's own errors while running ``path`` -> one-line BadInput."""
    try:
        yield
    except ValueError as e:
        raise BadInput(f"{path}: {e}") from None
    except Exception as e:  # onnxruntime's own errors (Fail, InvalidArgument, ...) subclass Exception
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        msg = " ".join(str(e).split())[:240]
        raise BadInput(f"{path}: onnxruntime cannot run it ({type(e).__name__}: {msg}); check "
                       "--input-shape (N,C,H,W of the model input) and that the ops are standard ONNX") from None
