"""The HTML report of `segstream fit`: one self-contained page, plots inlined as PNG."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

from segstream.offline import Profile, Segmentation


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def segment_profiles_table(seg: Segmentation, profiles: dict[str, Profile], catalog: dict,
                           examples: int = 3) -> list[dict[str, Any]]:
    """Per segment: size, label, description, top categories and behaviours, example texts."""
    members: dict[str, list[str]] = {}
    for a in seg.assignments:
        members.setdefault(a.segment_id, []).append(a.key)
    rows = []
    for sid, users in sorted(members.items(), key=lambda kv: -len(kv[1])):
        cats: Counter[str] = Counter()
        types: Counter[str] = Counter()
        for u in users:
            long = max(profiles[u].features.windows, key=lambda w: w.days)
            cats.update(dict(long.categories))
            types.update(dict(long.types))
        total_c, total_t = sum(cats.values()) or 1, sum(types.values()) or 1
        entry = catalog.get(sid, {})
        rows.append({
            "segment_id": sid, "size": len(users), "label": entry.get("label", ""),
            "tier_path": entry.get("tier_path", [sid]),
            "description": entry.get("description", ""),
            "top_categories": [(c, round(100 * n / total_c)) for c, n in cats.most_common(4)],
            "behaviours": [(t, round(100 * n / total_t)) for t, n in types.most_common(4)],
            "examples": [profiles[u].text for u in sorted(users)[:examples]],
        })
    return rows


def bar_label(row: dict[str, Any], width: int = 48) -> str:
    """``<id>: <label>``, shortened on a word boundary to ``width`` characters."""
    text = f"{row['segment_id']}: {row['label']}"
    if len(text) <= width:
        return text
    return text[:width - 1].rsplit(" ", 1)[0].rstrip(" /,") + "…"


def render_report(title: str, seg: Segmentation, rows: list[dict[str, Any]],
                  k_scores: dict[int, tuple[float, float]], k: int, k_rule: str,
                  facts: dict[str, str]) -> str:
    """The report page as HTML text."""
    order = [r["segment_id"] for r in rows]
    colour = {sid: plt.cm.tab20(i % 20) for i, sid in enumerate(order)}

    # Horizontal bars: one readable label per row, however many segments and long labels.
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * len(rows)))
    ax.barh(range(len(rows)), [r["size"] for r in rows], color=[colour[s] for s in order])
    ax.set_yticks(range(len(rows)), [bar_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()  # largest first, at the top
    ax.set_xlabel("users")
    ax.set_title("Segment sizes")
    sizes_png = _png(fig)

    labels = seg.labels()
    xy = PCA(n_components=2, random_state=0).fit_transform(seg.vectors) \
        if len(seg.vectors) > 2 else np.zeros((len(seg.vectors), 2))
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for sid in order:
        idx = [i for i, u in enumerate(seg.users) if labels[u] == sid]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=8, color=colour[sid], label=sid, alpha=0.75)
    ax.set_title("Users in 2-D (PCA of the clustered view), coloured by segment")
    ax.legend(fontsize=7, markerscale=2, ncol=2)
    scatter_png = _png(fig)

    k_png = ""
    if k_scores:
        ks = sorted(k_scores)
        fig, ax1 = plt.subplots(figsize=(7, 3.2))
        ax1.plot(ks, [k_scores[x][0] for x in ks], "o-", color="tab:blue")
        ax1.set_xlabel("k")
        ax1.set_ylabel("silhouette (cosine)", color="tab:blue")
        ax2 = ax1.twinx()
        ax2.plot(ks, [k_scores[x][1] for x in ks], "s--", color="tab:orange")
        ax2.set_ylabel("inertia", color="tab:orange")
        ax1.axvline(k, color="grey", lw=0.8)
        ax1.set_title("Choosing k")
        k_png = _png(fig)

    def esc(x: Any) -> str:
        return html.escape(str(x))

    seg_rows = "".join(
        f"<tr><td>{esc(r['segment_id'])}</td><td>{esc(' › '.join(r['tier_path']))}</td>"
        f"<td><b>{esc(r['label'])}</b><br><small>{esc(r['description'])}</small></td>"
        f"<td>{r['size']}</td>"
        f"<td>{esc(', '.join(f'{c} {p}%' for c, p in r['top_categories']))}</td>"
        f"<td>{esc(', '.join(f'{t} {p}%' for t, p in r['behaviours']))}</td>"
        f"<td><ul>{''.join(f'<li>{esc(t)}</li>' for t in r['examples'])}</ul></td></tr>"
        for r in rows)
    fact_rows = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in facts.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;font-size:13px;text-align:left}}ul{{margin:0;padding-left:1.2em}}</style>
</head><body><h1>{esc(title)}</h1><table>{fact_rows}</table>
<p>k = {k}: {esc(k_rule)}</p>{k_png}<h2>Segments</h2>{sizes_png}{scatter_png}
<table><tr><th>id</th><th>tier path</th><th>label / description</th><th>users</th>
<th>top categories</th><th>behaviours</th><th>example feature texts</th></tr>{seg_rows}
</table></body></html>"""
