"""Configuration of the training stage: coordinate encoder, view encoders, objective, optimiser, trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from geoembed.config.base import Section


class EncodingConfig(Section):
    """One positional encoding. ``spherical_harmonics``: degrees ``0..degrees-1`` (resolution about
    20,000 km / degrees). ``local_multiscale``: sinusoids in an azimuthal equidistant projection centred
    on the training locations (resolution about ``min_wavelength_m / 2``)."""

    type: Literal["spherical_harmonics", "local_multiscale"]
    degrees: int = Field(default=40, ge=1, le=512, description="spherical_harmonics: number of degrees L")
    min_wavelength_m: float = Field(default=250.0, gt=0, description="local: finest wavelength (caps resolution)")
    max_wavelength_m: float | None = Field(
        default=None, gt=0, description="local: longest wavelength; default twice the training extent"
    )
    n_scales: int = Field(default=16, ge=1, le=256)
    n_directions: int = Field(default=3, ge=1, le=32)
    include_xy: bool = True
    center: tuple[float, float] | None = Field(
        default=None, description="local: projection centre (lon, lat); default the training locations' centre"
    )


class NetworkConfig(Section):
    """The coordinate network: SIREN (sine activations) or MLP."""

    type: Literal["siren", "mlp"] = "siren"
    hidden: list[int] = Field(default_factory=lambda: [128, 128], min_length=1)
    w0: float = Field(default=30.0, gt=0, description="SIREN first-layer frequency")
    w0_hidden: float = Field(default=1.0, gt=0, description="SIREN hidden-layer frequency")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"

    def spec(self) -> dict:
        if self.type == "siren":
            return {"type": "siren", "hidden": list(self.hidden), "w0": self.w0, "w0_hidden": self.w0_hidden}
        return {"type": "mlp", "hidden": list(self.hidden), "activation": self.activation}


class CoordinateEncoderConfig(Section):
    """Positional encoding(s) (concatenated) followed by a network."""

    encodings: list[EncodingConfig] = Field(
        default_factory=lambda: [EncodingConfig(type="local_multiscale")], min_length=1
    )
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    dtype: Literal["float32", "float64"] = "float32"


class ViewEncoderConfig(Section):
    """The encoder of one view (a folder ``<workdir>/views/<view>/``).

    ``encoder``: a registered view encoder (:func:`geoembed.nn.views.register_encoder`; checked when training
    starts), or ``auto``: the default encoder of the store's view kind (raster chips -> ``cnn``, a CNN from
    scratch; OSM -> ``hex``, the masked hex CNN for ``hex`` and MLPs for vectors). Built in besides:
    ``stats`` (per-channel chip mean/std -> MLP), ``mlp``, and ``resnet18_frozen`` (a local torchvision
    ResNet-18 state dict in ``backbone_weights``; features computed once in eval mode and cached).
    """

    view: str
    encoder: str = Field(default="auto", min_length=1)
    arrays: list[str] | None = Field(default=None, description="arrays of the store to use (default all)")
    out_dim: int = Field(default=32, ge=1)
    channels: list[int] | None = Field(default=None, description="CNN / hex-CNN widths")
    hidden: list[int] = Field(default_factory=lambda: [64])
    backbone_weights: str | None = None
    backbone_bands: list[int] = Field(default_factory=lambda: [0, 1, 2], description="0-based chip channels")
    backbone_input_size: int | None = Field(default=None, ge=8)
    log1p: bool = Field(default=False, description="apply sign(x)log1p(|x|) before standardising (counts)")

    @model_validator(mode="after")
    def _backbone(self) -> ViewEncoderConfig:
        if self.encoder == "resnet18_frozen" and not self.backbone_weights:
            raise ValueError("encoder resnet18_frozen needs backbone_weights (a local state dict file)")
        return self


class TrainConfig(Section):
    """Multi-view contrastive training (see PAPER.md); writes ``<workdir>/train/`` and ``<workdir>/bundle/``."""

    views: list[ViewEncoderConfig] = Field(
        default_factory=list, description="views to train on (default: every view of the config)"
    )
    coordinate_encoder: CoordinateEncoderConfig = Field(default_factory=CoordinateEncoderConfig)
    embedding_dim: int = Field(default=16, ge=1, le=1024)
    fusion_hidden: int = Field(default=128, ge=1)
    objective: Literal["fused", "pairwise"] = "fused"
    view_pairs: bool = Field(default=False, description="pairwise: also view-vs-view terms")
    temperature_init: float = Field(default=0.07, gt=0)
    temperature_min: float = Field(default=0.01, gt=0)
    learnable_temperature: bool = True
    lr: float = Field(default=1e-3, gt=0)
    coord_lr: float | None = Field(default=None, gt=0, description="coordinate encoder lr (default lr)")
    weight_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=256, ge=2)
    epochs: int = Field(default=50, ge=1)
    patience: int | None = Field(default=10, ge=1, description="early stopping: epochs without improvement")
    monitor: Literal["val_top5", "val_top1", "val_loss"] = Field(
        default="val_top5", description="held-out metric for early stopping and the best epoch"
    )
    min_delta: float = Field(default=0.0, ge=0)
    val_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of spatial blocks held out")
    block_size_m: float = Field(default=2000.0, gt=0, description="blocks when locations lack block_id")
    jitter_m: float = Field(default=0.0, ge=0, description="Gaussian jitter of positive coordinates")
    grad_clip: float | None = Field(default=1.0, gt=0)
    ema_decay: float | None = Field(
        default=None, gt=0, lt=1,
        description="keep an exponential moving average of the weights (per step); it is what is "
        "validated, checkpointed as best and saved in the bundle",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=True, description="bf16 autocast on CUDA")
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        default="off",
        description="torch.compile the model for training steps with this mode (reduce-overhead: CUDA graphs "
        "of forward and backward); off = eager. Checkpoints and the bundle hold the plain module's weights",
    )
    cuda_graph: bool = Field(
        default=False,
        description="CUDA, single process: capture the whole training step (batch gather, forward, backward, "
        "AdamW, EMA) once in a CUDA graph and replay it every step; removes the per-kernel launch cost that "
        "dominates small batches. Ignored on CPU; combine with compile off or default",
    )
    num_threads: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, description="default: the config's top-level seed")
    max_minutes: float | None = Field(default=None, gt=0, description="stop after the epoch that passes it")
    out_of_support_km: float = Field(default=5.0, ge=0)
    retrieval_rows: int = Field(default=4096, ge=10, description="validation rows used for retrieval acc.")

    @field_validator("cuda_graph")
    @classmethod
    def _graph_mode(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("compile") == "reduce-overhead":
            raise ValueError("cuda_graph captures the whole step itself: use it with compile off or default, "
                             "not reduce-overhead (which makes its own CUDA graphs)")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [v.view for v in self.views]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"train.views lists a view twice: {dup}")
        if self.temperature_min > self.temperature_init:
            raise ValueError("temperature_min must not exceed temperature_init")
        return self
