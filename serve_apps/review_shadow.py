"""The shadow side of the site review DB: what a challenger said beside the champion, and its
figures against the human verdicts (`ReviewDB.record_shadow`, `ReviewDB.shadow_stats`).

A mixin of `serve_apps.review_db.ReviewDB` (it uses the engine ReviewDB opens), kept apart so
each module stays one subject. A verdict counts the way the site's quality figures count it
(`ReviewDB.stats`): the image's latest verdict that is neither undone nor "unsure"; the label
"false_defect" means nothing real was there, any other label a real defect.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, insert, select
from sqlalchemy.engine import Engine

from serve_apps.review_tables import shadow_results, verdict_events

__all__ = ["ShadowQueries", "ShadowResult", "shadow_figures"]

S = shadow_results.c
V = verdict_events.c


@dataclass
class ShadowResult:
    """One image classified by both models (what the recorder writes)."""

    id: str
    image_sha256: str
    site: str
    product: str
    champion_version: str
    champion_class: str
    champion_decision: str
    challenger_version: str
    challenger_class: str
    challenger_decision: str
    at: datetime

    @property
    def disagree(self) -> bool:
        """The two models differ in class or in decision."""
        return (self.champion_class, self.champion_decision) != (self.challenger_class, self.challenger_decision)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def shadow_figures(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Escape and overkill figures of one model from (its decision, the human label) pairs."""
    audited_defect = sum(1 for d, _ in pairs if d == "defect")
    overkill = sum(1 for d, label in pairs if d == "defect" and label == "false_defect")
    audited_false = sum(1 for d, _ in pairs if d == "false_defect")
    escapes = sum(1 for d, label in pairs if d == "false_defect" and label != "false_defect")
    return {"escapes": escapes, "audited_false_defect": audited_false, "overkill": overkill,
            "audited_defect": audited_defect, "escape_rate": _rate(escapes, audited_false),
            "overkill_rate": _rate(overkill, audited_defect)}


class ShadowQueries:
    """Shadow rows and figures; mixed into ReviewDB (which sets `_engine` and `_not_undone`)."""

    _engine: Engine

    def _not_undone(self) -> Any:  # pragma: no cover - ReviewDB's
        raise NotImplementedError

    @staticmethod
    def _insert_shadow(c: Any, results: list[ShadowResult]) -> None:
        if results:
            c.execute(insert(shadow_results), [dict(vars(r)) for r in results])

    def record_shadow(self, results: list[ShadowResult]) -> None:
        """Store shadow results (ReviewDB.record stores them in its transaction too)."""
        with self._engine.begin() as c:
            self._insert_shadow(c, results)

    def shadow_results(self, challenger_version: str | None = None, limit: int = 1000) -> list[dict]:
        """Shadow rows, newest first (of one challenger version when given)."""
        q = select(shadow_results).order_by(S.at.desc(), S.id).limit(limit)
        if challenger_version is not None:
            q = q.where(S.challenger_version == challenger_version)
        with self._engine.begin() as c:
            rows = [dict(r._mapping) for r in c.execute(q)]
        for r in rows:
            r["at"] = r["at"].isoformat()
        return rows

    def shadow_stats(self, challenger_version: str) -> dict[str, Any]:
        """How `challenger_version` did beside the champion: `{"challenger", "champion" (the version it
        shadowed most), "shadowed", "agreement" (share with the same class and decision; None
        before any), "with_verdicts", "challenger_figures", "champion_figures"}`, the figures
        (escapes, overkill and their rates) measured against the verdicts on the shadowed images."""
        latest = (select(V.image_sha256, func.max(V.seq).label("seq"))
                  .where(V.kind == "verdict", V.label != "unsure", self._not_undone())
                  .where(exists(select(S.id).where(S.image_sha256 == V.image_sha256,
                                                   S.challenger_version == challenger_version)))
                  .group_by(V.image_sha256).subquery())
        human = select(V.image_sha256, V.label).join(latest, V.seq == latest.c.seq)
        with self._engine.begin() as c:
            rows = c.execute(select(S.image_sha256, S.champion_version, S.champion_class, S.champion_decision,
                                    S.challenger_class, S.challenger_decision)
                             .where(S.challenger_version == challenger_version)).all()
            labels = {sha: label for sha, label in c.execute(human)}
        champions = Counter(r.champion_version for r in rows)
        agree = sum(1 for r in rows if (r.champion_class, r.champion_decision)
                    == (r.challenger_class, r.challenger_decision))
        judged = [r for r in rows if r.image_sha256 in labels]
        return {
            "challenger": challenger_version,
            "champion": champions.most_common(1)[0][0] if champions else None,
            "shadowed": len(rows),
            "agreement": _rate(agree, len(rows)),
            "with_verdicts": len(judged),
            "challenger_figures": shadow_figures([(r.challenger_decision, labels[r.image_sha256]) for r in judged]),
            "champion_figures": shadow_figures([(r.champion_decision, labels[r.image_sha256]) for r in judged]),
        }
