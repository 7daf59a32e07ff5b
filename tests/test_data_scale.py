"""Image folders decoded per item, preprocessing as configuration (the same in training, evaluation and
predict), calibration batch by batch, --device, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.config import DataConfig
from edgecompress.data import load_fashion_mnist
from edgecompress.data.folders import ImageFiles, load_image_folder
from edgecompress.data.preprocess import image_prep_for
from edgecompress.errors import BadInput
from edgecompress.quantize.ptq import ArrayReader, calib_options
from edgecompress.runtime.imageprep import ImagePrep

from .conftest import FMNIST, cli_env, run_cli

PIL = pytest.importorskip("PIL.Image")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="no Fashion-MNIST")


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, classes, jpeg_every: int = 0) -> list[Path]:
    """uint8 N,H,W images as root/K-CLASS/NNNNN.png (every ``jpeg_every``-th one as JPEG); the K- prefix
    keeps the sorted folder order (ImageFolder's class ids) the order of ``classes``."""
    paths = []
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        d = root / _folder(classes, int(k))
        d.mkdir(parents=True, exist_ok=True)
        p = d / (f"{i:05d}.jpg" if jpeg_every and i % jpeg_every == 0 else f"{i:05d}.png")
        PIL.fromarray(img).save(p)
        paths.append(p)
    return paths


def _folder(classes, k: int) -> str:
    return f"{k}-{classes[k].replace('/', '-')}"


def _fm(split: str, n: int):
    d = load_fashion_mnist(FMNIST, split)
    return np.round(d.x[:n, 0] * 255).astype(np.uint8), d.y[:n], d.classes


def _loader(cfg: DataConfig = DataConfig(), shape=None):
    return lambda path, prep: load_image_folder(path, prep, image_prep_for(cfg, shape), bad_files=cfg.bad_files)


@needs_fmnist
def test_png_folder_decodes_lazily_to_the_idx_arrays(tmp_path):
    x, y, classes = _fm("test", 60)
    write_folder(tmp_path / "f", x, y, classes)
    ds, rec = _loader()(tmp_path / "f", None)
    assert isinstance(ds.x, ImageFiles) and ds.x.shape == (60, 1, 28, 28) and rec["files"] == 60
    order = np.argsort([p.decode().split("/")[1] for p in ds.x.files])  # file names carry the IDX index
    assert np.array_equal(ds.x[order[:7]], x[:7, None].astype(np.float32) / 255)  # bit-identical to IDX / 255
    assert np.array_equal(np.asarray(ds.y)[order], y)
    sub = ds.take(np.array([3, 1]), "s")
    assert isinstance(sub.x, ImageFiles) and len(sub) == 2  # a subset is still a file list, nothing decoded
    assert rec["file_list_sha256"] == ds.x.file_list_sha256() != sub.x.file_list_sha256()


def test_preprocessing_channels_geometry_and_metadata(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 200
    PIL.fromarray(rgb).save(tmp_path / "a.png")
    PIL.fromarray(rgb).save(tmp_path / "b.webp", lossless=True)
    gray = ImagePrep(size=(20, 20), channels="gray").load(tmp_path / "a.png")
    assert gray.shape == (1, 20, 20) and np.allclose(gray, 0.299 * 200 / 255, atol=1e-5)
    bgr = ImagePrep(size=(20, 30), channels="bgr", mean=(0.5,), std=(0.25,)).load(tmp_path / "b.webp")
    assert bgr.shape == (3, 20, 30) and np.allclose(bgr[2], (200 / 255 - 0.5) / 0.25) and np.allclose(bgr[0], -2)
    box = ImagePrep(size=(30, 30), resize="letterbox").load(tmp_path / "a.png")
    assert box.shape == (3, 30, 30) and box[0, 0, 0] == 0 and box[0, 15, 15] > 0.7  # padded top, image centre
    crop = ImagePrep(size=(16, 16), resize="crop", crop_fraction=0.5)
    assert crop.load(tmp_path / "a.png").shape == (3, 16, 16)
    assert ImagePrep.from_meta(crop.to_meta()) == crop


def test_corrupt_image_error_names_it_or_is_skipped_and_counted(tmp_path):
    x = np.full((4, 8, 8), 100, np.uint8)
    write_folder(tmp_path / "f", x, np.array([0, 0, 1, 1]), ["a", "b"])
    (tmp_path / "f" / "1-b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds, _ = _loader()(tmp_path / "f", None)
    with pytest.raises(BadInput, match="broken.png"):
        ds.x[np.arange(len(ds))]
    ds, rec = _loader(DataConfig(bad_files="skip"))(tmp_path / "f", None)
    assert len(ds) == 4 and rec["skipped_unreadable"] == 1 and rec["skipped_examples"] == ["1-b/broken.png"]


def test_flat_folder_with_labels_csv(tmp_path):
    (tmp_path / "f").mkdir()
    for i in range(3):
        PIL.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(tmp_path / "f" / f"{i}.png")
    (tmp_path / "f" / "labels.csv").write_text("file,label\n2.png,dog\n0.png,cat\n1.png,dog\n")
    ds, _ = _loader()(tmp_path / "f", None)
    assert ds.classes == ("cat", "dog") and list(ds.y) == [0, 1, 1] and ds.x.shape == (3, 1, 8, 8)


def test_calibration_reader_streams_batches_of_image_files(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (10, 6, 6), np.uint8)
    write_folder(tmp_path / "f", x, np.zeros(10, int), ["c"])
    ds, _ = _loader()(tmp_path / "f", None)
    lazy, eager = ArrayReader("in", ds.x, batch=4), ArrayReader("in", ds.x[np.arange(10)], batch=4)
    assert len(lazy) == 3
    got = [lazy.get_next()["in"] for _ in range(3)]
    assert lazy.get_next() is None and [len(b) for b in got] == [4, 4, 2]
    assert all(np.array_equal(a, eager.get_next()["in"]) for a in got)
    lazy.set_range(1, 2)
    assert np.array_equal(lazy.get_next()["in"], got[1]) and lazy.get_next() is None
    assert calib_options("minmax", lazy) == {} and calib_options("entropy", lazy) == {"CalibStridedMinMax": 3}


def test_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    p = run_cli(["export", "--data", "random", "--input-shape", "1,1,8,8", "--device", "cuda", "--out",
                 str(tmp_path / "o")], tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "--device cuda" in lines[0] and "Traceback" not in p.stderr


@pytest.mark.slow
@needs_fmnist
def test_image_folder_exports_and_predict_reproduces_the_evaluation(tmp_path):
    """Mixed PNG/JPEG gray training images; PNG eval images, whose top-1 under onnxruntime equals that of
    the same images read from IDX, and predict on the raw files reproduces the manifest's INT8 top-1."""
    import onnx
    import onnxruntime as ort

    xt, yt, classes = _fm("train", 400)
    write_folder(tmp_path / "train", xt, yt, classes, jpeg_every=3)
    xe, ye, _ = _fm("test", 200)
    eval_paths = write_folder(tmp_path / "eval", xe, ye, classes)
    out = tmp_path / "o"
    p = run_cli(["export", "resnet8-tiny", "--data", str(tmp_path / "train"), "--eval-data", str(tmp_path / "eval"),
                 "--round-to", "2", "--distill-epochs", "0.5", "--calib-samples", "32", "--runs", "3",
                 "--min-agreement", "0", "--exporter", "torchscript", "--workers", "1", "--out", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    data = m["data"]
    assert data["kind"] == "images" and data["file_lists"]["eval"]["count"] == 200
    assert data["images"]["files"] == 400 and len(data["file_lists"]["train"]["sha256"]) == 64
    assert data["preprocess"]["channels"] == "gray" and data["preprocess"]["size"] == [28, 28]
    meta = {p.key: p.value for p in onnx.load(str(out / "int8.onnx")).metadata_props}
    assert json.loads(meta["input.preprocess"]) == data["preprocess"]
    top1 = m["artifacts"]["int8"]["top1"]
    # the same 200 images from IDX, through onnxruntime
    sess = ort.InferenceSession(str(out / "int8.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: xe[:, None].astype(np.float32) / 255})[0]
    assert float((logits.argmax(1) == ye).mean()) == pytest.approx(top1, abs=1e-12)
    # predict on the raw image files (torch-free runtime), labels from the class folders
    pr = run_cli(["predict", str(out / "int8.onnx"), *map(str, eval_paths), "--json", "--top-k", "1"], tmp_path)
    assert pr.returncode == 0, pr.stderr[-2000:]
    preds = json.loads(pr.stdout)["predictions"]
    hits = [int(Path(q["source"]).parent.name.split("-")[0]) == q["top"][0]["class"] for q in preds]
    assert len(hits) == 200 and float(np.mean(hits)) == pytest.approx(top1, abs=1e-12)


TORCHRUN = Path(sys.executable).with_name("torchrun")
KD = ["resnet8-tiny", "--max-train", "300", "--max-eval", "100", "--round-to", "2", "--distill-epochs", "1",
      "--calib-samples", "16", "--runs", "2", "--min-agreement", "0", "--exporter", "torchscript",
      "--quant", "none"]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun beside the interpreter")
def test_torchrun_two_cpu_ranks_match_nproc_2(tmp_path):
    from .conftest import make_npz

    data = str(make_npz(tmp_path / "d.npz", n=400))
    env = cli_env(tmp_path)
    tr = subprocess.run([str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--standalone", "-m",
                         "edgecompress", "export", *KD, "--data", data, "--out", str(tmp_path / "tr")],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert tr.returncode == 0, tr.stderr[-3000:]
    sp = run_cli(["export", *KD, "--data", data, "--nproc", "2", "--out", str(tmp_path / "sp")], tmp_path)
    assert sp.returncode == 0, sp.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("tr", "sp"))
    ha, hb = (m["stage_results"]["distill"]["schedule"][0] for m in (a, b))
    assert ha["nproc"] == 2 and ha["rank_state_sha256"][0] == ha["rank_state_sha256"][1]  # both ranks agree
    assert ha["rank_state_sha256"] == hb["rank_state_sha256"]  # and equal the --nproc 2 weights
    assert a["artifacts"]["pruned"]["sha256"] == b["artifacts"]["pruned"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("tr", "sp"))) == ["sp", "tr"]
    assert os.path.exists(tmp_path / "tr" / "pruned.onnx")


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_training_gives_the_in_memory_weights(tmp_path, workers):
    """The same images as an array and as PNG files decoded by loader workers: identical weights after
    a seeded training run with augmentation (the random draws stay on the loop's CPU generator)."""
    import torch
    import torch.nn as nn

    from edgecompress.data.dataset import Dataset
    from edgecompress.train.loop import TrainConfig, cross_entropy, fit

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 8, 8), np.uint8)
    y = rng.integers(0, 2, 40)
    write_folder(tmp_path / "f", x, y, ["a", "b"])
    lazy, _ = _loader()(tmp_path / "f", None)
    eager = Dataset(np.asarray(lazy.x[np.arange(40)]), lazy.y, "mem")

    def train(d: Dataset) -> dict:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
        fit(m, d, TrainConfig(epochs=2, batch_size=8, lr=0.1, mixup=0.5, workers=workers if d is lazy else 0),
            cross_entropy)
        return m.state_dict()

    a, b = train(eager), train(lazy)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["0.weight"], b["0.weight"] * 0)


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_ptq_calibrates_from_image_files_batch_by_batch(tmp_path, method):
    """quantize_ptq takes lazily decoded images (entropy: a range of batches at a time through
    CalibStridedMinMax) and an iterable of batches; minmax gives the file the array gives."""
    from edgecompress.config import QuantConfig
    from edgecompress.quantize.ptq import quantize_ptq

    from ._onnx_models import cnn

    x = np.random.default_rng(0).integers(0, 255, (96, 8, 8), np.uint8)
    write_folder(tmp_path / "f", x, np.zeros(96, int), ["c"])
    ds, _ = _loader()(tmp_path / "f", None)
    fp32 = cnn(tmp_path / "m.onnx", channels=1, hw=8)
    cfg = QuantConfig(method=method, calib_samples=96)
    lazy = quantize_ptq(fp32, tmp_path / "lazy.onnx", ds.x, cfg)
    arr = ds.x[np.arange(96)]
    eager = quantize_ptq(fp32, tmp_path / "eager.onnx", arr, cfg)
    batches = quantize_ptq(fp32, tmp_path / "iter.onnx", (arr[i : i + 32] for i in range(0, 96, 32)), cfg)
    assert lazy.calib_samples == eager.calib_samples == batches.calib_samples == 96
    if method == "minmax":  # min/max merge exactly: the same file whatever feeds the batches
        assert (tmp_path / "lazy.onnx").read_bytes() == (tmp_path / "eager.onnx").read_bytes()
        assert (tmp_path / "iter.onnx").read_bytes() == (tmp_path / "eager.onnx").read_bytes()
    else:
        assert (tmp_path / "lazy.onnx").stat().st_size > 0


def test_preprocessing_flags_on_array_data_are_a_one_line_error(tmp_path):
    p = run_cli(["export", "resnet8-tiny", "--data", "random", "--input-shape", "1,1,8,8", "--mean", "0.5", "--out",
                 str(tmp_path / "o")], tmp_path)
    assert p.returncode == 2 and "apply to image folders" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_training_logs_one_time_estimate_after_the_first_steps():
    import torch.nn as nn

    from edgecompress.data.dataset import Dataset
    from edgecompress.train.loop import TrainConfig, cross_entropy, fit

    rng = np.random.default_rng(0)
    d = Dataset(rng.random((64, 1, 4, 4), dtype=np.float32), rng.integers(0, 2, 64), "mem")
    lines: list[str] = []
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    fit(m, d, TrainConfig(epochs=2, batch_size=8), cross_entropy, desc="kd", log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("kd: ") and "steps/s over the first 3 steps" in lines[0]
    assert "for the remaining 13" in lines[0]
