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
    dropout: float = Field(
        default=0.0, ge=0, lt=1,
        description="dropout probability in every hidden layer, in training only (SIREN: on the linear "
        "output before the sine, as SatCLIP's SIREN; MLP: after the activation). The reference uses 0.5 "
        "in its SIREN. The bundle's encoder has no dropout (its spec leaves it out)",
    )

    def spec(self) -> dict:
        """The network part of the coordinate encoder spec (``dropout`` only when set)."""
        if self.type == "siren":
            out = {"type": "siren", "hidden": list(self.hidden), "w0": self.w0, "w0_hidden": self.w0_hidden}
        else:
            out = {"type": "mlp", "hidden": list(self.hidden), "activation": self.activation}
        if self.dropout > 0:
            out["dropout"] = self.dropout
        return out


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
    log1p: bool = Field(default=False, description="apply sign(x)log1p(|x|) before scaling (counts)")
    scale: Literal["standardise", "divide"] = Field(
        default="standardise",
        description="input scaling of every array of the view (before a frozen backbone too): standardise "
        "= per channel by the store's mean and std; divide = divided by `divide_by` (the reference: "
        "images / 255, OSM counts / a per-channel constant)",
    )
    divide_by: float | list[float] | Literal["max"] | None = Field(
        default=None,
        description="scale: divide: one divisor for all channels (e.g. 255), one per channel (the "
        "paper's OSM divisors: 48, 1048, 377, 189, 17, 10), or `max` (each channel's maximum over all "
        "locations)",
    )
    head_norm: Literal["layernorm", "none"] = Field(
        default="layernorm",
        description="the norm after the linear head on frozen-backbone features (resnet18_frozen); none "
        "= the reference's bare Linear 512 -> out_dim",
    )

    @model_validator(mode="after")
    def _backbone(self) -> ViewEncoderConfig:
        if self.encoder == "resnet18_frozen" and not self.backbone_weights:
            raise ValueError("encoder resnet18_frozen needs backbone_weights (a local state dict file)")
        if self.scale == "divide" and self.divide_by is None:
            raise ValueError("scale: divide needs divide_by (a number, one number per channel, or max)")
        if self.scale != "divide" and self.divide_by is not None:
            raise ValueError("divide_by is only used with scale: divide")
        divisors = self.divide_by if isinstance(self.divide_by, list) else [self.divide_by]
        if any(isinstance(d, float | int) and not d > 0 for d in divisors):
            raise ValueError(f"divide_by must be positive, got {self.divide_by}")
        if isinstance(self.divide_by, list) and not self.divide_by:
            raise ValueError("divide_by is an empty list")
        if self.head_norm != "layernorm" and self.encoder != "resnet18_frozen":
            raise ValueError(f"head_norm: {self.head_norm} applies to the head of a frozen backbone "
                             f"(encoder resnet18_frozen), not to encoder {self.encoder}")
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
    temperature_min: float | None = Field(
        default=0.01, gt=0,
        description="lower bound of the learnable temperature (the logit scale is clamped to "
        "[1, 1/temperature_min]); null = unclamped, as the reference",
    )
    learnable_temperature: bool = True
    lr: float = Field(default=1e-3, gt=0)
    coord_lr: float | None = Field(default=None, gt=0, description="coordinate encoder lr (default lr)")
    weight_decay: float = Field(default=0.01, ge=0)
    weight_decay_exclude: list[Literal["bias", "norm", "temperature"]] = Field(
        default_factory=list,
        description="parameters AdamW does not decay: bias = every bias, norm = the parameters of norm "
        "layers (LayerNorm, BatchNorm, GroupNorm), temperature = the learnable logit scale (the reference "
        "decays weight matrices only: all three)",
    )
    batch_size: int = Field(default=256, ge=2)
    epochs: int = Field(default=50, ge=1)
    patience: int | None = Field(
        default=10, ge=1,
        description="early stopping: epochs without improvement; null = no early stopping (the reference)",
    )
    monitor: Literal["val_top5", "val_top1", "val_loss"] = Field(
        default="val_top5", description="held-out metric for early stopping and the best epoch"
    )
    min_delta: float = Field(default=0.0, ge=0)
    validation: Literal["spatial_block", "random"] = Field(
        default="spatial_block",
        description="the held-out split: spatial_block = whole spatial blocks (no neighbour of a training "
        "location leaks in); random = a random share of locations (the reference; it hides spatial "
        "memorisation)",
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of locations held out")
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
    ensemble: int = Field(
        default=1, ge=1, le=16,
        description="train this many members (seeds seed, seed+1, ...) on the same locations and ship the "
        "mean of their coordinate encoders after aligning them by orthogonal Procrustes: steadier "
        "embeddings across seeds, at one training per member (max_minutes applies to each member)",
    )
    ensemble_jobs: int = Field(
        default=1, ge=1,
        description="CPU: train this many ensemble members at once, each in its own process with num_threads "
        "threads (the same members, bit for bit, as one at a time)",
    )
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
        if self.temperature_min is not None and self.temperature_min > self.temperature_init:
            raise ValueError("temperature_min must not exceed temperature_init")
        if len(set(self.weight_decay_exclude)) != len(self.weight_decay_exclude):
            raise ValueError(f"weight_decay_exclude lists an entry twice: {self.weight_decay_exclude}")
        return self
