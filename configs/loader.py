"""Load the default YAML beside the models, or a user's file, into typed models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from configs.errors import ConfigError
from configs.models import LocalSiteConfig, ServeConfig, SynthConfig, TrainConfig
from configs.yaml_files import read_yaml

__all__ = ["DEFAULTS_FILE", "Defaults", "load_defaults", "validate"]

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class Defaults(BaseModel):
    """The sections of `defaults.yaml`."""

    model_config = ConfigDict(extra="forbid")

    synth: SynthConfig = Field(default_factory=SynthConfig)
    site: LocalSiteConfig = Field(default_factory=LocalSiteConfig)
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig fields other than dataset and output."
    )
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("dataset", "output"):
            if key in v:
                raise ValueError(f"train.{key} is given per run, not in the defaults file")
        TrainConfig(dataset="-", output="-", **v)  # validates names and values
        return v

    def train_config(self, **overrides: Any) -> TrainConfig:
        """A TrainConfig from these defaults plus `overrides` (None values are ignored)."""
        merged = {**self.train, **{k: v for k, v in overrides.items() if v is not None}}
        return validate(TrainConfig, merged, "train options")


def validate(model: type[BaseModel], data: Any, where: str) -> Any:
    """`model.model_validate(data)`, turning pydantic's error into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"Invalid {where}: {problems}.") from e


def load_defaults(path: str | Path | None = None) -> Defaults:
    """Parse `path` (default: `configs/defaults.yaml`). Raises ConfigError on any invalid key."""
    file = Path(path) if path else DEFAULTS_FILE
    raw = read_yaml(file, "Config file") or {}
    raw["train"] = raw.get("train") or {}
    return validate(Defaults, raw, f"config file {file}")
