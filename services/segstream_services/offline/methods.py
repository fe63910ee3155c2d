"""The rows `segstream eval` reports: method names, their short ``--methods`` keys, and
which of them are segstream's own views (shared by ``evaluate`` and ``tuning``)."""

from __future__ import annotations

POP, RFM, COOC, CAT = ("global popularity", "RFM + KMeans", "co-occurrence SVD + KMeans",
                       "category histogram + KMeans")
INTEREST, TEXT, COMBO = ("segstream: interest vector", "segstream: feature text",
                         "segstream: combination")
SMOOTHED = "segstream: interest + co-occurrence"
# The interest vector over item vectors ``text ⊕ β · co-occurrence factor``
# (``interest.hybrid_item_vectors``); an offline ablation.
HYBRID = "segstream: interest ⊕ item co-occurrence factors"
# The interest view as the running segmenter holds it at T: fitted ONLINE_CARRY_DAYS
# before T and carried forward by its online step (``carried_labels``), not refitted at T.
ONLINE = "segstream: interest, online (carried 7 d)"
ONLINE_CARRY_DAYS = 7.0
METHODS = (POP, RFM, COOC, CAT, INTEREST, TEXT, COMBO, SMOOTHED, HYBRID, ONLINE)
# The short names ``--methods`` takes.
METHOD_KEYS = dict(zip(("pop", "rfm", "cooc", "cat", "interest", "text", "combo", "smoothed",
                        "hybrid", "online"), METHODS, strict=True))
SEGSTREAM = (INTEREST, TEXT, COMBO, SMOOTHED, HYBRID)
# The online clusterer's settings that shape the carried step (``SegmenterSettings``);
# they travel in ``params`` so that a search can vary them. ``carry_passes`` (not a
# setting): how many ``observe`` steps the eval replays the users' vectors at T in.
SEG_PARAMS = ("hysteresis_margin", "half_life_points", "refit_min_gain")
# The baselines segstream's rows are compared with (ratios in ``eval``, tuning probes).
REFERENCES = (RFM, COOC)
