"""Configuration models (pydantic, `extra="forbid"`), their default YAML, and the error hierarchy."""

from configs.errors import (
    AdcpError,
    ConfigError,
    InputError,
    IntegrityError,
    JobError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    SiteError,
    UnsupportedMediaError,
)
from configs.loader import load_defaults
from configs.models import LocalSiteConfig, ServeConfig, ServeUserConfig, SynthConfig, TrainConfig

__all__ = [
    "AdcpError",
    "ConfigError",
    "InputError",
    "IntegrityError",
    "JobError",
    "LocalSiteConfig",
    "ModelUnavailableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServeConfig",
    "ServeUserConfig",
    "SiteError",
    "SynthConfig",
    "TrainConfig",
    "UnsupportedMediaError",
    "load_defaults",
]
