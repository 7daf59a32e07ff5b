"""In-repo stand-ins for models that are not one classifier output, with the synthetic data they
learn from (made here, seeded) and a short training loop. Used as MODEL ``tests/_task_models.py:NAME``.

* ``two_head``: class logits + box regression, returned as a dict (refused before issue 22);
* ``tiny_unet``: a 2-level UNet, (N, C, H, W) per-pixel logits (refused before);
* ``multilabel``: per-class sigmoid probabilities (distilled before with KL at temperature on the
  probabilities taken for logits, which carries ~20x less gradient than BCE on them);
* ``tiny_detector``: a YOLO-style grid head whose one output concatenates box coordinates in
  pixels and class scores in [0, 1] (the INT8 failure of the mixed-range guard), with ``decode``
  and ``map50`` for the user metric.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMG = 32  # images are 1 x 32 x 32
GRID = 8  # the detector's grid of 4 x 4 pixel cells
CELL = IMG // GRID
FRAME = 640  # the detector reports boxes in the pixels of the 640 x 640 frame its 32 x 32 input was scaled from
SCALE = FRAME / IMG
SHAPES = 3  # classes of the detector / multi-label data: filled square, hollow square, plus


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TwoHead(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(1, 16), _cbr(16, 32, 2), _cbr(32, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cls = nn.Linear(32, classes)
        self.box = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"scores": self.cls(f), "boxes": IMG * torch.sigmoid(self.box(f))}


class TinyUNet(nn.Module):
    def __init__(self, classes: int = SHAPES + 1, width: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2 = _cbr(1, width), nn.Sequential(_cbr(width, 2 * width, 2), _cbr(2 * width, 2 * width))
        self.mid = nn.Sequential(_cbr(2 * width, 4 * width, 2), _cbr(4 * width, 4 * width))
        self.dec2 = _cbr(4 * width + 2 * width, 2 * width)
        self.dec1 = _cbr(2 * width + width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.head(d1)


class MultiLabel(nn.Module):
    def __init__(self, classes: int = SHAPES, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(1, width), _cbr(width, width, 2), _cbr(width, 2 * width, 2),
                                  _cbr(2 * width, 2 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.body(x)))


class TinyDetector(nn.Module):
    """A grid of GRID x GRID cells; per cell: box (cx, cy, w, h) in frame pixels (0..640), then class
    scores in [0, 1]; one output [N, GRID*GRID, 4 + SHAPES], as YOLO-style exports give."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(1, width), _cbr(width, width, 2), _cbr(width, 2 * width, 2),
                                  _cbr(2 * width, 2 * width), nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU())
        self.box = nn.Conv2d(2 * width, 4, 1)
        self.cls = nn.Conv2d(2 * width, SHAPES, 1)
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("offset", torch.stack([xs, ys]).float().reshape(1, 2, GRID, GRID), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        b = self.box(f)
        xy = (torch.sigmoid(b[:, :2]) + self.offset) * (CELL * SCALE)
        wh = (2 * torch.sigmoid(b[:, 2:])) ** 2 * (CELL * SCALE)  # YOLOv5's: 0..4 cells, no dead zone
        scores = torch.sigmoid(self.cls(f))
        out = torch.cat([xy, wh, scores], 1)  # [N, 4 + C, G, G]
        return out.flatten(2).transpose(1, 2)  # [N, G*G, 4 + C]


class MultiLabelGrid(nn.Module):
    """Multi-label with many classes, as real taggers have: "shape k centred in grid cell c" for the 3
    shapes x 64 cells, 192 per-class sigmoid probabilities [N, 192]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(1, width), _cbr(width, width, 2), _cbr(width, 2 * width, 2),
                                  _cbr(2 * width, 2 * width))
        self.head = nn.Conv2d(2 * width, SHAPES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(x))).flatten(1)


def two_head() -> nn.Module:
    return TwoHead()


def tiny_unet() -> nn.Module:
    return TinyUNet()


def multilabel() -> nn.Module:
    return MultiLabel()


def tiny_detector() -> nn.Module:
    return TinyDetector()


def multilabel_grid() -> nn.Module:
    return MultiLabelGrid()


# ---------------------------------------------------------------- synthetic data

def _draw(img: np.ndarray, kind: int, y0: int, x0: int, s: int, value: float = 1.0) -> None:
    if kind == 0:  # filled square
        img[y0 : y0 + s, x0 : x0 + s] = value
    elif kind == 1:  # hollow square
        img[y0 : y0 + s, x0 : x0 + s] = value
        img[y0 + 2 : y0 + s - 2, x0 + 2 : x0 + s - 2] = 0
    else:  # plus
        img[y0 + s // 2 - 1 : y0 + s // 2 + 1, x0 : x0 + s] = value
        img[y0 : y0 + s, x0 + s // 2 - 1 : x0 + s // 2 + 1] = value


def shapes_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Images with 1..3 shapes on a noisy background, at least 2 px apart. Returns x [N, 1, 32, 32],
    per-pixel class masks [N, 32, 32] (0 = background, 1 + shape kind) and per image boxes
    [k, 5] = (x0, y0, x1, y1, kind)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1, IMG, IMG)) * 0.2).astype(np.float32)
    masks = np.zeros((n, IMG, IMG), np.int64)
    boxes = []
    for i in range(n):
        placed: list[tuple[int, int, int]] = []
        for _ in range(rng.integers(1, 4)):
            for _try in range(20):
                s = int(rng.integers(8, 13))
                y0, x0 = int(rng.integers(0, IMG - s)), int(rng.integers(0, IMG - s))
                if all(y0 >= py + ps + 2 or py >= y0 + s + 2 or x0 >= px + ps + 2 or px >= x0 + s + 2
                       for py, px, ps in placed):
                    break
            else:
                continue
            kind = int(rng.integers(0, SHAPES))
            img = np.zeros((IMG, IMG), np.float32)
            _draw(img, kind, y0, x0, s)
            x[i, 0] = np.maximum(x[i, 0], img * (0.7 + 0.3 * rng.random()))
            masks[i][img > 0] = kind + 1
            placed.append((y0, x0, s))
            boxes.append((i, x0, y0, x0 + s, y0 + s, kind))
    b = np.array(boxes, np.float32).reshape(-1, 6)
    return x, masks, [b[b[:, 0] == i, 1:] for i in range(n)]


def multihot(boxes: list[np.ndarray]) -> np.ndarray:
    y = np.zeros((len(boxes), SHAPES), np.float32)
    for i, b in enumerate(boxes):
        y[i, b[:, 4].astype(int)] = 1
    return y


def grid_targets(boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: objectness-class one-hot [N, G*G, C], box (cx, cy, w, h) [N, G*G, 4], and a mask of cells
    holding an object's centre [N, G*G]."""
    n = len(boxes)
    cls = np.zeros((n, GRID * GRID, SHAPES), np.float32)
    box = np.zeros((n, GRID * GRID, 4), np.float32)
    obj = np.zeros((n, GRID * GRID), bool)
    for i, bs in enumerate(boxes):
        for x0, y0, x1, y1, k in bs:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            c = int(min(GRID - 1, cy // CELL)) * GRID + int(min(GRID - 1, cx // CELL))
            cls[i, c, int(k)] = 1
            box[i, c] = (cx, cy, x1 - x0, y1 - y0)
            obj[i, c] = True
    return cls, box, obj


# ---------------------------------------------------------------- training

def train(model: nn.Module, x: np.ndarray, loss_fn, epochs: int, lr: float = 3e-3, bs: int = 64,
          seed: int = 0) -> nn.Module:
    """Adam on ``loss_fn(model_out, idx)``; returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(x)
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(0, len(x), bs):
            idx = perm[k : k + bs]
            if len(idx) < 2:
                continue
            loss = loss_fn(model(xs[idx]), idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def seg_loss(masks: np.ndarray):
    m = torch.from_numpy(masks)
    return lambda out, idx: F.cross_entropy(out, m[idx])


def multilabel_loss(y: np.ndarray, weight: float = 1.0):
    t = torch.from_numpy(y)
    return lambda out, idx: weight * F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), t[idx])


def detector_loss(boxes: list[np.ndarray]):
    cls, box, obj = (torch.from_numpy(a) for a in grid_targets(boxes))
    g = torch.arange(GRID, dtype=torch.float32) + 0.5
    centres = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    default = torch.cat([centres, torch.ones_like(centres)], 1).expand(len(boxes), -1, -1)

    def loss(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        o, c, b = obj[idx], cls[idx], box[idx]
        bce = F.binary_cross_entropy(out[..., 4:].clamp(1e-6, 1 - 1e-6), c)
        reg = F.smooth_l1_loss(out[..., :4][o] / (CELL * SCALE), b[o] / CELL) if o.any() else out.sum() * 0
        # cells without an object keep the default box (cell centre, one cell wide): boxes a student can mimic
        rest = F.smooth_l1_loss(out[..., :4][~o] / (CELL * SCALE), default[idx][~o]) if (~o).any() else 0
        return 4 * bce + reg + 0.1 * rest

    return loss


# ---------------------------------------------------------------- metrics (numpy: the user's --metric)

def decode(pred: np.ndarray, thresh: float = 0.3) -> list[np.ndarray]:
    """[N, G*G, 4 + C] -> per image detections [k, 6] = (x0, y0, x1, y1, score, class), in input pixels."""
    out = []
    for p in pred:
        cls, score = p[:, 4:].argmax(1), p[:, 4:].max(1)
        keep = score > thresh
        cx, cy, w, h = (p[keep, k] / SCALE for k in range(4))
        out.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score[keep], cls[keep]], 1))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def map50(dets: list[np.ndarray], gts: list[np.ndarray]) -> float:
    """mAP at IoU 0.5 over the classes (VOC-style all-point interpolation)."""
    aps = []
    for c in range(SHAPES):
        recs, n_gt = [], 0
        for d, g in zip(dets, gts, strict=True):
            dc, gc = d[d[:, 5] == c], g[g[:, 4] == c]
            n_gt += len(gc)
            used = np.zeros(len(gc), bool)
            for det in dc[np.argsort(-dc[:, 4])]:
                ious = _iou(det[None, :4], gc[:, :4])[0] if len(gc) else np.zeros(0)
                j = int(np.argmax(ious)) if len(ious) else -1
                hit = j >= 0 and ious[j] >= 0.5 and not used[j]
                if hit:
                    used[j] = True
                recs.append((det[4], hit))
        if n_gt == 0:
            continue
        recs.sort(key=lambda r: -r[0])
        tp = np.cumsum([h for _, h in recs]) if recs else np.zeros(0)
        fp = np.cumsum([not h for _, h in recs]) if recs else np.zeros(0)
        rec, prec = tp / n_gt, tp / np.maximum(tp + fp, 1e-9)
        mrec, mpre = np.concatenate([[0], rec, [1]]), np.concatenate([[0], prec, [0]])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        k = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[k + 1] - mrec[k]) * mpre[k + 1])))
    return float(np.mean(aps)) if aps else 0.0


def miou_labels(pred: np.ndarray, masks: np.ndarray, classes: int) -> float:
    """mIoU of [N, C, H, W] logits against per-pixel labels."""
    p = pred.argmax(1)
    ious = [np.logical_and(p == c, masks == c).sum() / max(1, np.logical_or(p == c, masks == c).sum())
            for c in range(classes) if np.logical_or(p == c, masks == c).any()]
    return float(np.mean(ious))


def pad_boxes(boxes: list[np.ndarray], k: int = 4) -> np.ndarray:
    """Per-image boxes [k_i, 5] -> one array [N, k, 5] padded with rows of -1 (npz-friendly targets)."""
    out = -np.ones((len(boxes), k, 5), np.float32)
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b[:k]
    return out


# the --metric functions: fn(outputs, targets) -> float, higher is better

def metric_map50(outputs: np.ndarray, targets: np.ndarray) -> float:
    return map50(decode(outputs), [t[t[:, 4] >= 0] for t in targets])


def metric_miou(outputs: np.ndarray, targets: np.ndarray) -> float:
    return miou_labels(outputs, targets, SHAPES + 1)


def metric_exact_set(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Multi-label: the fraction of images whose whole label set is right."""
    return float(np.mean(np.all((outputs > 0.5) == (targets > 0.5), axis=1)))


def grid_labels(boxes: list[np.ndarray]) -> np.ndarray:
    """The 192 labels of MultiLabelGrid, in its output order (shape-major, then cell)."""
    return grid_targets(boxes)[0].transpose(0, 2, 1).reshape(len(boxes), -1)


def metric_f1(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Micro-F1 of the labels at 0.5 (negatives dominate: label accuracy would say ~99% for nothing)."""
    p, t = outputs > 0.5, targets > 0.5
    tp = float(np.sum(p & t))
    return 2 * tp / max(1.0, float(p.sum() + t.sum()))


TASKS = {  # name: (factory, loss maker, targets maker, metric, epochs)
    "tiny_detector": (TinyDetector, lambda m, b: detector_loss(b), lambda m, b: pad_boxes(b), metric_map50, 15),
    "tiny_unet": (TinyUNet, lambda m, b: seg_loss(m), lambda m, b: m, metric_miou, 8),
    "multilabel": (MultiLabel, lambda m, b: multilabel_loss(multihot(b)), lambda m, b: multihot(b),
                   metric_exact_set, 8),
    "multilabel_grid": (MultiLabelGrid, lambda m, b: multilabel_loss(grid_labels(b), weight=4.0),
                        lambda m, b: grid_labels(b), metric_f1, 15),
}


def make_task(name: str, d, n_train: int = 800, n_eval: int = 200, seed: int = 0) -> dict[str, float]:
    """Trains the stand-in ``name`` on synthetic images and writes ``d/NAME.pt``, ``d/NAME-train.npz``
    and ``d/NAME-eval.npz`` (x and its targets y); returns the trained model's metric on the eval set."""
    from pathlib import Path

    factory, loss, targets, metric, epochs = TASKS[name]
    d = Path(d)
    x, masks, boxes = shapes_data(n_train, seed)
    xe, me, be = shapes_data(n_eval, seed + 1)
    torch.manual_seed(seed)
    model = train(factory(), x, loss(masks, boxes), epochs=epochs, seed=seed)
    torch.save(model.state_dict(), d / f"{name}.pt")
    np.savez(d / f"{name}-train.npz", x=x, y=targets(masks, boxes))
    np.savez(d / f"{name}-eval.npz", x=xe, y=targets(me, be))
    with torch.no_grad():
        out = model(torch.from_numpy(xe)).numpy()
    return {"metric": metric(out, targets(me, be))}
