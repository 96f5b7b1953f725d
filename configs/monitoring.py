"""Monitoring settings: how often the coordinator reads every site, how much history it keeps, and
the alert rules it evaluates (the `monitoring:` section of the platform file).

Defaults and why: a 5 s sweep is what a wall screen needs to look live while 100 sites cost the
center ~100 small HTTP reads per sweep; a 2 s per-site timeout keeps one dead site from holding a
sweep past its interval; 24 h of history with raw points for the last hour and 1-minute means
beyond answers "what happened overnight" in a few thousand rows per site and figure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from configs.models import unique_names

__all__ = ["FIGURES", "LOGIN_TTL_S", "MAX_LOGIN_TTL_S", "QUALITY_FIGURES", "AlertRule", "MonitoringConfig",
           "default_rules"]

#: How long the big screen's one-time login address works: long enough to walk from a laptop to
#: the wall screen; short if the URL leaks. The CLI (`adcp dashboard --url --valid-for`) and the
#: coordinator's route share these bounds.
LOGIN_TTL_S = 600.0
MAX_LOGIN_TTL_S = 24 * 3600.0

#: Every figure the collector produces for a site (the names of series, `latest` and alert rules).
FIGURES = (
    "cpu_util", "mem_used", "mem_total", "disk_used", "disk_total", "net_rx_bps", "net_tx_bps",
    "gpu_util", "gpu_mem_used", "gpu_mem_total", "object_store_used", "jobs_running",
    "serve_replicas_healthy", "serve_replicas_total", "inference_rps", "images_total",
    "automation_rate", "review_share", "error_rate", "latency_p50_ms", "latency_p99_ms",
    "mem_util", "disk_util",  # derived percentages (used / total), for rules and tiles
    "review_record_errors",  # review recording errors of the ADC app since the previous read
)

#: Production-quality figures of one (product, model version) at a site, from its review station's
#: stats (`coordinator.monitoring.quality`), and the count behind each, which a rule's `min_count`
#: asks of it before the figure counts.
QUALITY_FIGURES = {
    "escape_rate": "audited_false_defect", "overkill_rate": "audited_defect", "automation_rate": "classified",
    "backlog": "backlog", "backlog_oldest_s": "backlog",
}


class AlertRule(BaseModel):
    """One alert rule: a site unreachable for `for_s` seconds, a figure above `threshold` for
    `for_s` seconds, or a production-quality figure of any product and model version at the site
    above `threshold` with at least `min_count` behind it. An alert resolves as soon as its
    condition no longer holds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Unique rule name, shown with each alert")
    kind: Literal["site_unreachable", "metric_above", "quality_above"] = Field(
        ..., description="site_unreachable: the site's last sweeps failed; metric_above: a figure above threshold; "
        "quality_above: a quality figure of one product and model version above threshold")
    metric: str | None = Field(None, description=f"metric_above: the figure, one of {', '.join(FIGURES)}; "
                               f"quality_above: one of {', '.join(QUALITY_FIGURES)}")
    threshold: float | None = Field(None, description="metric_above and quality_above: the level, in the figure's "
                                    "unit (percent for *_util, a share 0..1 for *_rate/*_share, seconds for *_s)")
    min_count: int = Field(0, ge=0, description="quality_above only: the fewest items behind the figure (audited "
                           "calls for escape_rate and overkill_rate) for it to count; a rate from 3 audits says little")
    for_s: float = Field(0, ge=0, le=7 * 86400, description="Seconds the condition must hold before the alert fires")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="How urgent the alert is")
    description: str = Field("", description="What the alert means and what to do, shown with it")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> AlertRule:
        names = QUALITY_FIGURES if self.kind == "quality_above" else FIGURES
        if self.metric is not None and self.metric not in names:
            raise ValueError(f'Got "{self.metric}" for metric. Allowed: {", ".join(names)}')
        if self.kind in ("metric_above", "quality_above") and (self.metric is None or self.threshold is None):
            raise ValueError(f"rule {self.name}: {self.kind} needs metric and threshold. "
                             f"Found: metric={self.metric}, threshold={self.threshold}")
        if self.min_count and self.kind != "quality_above":
            raise ValueError(f"rule {self.name}: min_count is for quality_above rules. Found: kind={self.kind}")
        if self.kind == "site_unreachable" and (self.metric is not None or self.threshold is not None):
            raise ValueError(f"rule {self.name}: site_unreachable takes no metric or threshold. "
                             f"Found: metric={self.metric}, threshold={self.threshold}")
        return self


