"""Model lines: how a line of models is retrained, gated, shadowed and released, site by site.

A model line (`adc-array`) is a model artifact name; its versions are the artifact's versions. Per
site a line has aliases (`champion` serves, `challenger` is on its way, `previous` is where a
rollback returns). The platform file names each line's policy under `lines:`:

    lines:
      - name: adc-aoi
        dataset: aoi                    # the line's base dataset (NAME or NAME@V)
        golden: golden-aoi@1            # frozen golden set (a dataset artifact), never trained on
        sites: [fab-a, fab-b]
        retrain: {min_verdicts: 200, every_s: null, mode: finetune}
        gate: {max_escape_rate: 0.003, min_auto_precision: 0.995, max_automation_drop: 0.02}
        shadow: {rate: 0.2, min_verdicts: 100, min_agreement: 0.9}
        release: {canary: [fab-a], waves: [[fab-b]], watch_s: 300, approval: none}
        limits: {max_review_share: 0.5, max_error_rate: 0.05, max_p99_ms: 500, max_escape_rate: 0.005}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs.models import check_site_name

__all__ = [
    "ALIASES",
    "GateLimits",
    "LineConfig",
    "ReleasePlan",
    "RetrainPolicy",
    "ShadowPolicy",
    "WatchLimits",
]

ALIASES = ("champion", "challenger", "previous")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrainPolicy(_Strict):
    """When a line retrains: on `min_verdicts` new verdicts since its last model, every `every_s`
    seconds, or by hand (`adcp model retrain LINE --now`) when both are null."""

    min_verdicts: int | None = Field(200, ge=1, description="New verdicts since the last model that trigger a retrain")
    every_s: int | None = Field(None, ge=60, description="Retrain on a schedule, every this many seconds")
    mode: Literal["finetune", "scratch"] = Field("finetune", description="From the champion's weights, or from scratch")
    epochs: int | None = Field(None, ge=1, le=1000, description="Training epochs (default: the training defaults)")
    on: str = Field("auto", description="Site to train at, or auto (the job runner plans, may borrow)")


class GateLimits(_Strict):
    """What a challenger must meet on the golden set and the recent verdicts to be released."""

    max_escape_rate: float = Field(0.003, ge=0, le=1, description="Real defects auto-called false, at most")
    min_auto_precision: float = Field(0.995, ge=0, le=1, description="Accuracy of automatic decisions, at least")
    max_automation_drop: float = Field(0.02, ge=0, le=1, description="Automation may fall below the champion's by this")
    recent_share: float = Field(0.2, gt=0, lt=1, description="Share of the recent verdicts held out for the gate")


class ShadowPolicy(_Strict):
    """The challenger beside the champion at a site: a share of live requests also goes to it."""

    rate: float = Field(0.2, ge=0, le=1, description="Share of live requests the challenger also classifies")
    min_verdicts: int = Field(100, ge=0, description="Shadowed images with verdicts needed before deciding")
    min_agreement: float = Field(0.0, ge=0, le=1, description="Agreement with the champion needed, at least")
    sites: list[str] = Field(default_factory=list, description="Sites that shadow (default: the canary sites)")


class WatchLimits(_Strict):
    """Live figures a site must stay within during its watch window, else it is rolled back."""

    max_review_share: float = Field(0.5, ge=0, le=1)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_p99_ms: float = Field(1000, gt=0)
    max_escape_rate: float = Field(0.005, ge=0, le=1, description="From the audit sample")
    min_requests: int = Field(20, ge=0, description="Requests in the window before the figures count")


class ReleasePlan(_Strict):
    """Canary site(s) first, a watch window, then the other sites in waves."""

    canary: list[str] = Field(default_factory=list, description="Sites first (default: the line's first site)")
    waves: list[list[str]] = Field(default_factory=list, description="Then these, wave by wave (default: the rest)")
    watch_s: float = Field(300, ge=0, le=7 * 86400, description="Watch window after each stage")
    approval: Literal["none", "before_canary", "before_waves"] = "none"


class LineConfig(_Strict):
    name: str = Field(description="The model line: a model artifact name")
    dataset: str = Field(description="The line's base dataset (NAME or NAME@V)")
    golden: str | None = Field(None, description="The frozen golden set (dataset NAME@V)")
    sites: list[str] = Field(default_factory=list, description="Sites the line serves")
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    gate: GateLimits = Field(default_factory=GateLimits)
    shadow: ShadowPolicy = Field(default_factory=ShadowPolicy)
    release: ReleasePlan = Field(default_factory=ReleasePlan)
    limits: WatchLimits = Field(default_factory=WatchLimits)

    @model_validator(mode="after")
    def _sites(self) -> LineConfig:
        for s in self.sites:
            check_site_name(s)
        planned = [*self.release.canary, *(s for wave in self.release.waves for s in wave)]
        outside = [s for s in planned if self.sites and s not in self.sites]
        if outside:
            raise ValueError(f"line {self.name}: release names {', '.join(outside)}, not among its sites "
                             f"({', '.join(self.sites)})")
        return self

    def stages(self) -> list[list[str]]:
        """The release stages in order: the canary, then each wave; defaults filled from `sites`."""
        canary = self.release.canary or self.sites[:1]
        waves = self.release.waves or ([rest] if (rest := [s for s in self.sites if s not in canary]) else [])
        return [canary, *waves] if canary else waves
