"""The platform: the center (state, central store, API address) and the sites it knows.

`configs/platform.yaml` is the embedded default: two local sites, fab-a and fab-b, each with its
own Ray head and store folder. `{home}` in any string stands for the platform home
($ADCP_HOME, default ~/.adcp), so the same file works for every user.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from configs.errors import ConfigError
from configs.kube import KarmadaConfig, KubeRayRuntime
from configs.lines import LineConfig
from configs.loader import validate
from configs.models import LocalSiteConfig, check_site_name, unique_names
from configs.monitoring import MonitoringConfig
from configs.yaml_files import read_yaml

__all__ = [
    "PLATFORM_FILE",
    "DEFAULT_CLASS_NAMES",
    "ApiConfig",
    "CenterConfig",
    "DirectGateway",
    "DisplayNames",
    "KarmadaGateway",
    "LocalRuntime",
    "PlatformConfig",
    "SiteConfig",
    "SiteReviewConfig",
    "StoreConfig",
    "default_home",
    "load_platform",
]

PLATFORM_FILE = Path(__file__).with_name("platform.yaml")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DISPLAY_MAX = 64

#: Display names of the six built-in classes (data.schema.DEFECT_CLASSES), in Chinese: the people
#: on the line read them. `display_names.classes` in the platform file overrides any of them.
DEFAULT_CLASS_NAMES: dict[str, str] = {
    "particle": "颗粒",
    "scratch": "划伤",
    "mura": "色斑(Mura)",
    "line_defect": "线缺陷",
    "pinhole": "针孔",
    "false_defect": "假缺陷",
}


def _display(v: str, what: str) -> str:
    """A display name: any script, 1..64 characters once trimmed, no control characters."""
    v = v.strip()
    if not v or len(v) > _DISPLAY_MAX or _CONTROL.search(v):
        raise ValueError(f'Got {v!r} for {what}: give 1 to {_DISPLAY_MAX} characters of any script, '
                         "no control characters (tabs, newlines)")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    """An fsspec store: a URL plus the storage options fsspec needs to open it.

    Secrets do not belong here: s3fs reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the
    environment of whoever opens the store.
    """

    url: str = Field(..., description="fsspec URL: file:///..., a plain path, memory://..., s3://bucket/prefix")
    options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v:
            raise ValueError("a store URL may not be empty")
        if "://" not in v:
            if not v.startswith("/"):
                raise ValueError(f'Got "{v}" for a store: give an absolute path or a URL such as s3://bucket/prefix')
            v = Path(v).as_uri()
        return v


class ApiConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the coordinator's HTTP API binds to.")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port at `adcp up`.")
    public_url: str | None = Field(None, description="The coordinator's base URL as the sites reach it "
                                   "(review stations exchange API tokens there); default: http://host:port "
                                   "of the running coordinator")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f'Got "{v}" for api.public_url: give an http:// or https:// base URL')
        return v.rstrip("/") if v else v


class CenterConfig(_Strict):
    state_db: str = Field("{home}/coordinator.db", description="SQLite file of the coordinator's state.")
    store: StoreConfig = Field(default_factory=lambda: StoreConfig(url="{home}/store"))
    api: ApiConfig = Field(default_factory=ApiConfig)


class DirectGateway(_Strict):
    """A site reached at plain base URLs (an ingress, or a local Ray head)."""

    kind: Literal["direct"] = "direct"
    dashboard: str | None = Field(None, description="Ray dashboard / jobs API base URL")
    serve: str | None = Field(None, description="Ray Serve HTTP base URL")
    metrics: str | None = Field(None, description="Ray metrics endpoint URL")
    prometheus: str | None = Field(None, description="Base URL of a site Prometheus; when set, the coordinator "
                                   "reads the site's figures with PromQL (/api/v1/query) instead of scraping Ray")
    token_file: str | None = Field(None, description="File holding the site's Ray auth token")

    @field_validator("dashboard", "serve", "metrics", "prometheus")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f'Got "{v}": give an http:// or https:// base URL')
        return v.rstrip("/") if v else v


class KarmadaGateway(_Strict):
    """A site reached through the Karmada apiserver's aggregated cluster proxy:
    `<apiserver>/apis/cluster.karmada.io/v1alpha1/clusters/<cluster>/proxy/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/`.
    """

    kind: Literal["karmada"] = "karmada"
    kubeconfig: str | None = Field(
        None, description="kubeconfig of the Karmada apiserver; default: the platform's karmada.kubeconfig"
    )
    context: str | None = Field(None, description="kubeconfig context; default: the platform's karmada.context")
    cluster: str = Field(..., description="Karmada Cluster object name")
    namespace: str = Field("ray-system", description="Namespace of the site's Ray services")
    dashboard_service: str = Field("adc-head-svc:8265", description="SERVICE:PORT of the Ray dashboard (jobs API)")
    serve_service: str = Field("adc-serve-serve-svc:8000", description="SERVICE:PORT of Ray Serve's HTTP proxy")
    metrics_service: str = Field("adc-head-svc:8080", description="SERVICE:PORT of the head's Ray metrics")
    prometheus_service: str | None = Field(None, description="SERVICE:PORT of a site Prometheus; when set, the "
                                           "coordinator reads the site's figures with PromQL through the proxy")
    token_file: str | None = Field(
        None, description="File holding the site's Ray auth token (sent as X-Ray-Authorization)"
    )
    training: Literal["jobs-api", "rayjob"] = Field(
        "jobs-api",
        description="How training runs are submitted: jobs-api (Ray's jobs API through the proxy) or rayjob "
        "(a KubeRay RayJob plus a PropagationPolicy pinning it to this cluster, applied to the Karmada "
        "apiserver; needs a kuberay runtime)")
    rayjob_cluster: Literal["existing", "own"] = Field(
        "existing",
        description="rayjob: run on the site's RayCluster, or on a cluster of the job's own sized for its GPUs",
    )

    @field_validator("dashboard_service", "serve_service", "metrics_service", "prometheus_service")
    @classmethod
    def _service(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?:([a-z0-9-]+)", v):
            raise ValueError(f'Got "{v}": give SERVICE:PORT, e.g. adc-head-svc:8265 (a port number or name)')
        return v


class SiteReviewConfig(_Strict):
    """The site's review queue and station: where its review database is, how much is audited."""

    db_url: str | None = Field(None, description="SQLAlchemy URL of the site review DB (sqlite:///..., "
                               "postgresql+psycopg://...); null: sqlite:///<home>/sites/<name>/review.db "
                               "for local sites")
    db_secret: str | None = Field(None, description="KubeRay renders: name of the Secret holding the DB "
                                  "URL under key `url` (default adcp-review-db-<site>)")
    audit_rate: float = Field(0.02, ge=0.0, le=1.0, description="Share of automatic decisions also "
                              "queued for a human verdict (measures escapes and overkill)")
    lease_s: int = Field(300, ge=10, le=86400, description="Seconds a reviewer holds a claimed batch")

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError(f'Got "{v}" for review.db_url: give an SQLAlchemy URL such as '
                             "sqlite:////path/review.db or postgresql+psycopg://user@host/db")
        return v

    @field_validator("db_secret")
    @classmethod
    def _db_secret(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", v):
            raise ValueError(f'Got "{v}" for review.db_secret: a Secret name is lower-case letters, '
                             "digits, '-' and '.', starting and ending with a letter or digit")
        return v


class DisplayNames(_Strict):
    """Names for people (any script) of products and classes; sites carry theirs in `display_name`."""

    products: dict[str, str] = Field(default_factory=dict, description="product id -> display name")
    classes: dict[str, str] = Field(default_factory=dict, description="class name -> display name "
                                    "(over DEFAULT_CLASS_NAMES)")

    @field_validator("products", "classes")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        return {k: _display(n, f"the display name of {k}") for k, n in v.items()}

    def class_names(self) -> dict[str, str]:
        """DEFAULT_CLASS_NAMES with this platform's `classes` over them."""
        return {**DEFAULT_CLASS_NAMES, **self.classes}


class LocalRuntime(_Strict):
    """The site runs as a local Ray head on this machine (`adcp up` starts it)."""

    kind: Literal["local"] = "local"
    num_cpus: int = Field(4, ge=1, le=1024)
    num_gpus: int = Field(0, ge=0, le=64, description="GPUs declared to Ray (real or not)")
    resources: dict[str, float] = Field(default_factory=dict)
    object_store_mb: int = Field(512, ge=100)


class SiteConfig(_Strict):
    """One site: how the center reaches it, where its store is, how artifacts get there."""

    name: str
    display_name: str | None = Field(None, description="Name for people, any script (e.g. 北京一厂); "
                                     "`name` stays a DNS label")
    runtime: LocalRuntime | KubeRayRuntime | None = Field(
        None, discriminator="kind",
        description="local: `adcp up` runs the site on this machine; kuberay: `adcp render` builds its "
        "KubeRay objects; none: an existing Ray cluster reached through the gateway.",
    )
    gateway: DirectGateway | KarmadaGateway = Field(default_factory=DirectGateway, discriminator="kind")
    store: StoreConfig
    transfer: Literal["push", "pull"] = Field(
        "push",
        description="push: the center writes into the site store; pull: a Ray job at the site "
        "reads from the central store (for stores the center cannot reach).",
    )
    registry: str | None = Field(None, description="host:port of the site's image registry")
    labels: dict[str, str] = Field(default_factory=dict)
    review: SiteReviewConfig = Field(default_factory=SiteReviewConfig,
                                     description="Review queue and station settings")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_site_name(v)

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, v: str | None) -> str | None:
        return None if v is None else _display(v, "display_name")

    @field_validator("gateway", mode="before")
    @classmethod
    def _direct_by_default(cls, v: Any) -> Any:
        return {"kind": "direct", **v} if isinstance(v, dict) and "kind" not in v else v

    @field_validator("runtime", mode="before")
    @classmethod
    def _local_by_default(cls, v: Any) -> Any:
        return {"kind": "local", **v} if isinstance(v, dict) and "kind" not in v else v

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        if v is not None and not _HOST_PORT.match(v):
            raise ValueError(f'Got "{v}" for registry: give HOST or HOST:PORT, no scheme')
        return v

    @model_validator(mode="after")
    def _reachable(self) -> SiteConfig:
        if not self.local and self.gateway.kind == "direct" and not self.gateway.dashboard:
            raise ValueError(f"site {self.name}: a site that is not local needs gateway.dashboard "
                             "(or gateway.kind: karmada)")
        if (self.gateway.kind == "karmada" and self.gateway.training == "rayjob"
                and not isinstance(self.runtime, KubeRayRuntime)):
            raise ValueError(f"site {self.name}: gateway.training rayjob needs runtime.kind kuberay "
                             "(the RayJob is built from it)")
        return self

    @property
    def title(self) -> str:
        """The name people see: display_name, else name."""
        return self.display_name or self.name

    @property
    def review_db_secret(self) -> str:
        """KubeRay renders: the Secret holding this site's review DB URL (key `url`)."""
        return self.review.db_secret or f"adcp-review-db-{self.name}"

    @property
    def local(self) -> bool:
        """True for sites `adcp up` runs on this machine."""
        return isinstance(self.runtime, LocalRuntime)

    def local_config(self) -> LocalSiteConfig:
        """The local Ray head's settings (`raycluster.local.start_site`)."""
        rt = self.runtime
        if not isinstance(rt, LocalRuntime):
            raise ConfigError(f"Site {self.name} does not run on this machine.", hint="Start it where it runs.")
        return LocalSiteConfig(name=self.name, num_cpus=rt.num_cpus, num_gpus=rt.num_gpus,
                               resources=rt.resources, object_store_mb=rt.object_store_mb,
                               store=self.store.url)


