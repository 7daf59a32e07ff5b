"""``edgecompress predict``: metadata, images (PGM/PPM without Pillow, PNG with it), resizing,
batching, and one-line errors for bad input. In-process; the torch-free run is in
test_runtime_no_torch.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.cli import main
from edgecompress.errors import BadInput
from edgecompress.runtime.predict import predict, read_pnm, resize
from tests._onnx_models import cnn, edgecompress_metadata, mlp, ort_probs

PIL = pytest.importorskip("PIL.Image")
LABELS = ["ant", "bee", "cat", "dog", "eel"]


def _pgm(path: Path, a: np.ndarray, binary: bool = True, maxval: int = 255, comment: bool = False) -> Path:
    h, w = a.shape[:2]
    magic = ("P6" if binary else "P3") if a.ndim == 3 else ("P5" if binary else "P2")
    head = f"{magic}\n" + ("# made by a test\n" if comment else "") + f"{w} {h}\n{maxval}\n"
    if binary:
        body = a.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    else:
        body = " ".join(map(str, a.reshape(-1).tolist())).encode() + b"\n"
    path.write_bytes(head.encode() + body)
    return path


@pytest.fixture
def gray_model(tmp_path) -> Path:
    # Symbolic H, W in the graph: the size must come from the metadata edgecompress writes.
    return cnn(tmp_path / "m.onnx", hw="S", metadata=edgecompress_metadata([1, 1, 12, 10], LABELS))


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["predict", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_pnm_parsing_matches_pillow(tmp_path):
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 256, (9, 7))
    rgb = rng.integers(0, 256, (5, 6, 3))
    g16 = rng.integers(0, 65536, (4, 3))
    cases = [(_pgm(tmp_path / "a.pgm", g8), g8[..., None] / 255),
             (_pgm(tmp_path / "b.pgm", g8, binary=False, comment=True), g8[..., None] / 255),
             (_pgm(tmp_path / "c.ppm", rgb), rgb / 255),
             (_pgm(tmp_path / "d.ppm", rgb, binary=False), rgb / 255),
             (_pgm(tmp_path / "e.pgm", g16, maxval=65535), g16[..., None] / 65535)]  # fmt: skip
    for path, want in cases:
        np.testing.assert_allclose(read_pnm(path), want, atol=1e-6, err_msg=path.name)
    np.testing.assert_allclose(read_pnm(cases[0][0])[..., 0], np.asarray(PIL.open(cases[0][0])) / 255, atol=1e-6)
    (tmp_path / "t.pgm").write_bytes(b"P5\n7 9\n255\n" + bytes(10))
    with pytest.raises(BadInput, match="truncated"):
        read_pnm(tmp_path / "t.pgm")


@pytest.mark.parametrize("src, dst", [((30, 20), (12, 10)), ((5, 7), (16, 12)), ((12, 10), (12, 10))])
def test_resize_is_pillows_bilinear(src, dst):
    a = np.random.default_rng(1).random(src).astype(np.float32)
    ref = np.asarray(PIL.fromarray(a, mode="F").resize(dst[::-1], PIL.BILINEAR))
    np.testing.assert_allclose(resize(a[..., None], *dst)[..., 0], ref, atol=1e-5)
    assert np.allclose(resize(np.full((*src, 3), 0.25, np.float32), *dst), 0.25)  # weights sum to 1


def test_images_use_metadata_shape_labels_and_scaling(gray_model, tmp_path, capsys):
    a = np.random.default_rng(2).integers(0, 256, (30, 20)).astype(np.uint8)
    PIL.fromarray(a).save(tmp_path / "a.png")
    _pgm(tmp_path / "a.pgm", a)
    rc, out, err = _cli(capsys, str(gray_model), str(tmp_path / "a.png"), str(tmp_path / "a.pgm"), "--json",
                        "--top-k", "5")
    assert rc == 0, err
    res = json.loads(out)
    assert res["input"]["shape"] == ["N", 1, 12, 10] and res["input"]["shape_from"] == "metadata"
    assert res["classes"] == LABELS
    png, pgm = res["predictions"]
    assert png["source"].endswith("a.png") and pgm["source"].endswith("a.pgm")
    assert png["top"] == pgm["top"]  # the numpy PGM reader and Pillow agree
    x = resize(a[..., None].astype(np.float32) / 255, 12, 10).transpose(2, 0, 1)[None]
    ref = ort_probs(gray_model, x)[0]
    assert [t["label"] for t in png["top"]] == [LABELS[i] for i in np.argsort(-ref, kind="stable")]
    np.testing.assert_allclose([t["prob"] for t in png["top"]], np.sort(ref)[::-1], atol=1e-5)


def test_table_output(gray_model, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 12, 10), np.float32), y=np.array([0, 1, 2]))
    rc, out, err = _cli(capsys, str(gray_model), str(tmp_path / "d.npz"), "--top-k", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert "3 input(s) of 1x12x10, 5 classes" in lines[0]
    assert lines[1].split() == ["#", "source", "top-1", "top-2"]
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("top-1 accuracy against y:")
    for i, line in enumerate(lines[2:5]):
        cols = line.split()
        assert cols[0] == str(i) and cols[1].endswith(f"d.npz[{i}]") and cols[2] in LABELS and cols[3].endswith("%")


def test_fixed_batch_graph_is_padded(tmp_path):
    m = cnn(tmp_path / "b2.onnx", batch=2)  # the graph only accepts batches of exactly 2
    x = np.random.default_rng(3).random((3, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = predict(m, [str(tmp_path / "d.npz")], top_k=5, batch=7)
    assert res["count"] == 3
    ref = ort_probs(cnn(tmp_path / "dyn.onnx"), x)  # same weights, dynamic batch
    got = np.array([[t["prob"] for t in sorted(p["top"], key=lambda t: t["class"])] for p in res["predictions"]])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_non_image_model_takes_matching_npz(tmp_path):
    m = mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(4).normal(size=(4, 64)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x)
    res = predict(m, [str(tmp_path / "v.npz")], top_k=1)
    assert [p["top"][0]["class"] for p in res["predictions"]] == ort_probs(m, x).argmax(1).tolist()


def test_without_pillow(gray_model, tmp_path, monkeypatch):
    a = np.random.default_rng(5).integers(0, 256, (12, 10)).astype(np.uint8)
    PIL.fromarray(a).save(tmp_path / "a.png")
    _pgm(tmp_path / "a.pgm", a)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError
    with pytest.raises(BadInput, match="pip install pillow"):
        predict(gray_model, [str(tmp_path / "a.png")])
    assert predict(gray_model, [str(tmp_path / "a.pgm")])["count"] == 1  # PGM needs no extra package


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such file"),
    ("not_onnx", "not a valid ONNX model"),
    ("no_x", "has no array 'x'"),
    ("npz_shape", "samples have shape (1, 8, 8)"),
    ("npz_dtype", "dtype int32"),
    ("not_npz", "cannot read"),
    ("rgb_for_gray", "is RGB (3 channels) but the model takes gray (1 channel)"),
    ("gray_for_rgb", "convert the image to RGB"),
    ("not_image", "not an image"),
    ("top_k", "--top-k"),
])  # fmt: skip
def test_bad_input_is_one_line_exit_2(gray_model, tmp_path, capsys, case, needle):
    model, data, extra = str(gray_model), tmp_path / "in", []
    rng = np.random.default_rng(6)
    if case == "missing":
        data = tmp_path / "nope.png"
    elif case == "not_onnx":
        model = str(tmp_path / "x.onnx")
        Path(model).write_bytes(b"\x00garbage")
        np.savez(data := tmp_path / "d.npz", x=np.zeros((1, 1, 12, 10), np.float32))
    elif case == "no_x":
        np.savez(data := tmp_path / "d.npz", images=np.zeros((1, 12, 10), np.uint8))
    elif case == "npz_shape":
        np.savez(data := tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8))
    elif case == "npz_dtype":
        np.savez(data := tmp_path / "d.npz", x=np.zeros((2, 12, 10), np.int32))
    elif case == "not_npz":
        (data := tmp_path / "d.npz").write_text("hello")
    elif case == "rgb_for_gray":
        PIL.fromarray(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)).save(data := tmp_path / "c.png")
    elif case == "gray_for_rgb":
        model = str(cnn(tmp_path / "rgb.onnx", channels=3))
        PIL.fromarray(rng.integers(0, 256, (12, 10)).astype(np.uint8)).save(data := tmp_path / "g.png")
    elif case == "not_image":
        (data := tmp_path / "notes.txt").write_text("hello")
    elif case == "top_k":
        np.savez(data := tmp_path / "d.npz", x=np.zeros((1, 1, 12, 10), np.float32))
        extra = ["--top-k", "0"]
    rc, out, err = _cli(capsys, model, str(data), *extra)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


def test_gray_stored_as_rgb_is_accepted(gray_model, tmp_path):
    g = np.random.default_rng(7).integers(0, 256, (12, 10)).astype(np.uint8)
    PIL.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.png")
    PIL.fromarray(g).save(tmp_path / "gray.png")
    res = predict(gray_model, [str(tmp_path / "rgb.png"), str(tmp_path / "gray.png")], top_k=5)
    assert res["predictions"][0]["top"] == res["predictions"][1]["top"]
