"""RFM engagement tier: new / active / loyal / at-risk / dormant, thresholds configurable."""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("new", "active", "loyal", "at-risk", "dormant")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class EngagementThresholds:
    """Recency cut-offs in days, the age below which a user is new, and the activity count
    (or spend) from which an active user counts as loyal."""

    new_days: float = 7.0
    at_risk_days: float = 14.0
    dormant_days: float = 30.0
    loyal_frequency: int = 20
    loyal_monetary: float = float("inf")


def engagement_tier(first_seen_ms: int, last_active_ms: int, frequency: int, now_ms: int,
                    monetary: float = 0.0,
                    thresholds: EngagementThresholds | None = None) -> str:
    """Recency first (dormant, at-risk), then tenure (new), then frequency/monetary (loyal)."""
    t = thresholds or EngagementThresholds()
    recency_days = max(0, now_ms - last_active_ms) / DAY_MS
    age_days = max(0, now_ms - first_seen_ms) / DAY_MS
    if recency_days >= t.dormant_days:
        return "dormant"
    if recency_days >= t.at_risk_days:
        return "at-risk"
    if age_days < t.new_days:
        return "new"
    if frequency >= t.loyal_frequency or monetary >= t.loyal_monetary:
        return "loyal"
    return "active"
