"""The config models shared by the CLI, the train job and the Serve app (one model per config).

Every model forbids unknown keys, so a typo in YAML or in a deployment's `user_config` is an
error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "GateJobConfig",
    "LocalSiteConfig",
    "ServeConfig",
    "ServeUserConfig",
    "SynthConfig",
    "TrainConfig",
    "TrainingJobConfig",
    "TuneConfig",
    "artifact_name",
    "check_site_name",
    "unique_names",
]

_SITE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
#: The artifact name rule of `data.artifacts` (configs imports nothing of ours, so it is repeated).
_ARTIFACT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def artifact_name(text: str) -> str:
    """`text` made a valid artifact name: lower case, runs of other characters turned into one
    '-', at most 63 characters (a long name keeps a hash of the whole, so names stay distinct)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).lstrip("._-")
    if len(name) > 63:
        name = name[:54].rstrip("._-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name or "checkpoint"


def unique_names(names: list[str], what: str) -> None:
    """ValueError naming the repeated ones when `names` (of `what`, e.g. "site names") repeat."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dup)}")


def check_site_name(v: str) -> str:
    """A site name is a DNS label of at most 40 characters (it becomes part of Kubernetes names)."""
    if not _SITE_NAME.match(v):
        raise ValueError(
            f'Got "{v}" for site name. A site name is a DNS label: lower-case letters, digits '
            "and '-', starting and ending with a letter or digit, at most 40 characters."
        )
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Strict):
    """What `adcp data synth` generates."""

    images: int = Field(3000, ge=6, le=1_000_000, description="Number of images to generate.")
    size: int = Field(64, ge=64, le=256, description="Image side in pixels (square images).")
    seed: int = Field(0, ge=0, description="Seed; the same seed gives byte-identical images.")
    shard_rows: int = Field(1000, ge=1, description="Rows per Parquet shard.")
    site: str = Field("fab-a", description="Site recorded in each image's metadata.")


class TrainingJobConfig(_Strict):
    """What a training run and a tuning run have in common: the dataset they read, where the model
    goes, the model's shape and loss, and the name, site and lineage the exported model records.
    `TrainConfig` and `TuneConfig` add their own options; each field is one `--snake-case` flag of
    the job's command line."""

    dataset: str = Field(..., description="fsspec URL of a dataset (a folder written by `adcp data synth`, "
                         "or a dataset artifact's manifest URL).")
    output: str = Field(..., description="fsspec URL where the exported model is written.")
    storage_path: str | None = Field(None, description="fsspec URL for the run's checkpoints.")
    run_name: str | None = Field(None, description="Run name under storage_path; default: the last part of output.")
    image_size: int = Field(64, ge=32, le=512, description="Model input side in pixels.")
    classes: list[str] | None = Field(
        None, description="Class list; default: the classes in the dataset manifest."
    )
    width: int = Field(16, ge=4, le=256, description="Channels of the first CNN stage.")
    weight_decay: float = Field(5e-4, ge=0, le=1.0)
    defect_weight: float = Field(
        2.0,
        ge=1.0,
        le=20.0,
        description="Loss weight of real-defect classes relative to no-defect classes: an escape "
        "(a real defect called false) costs a factory more than a false alarm.",
    )
    target_precision: float = Field(
        0.995,
        gt=0.5,
        lt=1.0,
        description="Per-class confidence thresholds are calibrated on the validation split so "
        "that auto-decided images of that class reach this precision.",
    )
    model_name: str | None = Field(None, description="Exported model name; default: adc-<dataset>.")
    model_version: str | None = Field(None, description="Exported model version; default: UTC time.")
    seed: int = Field(0, ge=0)
    site: str = Field("local", description="Site that runs the job (recorded in lineage).")
    code_version: str | None = Field(None, description="Code version recorded in lineage.")
    artifact_store: str | None = Field(
        None,
        description="fsspec URL of an artifact store: the exported model is published there as "
        "model/<model_name>@<model_version>.",
    )
    lineage: dict[str, Any] = Field(
        default_factory=dict,
        description="Merged into the exported model's lineage (a JSON object on the command line).",
    )
    annotations: str | None = Field(
        None,
        description="Manifest URL of an annotations artifact whose labels replace the dataset's own "
        "(images without a label there are skipped; the model's classes are the labels present).",
    )

    def _run_or(self, fallback: str) -> str:
        return self.run_name or self.output.rstrip("/").rsplit("/", 1)[-1] or fallback


class TrainConfig(TrainingJobConfig):
    """Options of `python -m train_jobs.train`; the CLI builds the job's arguments from this."""

    dataset: str = Field(..., description="fsspec URL of a dataset written by `adcp data synth`.")
    storage_path: str | None = Field(
        None,
        description="fsspec URL for Ray Train checkpoints; default: `<output>-checkpoints`. "
        "Re-running with the same storage path resumes from the latest checkpoint.",
    )
    run_name: str | None = Field(
        None,
        description="Ray Train run name under storage_path (default: the last part of output). "
        "A run that already has checkpoints there continues from the latest one.",
    )
    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096, description="Batch size per worker.")
    lr: float = Field(4e-3, gt=0, le=1.0, description="Peak learning rate (one-cycle schedule).")
    augment: float = Field(
        1.0, ge=0.0, le=1.0, description="Augmentation strength: 0 none, 1 full."
    )
    num_workers: int = Field(2, ge=1, le=256, description="Ray Train workers.")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = Field(
        False,
        description="One GPU per worker (GPU sites). Where the site declares GPUs the machine lacks, "
        "they are still reserved and the workers train on CPU (with an ADCP_WARNING line).",
    )
    artifact_store: str | None = Field(
        None,
        description="fsspec URL of an artifact store: each epoch's checkpoint is published there as "
        "checkpoint/<checkpoint_name>@<epoch> and the exported model as model/<model_name>@<model_version>.",
    )
    checkpoint_name: str | None = Field(
        None,
        description="Artifact name of the published checkpoints; default: <model_name>-<run> made a "
        "valid artifact name.",
    )
    init_checkpoint: str | None = Field(
        None,
        description="Checkpoint to start from when the run has none of its own: a checkpoint "
        "artifact's manifest URL (<store>/artifacts/checkpoint/<name>/<epoch>.json) or a checkpoint "
        "folder URL. Training continues after its epoch with its model and optimizer state.",
    )
    init_model: str | None = Field(
        None,
        description="An exported model to fine-tune from (a model folder or a model artifact's manifest URL): "
        "its weights start the run when its classes and width are this run's, else the run trains from "
        "scratch and says why. A checkpoint (the run's own, or init_checkpoint) goes before it.",
    )
    extra_dataset: list[str] = Field(
        default_factory=list,
        description="More datasets to train on (URLs, e.g. a line's reviewed images), each paired with the "
        "extra_annotations URL at the same position whose labels it trains with. Each image's own split "
        "decides train/val/test; the model's classes are the union of the labels present.",
    )
    extra_annotations: list[str] = Field(
        default_factory=list, description="Annotations URL for each extra_dataset, in the same order."
    )

    @field_validator("checkpoint_name")
    @classmethod
    def _checkpoint_name(cls, v: str | None) -> str | None:
        if v is not None and not _ARTIFACT_NAME.match(v):
            raise ValueError(
                f'Got "{v}" for checkpoint_name. An artifact name is 1-63 characters of a-z 0-9 . _ -, '
                "starting with a letter or digit."
            )
        return v

    @model_validator(mode="after")
    def _extra_pairs(self) -> TrainConfig:
        if len(self.extra_dataset) != len(self.extra_annotations):
            raise ValueError(
                "extra_dataset and extra_annotations go in pairs. Found: "
                f"{len(self.extra_dataset)} extra_dataset, {len(self.extra_annotations)} extra_annotations"
            )
        return self

    def extra(self) -> list[tuple[str, str]]:
        """The extra (dataset URL, annotations URL) pairs."""
        return list(zip(self.extra_dataset, self.extra_annotations))

    def checkpoint_artifact_name(self, model_name: str) -> str:
        """The artifact name of this run's checkpoints, given the model's resolved name."""
        return self.checkpoint_name or artifact_name(f"{model_name}-{self.run}")

    @property
    def run(self) -> str:
        """The Ray Train run name under the checkpoint path."""
        return self._run_or("adc")

    @property
    def checkpoint_path(self) -> str:
        return self.storage_path or self.output.rstrip("/") + "-checkpoints"