class PlatformConfig(_Strict):
    center: CenterConfig = Field(default_factory=CenterConfig)
    karmada: KarmadaConfig = Field(default_factory=KarmadaConfig, description="Production only")
    sites: list[SiteConfig] = Field(default_factory=list)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig,
                                         description="Collection interval, history and alert rules")
    display_names: DisplayNames = Field(default_factory=DisplayNames,
                                        description="Display names of products and classes")
    lines: list[LineConfig] = Field(default_factory=list, description="Model lines: retraining, gate, shadow "
                                    "and staged release policy (configs/lines.py)")

    @field_validator("sites")
    @classmethod
    def _unique(cls, v: list[SiteConfig]) -> list[SiteConfig]:
        unique_names([s.name for s in v], "site names")
        return v

    @field_validator("lines")
    @classmethod
    def _unique_lines(cls, v: list[LineConfig]) -> list[LineConfig]:
        unique_names([line.name for line in v], "model line names")
        return v

    def site(self, name: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.name == name), None)

    def line(self, name: str) -> LineConfig | None:
        return next((line for line in self.lines if line.name == name), None)


def _expand(value: Any, home: str) -> Any:
    if isinstance(value, str):
        return value.replace("{home}", home)
    if isinstance(value, list):
        return [_expand(v, home) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, home) for k, v in value.items()}
    return value


def default_home() -> Path:
    return Path(os.environ.get("ADCP_HOME") or Path.home() / ".adcp").expanduser()


def load_platform(path: str | Path | None = None, home: str | Path | None = None) -> PlatformConfig:
    """Parse the platform file (default `configs/platform.yaml`), with `{home}` expanded."""
    file = Path(path) if path else PLATFORM_FILE
    raw = read_yaml(file, "Platform file") or {}
    home = str(Path(home or default_home()).resolve())
    raw.setdefault("center", {})
    raw["center"].setdefault("store", {"url": "{home}/store"})
    return validate(PlatformConfig, _expand(raw, home), f"platform file {file}")
