"""The configs of what a run reads: the model (``ModelConfig``) and the data (``DataConfig``), with
their checks, as the stage configs of ``config.stages``."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.config.enums import BadFiles, ChannelOrder, Layout, ResizeMode
from edgecompress.config.parse import EnumFields
from edgecompress.config.parse import choice as _choice
from edgecompress.errors import ConfigError
from edgecompress.runtime.outputs import OutputKind


@dataclass(frozen=True, kw_only=True)
class ModelConfig(EnumFields):
    name: str | None = None  # zoo name, path/to/file.py:factory, package.module:factory; None = default
    weights: str | None = None  # state_dict path; None = the zoo's shipped checkpoint if any
    input_shape: tuple[int, ...] | None = None  # N,C,H,W; None = from the data or the zoo entry
    num_classes: int | None = None  # zoo models only; None = 10
    trust_checkpoint: bool = False  # allow full unpickling of --weights (runs code in the file)
    # the kind of an output, NAME=KIND (KIND alone for a one-output model), instead of the inferred one;
    # kinds: edgecompress.runtime.outputs.OutputKind (logits, sigmoid, softmax, dense, regression)
    output_kinds: tuple[str, ...] = ()

    def validate(self) -> None:
        for e in self.output_kinds:
            _choice(f"--output-kind {e}", e.rpartition("=")[2], OutputKind)
        if self.input_shape is not None:
            if len(self.input_shape) != 4 or any(d <= 0 for d in self.input_shape):
                raise ConfigError(
                    f"--input-shape {','.join(map(str, self.input_shape))}: expected 4 positive "
                    "integers N,C,H,W, e.g. 1,1,28,28"
                )
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes}: needs at least 2 classes")


@dataclass(frozen=True, kw_only=True)
class DataConfig(EnumFields):
    data: str | None = None  # fashion-mnist | random | DIR with IDX files | FILE.npz; None = fashion-mnist
    eval_data: str | None = None  # FILE.npz or IDX DIR; None = official test split / held-out part
    # of the training data, for validation (never the eval set); 0 = train on all of it (then nothing
    # that needs a validation split: early stopping, --max-accuracy-drop, a measured sensitivity table)
    val_fraction: float = 0.1
    eval_fraction: float = 0.2  # held out of --data when no eval set is given (npz only)
    max_train: int | None = None  # use at most this many training samples (quick runs)
    max_eval: int | None = None  # evaluate on at most this many samples (quick runs)
    random_samples: int = 256  # with data=random
    # image folders (edgecompress.data.folders): how files become samples, the same in training,
    # calibration, evaluation and `edgecompress predict` (recorded in the ONNX metadata)
    image_size: tuple[int, ...] | None = None  # H,W; None = the model's input, else the first image's
    resize: ResizeMode = ResizeMode.STRETCH
    crop_fraction: float = 1.0  # resize=crop: centre crop of this fraction of the resized shorter side
    channels: ChannelOrder = ChannelOrder.AUTO
    mean: tuple[float, ...] = ()  # subtracted per channel (after /255); () = 0
    std: tuple[float, ...] = ()  # divided per channel; () = 1
    layout: Layout = Layout.NCHW
    bad_files: BadFiles = BadFiles.ERROR
    workers: int = 0  # DataLoader worker processes that decode images for training and evaluation

    def validate(self) -> None:
        _choice("--resize", self.resize, ResizeMode)
        _choice("--channels", self.channels, ChannelOrder)
        _choice("--layout", self.layout, Layout)
        _choice("--bad-files", self.bad_files, BadFiles)
        if self.layout != "nchw":
            raise ConfigError("--layout nhwc: training, pruning and export take NCHW models; use --layout nchw")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"--image-size {','.join(map(str, self.image_size))}: expected H,W (two positive integers)")
        if not 0 < self.crop_fraction <= 1:
            raise ConfigError(f"--crop-fraction {self.crop_fraction}: must be in (0, 1]")
        if any(s == 0 for s in self.std):
            raise ConfigError("--std has a 0: every value must be non-zero")
        if self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: must be >= 0 (0 = decode in the training process)")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction {self.val_fraction}: must be in [0, 1), the fraction of the training "
                              "data held out for validation (0 = none)")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction={self.eval_fraction}: must be in (0, 1), the fraction of the data held out")
        for k in ("max_train", "max_eval", "random_samples"):
            v = getattr(self, k)
            if v is not None and v < 1:
                name = f"--{k.replace('_', '-')} {v}" if k.startswith("max_") else f"{k}={v}"
                raise ConfigError(f"{name}: must be a positive integer")
