"""The written rule that resolves several verdicts on one image into one label.

The conflict rule (several verdicts on one image):

1. only live verdicts count: an undone verdict does not, "unsure" never does, and of one
   reviewer's verdicts on an image only the latest counts;
2. the label most live verdicts give wins (majority; one verdict alone: `single`, all agreeing:
   `unanimous`);
3. a tie goes to the label given by the most senior role (admin > engineer > operator >
   reviewer): `senior_role`;
4. still tied (the most senior role gave both labels): the latest of those verdicts: `latest`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

__all__ = ["ROLE_RANK", "UNSURE", "live_verdicts", "resolve", "when"]

#: Seniority for breaking a tie (higher wins).
ROLE_RANK = {"admin": 4, "engineer": 3, "operator": 2, "reviewer": 1}
UNSURE = "unsure"


def when(text: str) -> datetime:
    """An event's ISO time as an aware datetime (the earliest time when it cannot be read)."""
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def live_verdicts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdicts that count: not undone, not unsure, the latest of each reviewer."""
    undone = {e["verdict_id"] for e in events if e["kind"] == "undo"}
    latest: dict[str, dict[str, Any]] = {}
    for e in sorted((e for e in events if e["kind"] == "verdict"), key=lambda e: (when(e["at"]), e["seq"])):
        if e["verdict_id"] in undone or e["event_id"] in undone:
            continue
        latest[e["reviewer"]] = e  # a reviewer's later verdict replaces their earlier one
    return [e for e in latest.values() if e["label"] and e["label"] != UNSURE]


def resolve(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The label the rule gives one image's events: {"label", "rule", "annotator", "annotated_at",
    "verdicts" (live count), "labels" (label -> count)}; None when no live verdict counts."""
    live = live_verdicts(events)
    if not live:
        return None
    counts = Counter(e["label"] for e in live)
    top = max(counts.values())
    tied = sorted(label for label, n in counts.items() if n == top)
    if len(tied) == 1:
        label = tied[0]
        rule = "single" if len(live) == 1 else "unanimous" if len(counts) == 1 else "majority"
        deciding = [e for e in live if e["label"] == label]
    else:
        candidates = [e for e in live if e["label"] in tied]
        senior = max(ROLE_RANK.get(e["role"], 0) for e in candidates)
        deciding = [e for e in candidates if ROLE_RANK.get(e["role"], 0) == senior]
        if len({e["label"] for e in deciding}) == 1:
            rule = "senior_role"
        else:
            rule = "latest"
            deciding = [max(deciding, key=lambda e: (when(e["at"]), e["seq"]))]
        label = deciding[0]["label"]
        deciding = [e for e in deciding if e["label"] == label]
    last = max(deciding, key=lambda e: (when(e["at"]), e["seq"]))
    return {"label": label, "rule": rule, "annotator": last["reviewer"], "annotated_at": last["at"],
            "verdicts": len(live), "labels": dict(sorted(counts.items()))}