class TuneConfig(TrainingJobConfig):
    """Options of `python -m train_jobs.tune`: a Ray Tune search over learning rate, batch size and
    augmentation strength; the best trial's model is exported like a training run's."""

    dataset: str = Field(..., description="fsspec URL of a dataset (a folder or a dataset artifact).")
    output: str = Field(..., description="fsspec URL where the best trial's model is exported.")
    storage_path: str | None = Field(
        None, description="fsspec URL for Ray Tune's trial results and checkpoints; default: `<output>-tune`."
    )
    run_name: str | None = Field(None, description="Ray Tune run name; default: the last part of output.")
    classes: list[str] | None = Field(None, description="Class list; default: the dataset's classes.")
    defect_weight: float = Field(2.0, ge=1.0, le=20.0, description="Loss weight of real-defect classes.")
    target_precision: float = Field(0.995, gt=0.5, lt=1.0, description="Precision the thresholds are calibrated for.")
    artifact_store: str | None = Field(
        None, description="fsspec URL of an artifact store: the best model is published there as "
        "model/<model_name>@<model_version>."
    )
    lineage: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the exported model's lineage (JSON on the command line)."
    )
    trials: int = Field(8, ge=1, le=1000, description="Configurations sampled from the search space.")
    epochs: int = Field(6, ge=1, le=1000, description="Most epochs a trial trains (ASHA stops weak ones earlier).")
    grace_epochs: int = Field(1, ge=1, description="Epochs every trial gets before ASHA may stop it.")
    reduction_factor: int = Field(2, ge=2, le=16, description="ASHA keeps 1/reduction_factor of trials per rung.")
    lr_min: float = Field(1e-3, gt=0, le=1.0, description="Learning rate search range, log-uniform.")
    lr_max: float = Field(1e-2, gt=0, le=1.0)
    batch_sizes: list[int] = Field([32, 64], min_length=1, description="Batch sizes to choose from.")
    augment_min: float = Field(0.0, ge=0.0, le=1.0, description="Augmentation strength range, uniform.")
    augment_max: float = Field(1.0, ge=0.0, le=1.0)
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs Ray reserves per trial (torch uses as many threads).")
    max_concurrent: int | None = Field(None, ge=1, description="Trials run at once; default: as many as fit.")

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if not 1 <= b <= 4096]
        if bad:
            raise ValueError(f"Got {bad} in batch_sizes. A batch size is between 1 and 4096.")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> TuneConfig:
        for low, high in (("lr_min", "lr_max"), ("augment_min", "augment_max")):
            if getattr(self, high) < getattr(self, low):
                raise ValueError(
                    f"{high} must be greater than or equal to {low}. "
                    f"Found: {low}={getattr(self, low)}, {high}={getattr(self, high)}"
                )
        return self

    @property
    def run(self) -> str:
        return self._run_or("adc-tune")

    @property
    def tune_path(self) -> str:
        return self.storage_path or self.output.rstrip("/") + "-tune"