def default_rules() -> list[AlertRule]:
    """The rules a platform gets when its file names none."""
    return [
        AlertRule(name="site_unreachable", kind="site_unreachable", for_s=15, severity="critical",
                  description="The coordinator cannot read the site through its gateway."),
        AlertRule(name="cpu_high", kind="metric_above", metric="cpu_util", threshold=90, for_s=300,
                  description="CPU above 90 % for 5 minutes."),
        AlertRule(name="disk_high", kind="metric_above", metric="disk_util", threshold=90, for_s=300,
                  description="Disk above 90 % full for 5 minutes."),
        AlertRule(name="review_share_high", kind="metric_above", metric="review_share", threshold=0.5, for_s=600,
                  description="More than half of the ADC answers go to human review: the model may not fit the line."),
        AlertRule(name="error_rate_high", kind="metric_above", metric="error_rate", threshold=0.05, for_s=300,
                  severity="critical", description="More than 5 % of ADC requests fail (5xx)."),
        AlertRule(name="escape_rate_high", kind="quality_above", metric="escape_rate", threshold=0.005,
                  min_count=200, severity="critical",
                  description="Over 0.5 % of the audited automatic false-defect calls of a product and model "
                  "version were real defects (200 audited or more): defects escape; review the model."),
        AlertRule(name="review_backlog_old", kind="quality_above", metric="backlog_oldest_s", threshold=3600,
                  description="An image has waited over an hour for a human verdict: staff the review station."),
        AlertRule(name="review_record_errors", kind="metric_above", metric="review_record_errors", threshold=0,
                  description="The ADC app failed to record review items since the last read (site store or "
                  "review DB): see the Serve replica logs."),
    ]


class MonitoringConfig(BaseModel):
    """How the coordinator collects, keeps and judges every site's figures."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between sweeps over every site")
    timeout_s: float = Field(2.0, gt=0, le=600, description="Seconds one site may take to answer within a sweep")
    workers: int = Field(32, ge=1, le=512, description="Sites read at once (threads)")
    retention_s: float = Field(86400, gt=0, description="Seconds of history kept per site and figure (24 h)")
    raw_s: float = Field(3600, gt=0, description="Seconds of history kept at full resolution; older points "
                         "are merged into `downsample_s` means")
    downsample_s: float = Field(60, gt=0, description="Bucket width (s) of the means kept beyond raw_s")
    max_points: int = Field(2000, ge=10, le=100000, description="Most points one series read returns "
                            "(a wider read is averaged into wider steps)")
    spark_s: float = Field(600, gt=0, description="Seconds of history in each overview sparkline")
    spark_points: int = Field(60, ge=2, le=1000, description="Points per overview sparkline")
    quality_interval_s: float | None = Field(None, gt=0, le=86400, description="Seconds between reads of every "
                                             "site's review stats (production quality); default: interval_s")
    rules: list[AlertRule] = Field(default_factory=default_rules, description="Alert rules")

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[AlertRule]) -> list[AlertRule]:
        unique_names([r.name for r in v], "alert rule names")
        return v

    @model_validator(mode="after")
    def _windows(self) -> MonitoringConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError("timeout_s must be at most interval_s, or one dead site delays every sweep. "
                             f"Found: timeout_s={self.timeout_s}, interval_s={self.interval_s}")
        if not self.raw_s <= self.retention_s:
            raise ValueError(f"raw_s must be at most retention_s. Found: raw_s={self.raw_s}, "
                             f"retention_s={self.retention_s}")
        if self.downsample_s < self.interval_s:
            raise ValueError(f"downsample_s must be at least interval_s. Found: downsample_s={self.downsample_s}, "
                             f"interval_s={self.interval_s}")
        return self