class ServeUserConfig(_Strict):
    """The Serve deployment's `user_config`: changing it reconfigures replicas in place."""

    model_uri: str | None = Field(
        None, description="fsspec URL of an exported model directory (model + metadata.json)."
    )
    max_batch_size: int = Field(64, ge=1, le=1024, description="`@serve.batch` maximum batch.")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1.0, description="How long a partial batch waits for more requests."
    )
    max_image_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest encoded image accepted, in bytes."
    )
    max_images_per_request: int = Field(512, ge=1, le=10_000)
    min_side: int = Field(16, ge=1, description="Smallest image side accepted, in pixels.")
    max_side: int = Field(4096, ge=16, description="Largest image side accepted, in pixels.")
    audit_rate: float = Field(
        0.02, ge=0, le=1, description="Share of automatic (defect / false_defect) decisions also queued "
        "for a human verdict (why=audit), to measure escapes and overkill in production."
    )
    thresholds: dict[str, float] | None = Field(
        None, description="Per-class confidence thresholds that replace the model's own for the "
        "classes named (e.g. the gate's recalibrated ones); other classes keep the model's."
    )
    shadow_model_uri: str | None = Field(
        None, description="fsspec URL of a challenger model run beside the champion on a share of "
        "the images, off the caller's path; callers always get the champion's answer."
    )
    shadow_rate: float = Field(
        0.0, ge=0, le=1, description="Share of images also classified by the shadow model (0: none)."
    )
    shadow_thresholds: dict[str, float] | None = Field(
        None, description="Thresholds that replace the shadow model's own for the classes named."
    )

    @field_validator("thresholds", "shadow_thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: t for k, t in (v or {}).items() if not 0.0 <= t <= 1.0}
        if bad:
            raise ValueError(f"Got {bad} in thresholds. A threshold is a confidence from 0 to 1.")
        return v

    def fingerprint(self) -> str:
        """A short hash of every field: what a replica reports (`GET /v1/model` "config") so a
        rollout can see its configuration took effect, the shadow and thresholds included."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _sides(self) -> ServeUserConfig:
        if self.max_side < self.min_side:
            raise ValueError(
                "max_side must be greater than or equal to min_side. "
                f"Found: min_side={self.min_side}, max_side={self.max_side}"
            )
        return self


class ServeConfig(_Strict):
    """How the ADC Serve app is deployed at a site."""

    app_name: str = Field("adc")
    route_prefix: str = Field("/")
    num_replicas: int = Field(1, ge=1, le=1000)
    replica_cpus: float = Field(1.0, ge=0)
    replica_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    user_config: ServeUserConfig = Field(default_factory=ServeUserConfig)

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f'Got "{v}" for route_prefix. Route prefix must start with "/".')
        return v


class LocalSiteConfig(_Strict):
    """A site run as a local Ray head on this machine (the embedded default)."""

    name: str = Field("fab-a", description="Site name: DNS label, lower case, <= 40 characters.")
    num_cpus: int = Field(
        4,
        ge=1,
        le=1024,
        description="Logical CPUs Ray may schedule. 4 even on 2 cores: Ray Data plus two Train "
        "workers deadlock at 2.",
    )
    num_gpus: int = Field(0, ge=0, le=64)
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources.")
    object_store_mb: int = Field(
        768, ge=100, description="Object store cap in MiB (Ray's default is 30% of RAM per head)."
    )
    store: str | None = Field(None, description="fsspec URL of the site store; default under home.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_site_name(v)


class GateJobConfig(_Strict):
    """Options of `python -m train_jobs.gate`: score a challenger (and the champion it would replace)
    on the same held-out data and write the pass/fail report; the coordinator builds the job's
    arguments from this (`configs.protocol.entrypoint(cfg, GATE_MODULE)`)."""

    challenger: str = Field(..., description="fsspec URL of the challenger model (a model folder or a model "
                            "artifact's manifest URL).")
    champion: str | None = Field(None, description="fsspec URL of the champion model it would replace; without "
                                 "one only the limits apply.")
    golden: str = Field(..., description="fsspec URL of the golden dataset (held out, never trained on).")
    recent_dataset: str | None = Field(None, description="fsspec URL of the recent reviewed images; their "
                                       "held-out slice (images never trained on) joins the golden set.")
    recent_annotations: str | None = Field(None, description="Annotations URL with the verdict labels of "
                                           "recent_dataset (default: the dataset's own labels).")
    limits: dict[str, Any] = Field(default_factory=dict, description="The line's gate limits "
                                   "(configs.lines.GateLimits as a JSON object, checked by the job; missing keys "
                                   "take its defaults).")
    output: str = Field(..., description="fsspec URL of a folder: the report is written there as gate.json.")
    target_precision: float | None = Field(None, gt=0.5, le=1.0, description="Precision the challenger's "
                                           "thresholds are recalibrated for; default: what it was trained with, "
                                           "else the limits' min_auto_precision.")
    batch_size: int = Field(256, ge=1, le=4096, description="Images per inference batch.")
    threads: int = Field(1, ge=1, le=256, description="torch intra-op threads.")
