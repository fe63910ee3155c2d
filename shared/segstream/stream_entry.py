"""The encoder → segmenter contract: one entry of the ``embedded`` stream (``Keys.embedded``).

The encoder appends one entry per completed dirty mark (inside its ``complete`` Lua script,
from ``EmbeddedEntry.xadd_args``); the segmenter reads them in a consumer group
(``EmbeddedEntry.parse``). Every field is a decimal or UTF-8 string:

- ``user_id``        the user whose embedding (``Keys.emb``) was written
- ``model_version``  the encoder model that produced it
- ``text_hash``      the hash of the feature text it embeds (``encoding.text_hash``)
- ``dirty_ms``       when ingest marked the user dirty (epoch ms; freshness starts here)
- ``encoded_ms``     when the vector was written (epoch ms; 0: not re-encoded)
"""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("user_id", "model_version", "text_hash", "dirty_ms", "encoded_ms")


@dataclass(frozen=True, slots=True)
class EmbeddedEntry:
    """One ``embedded`` stream entry; ``id`` is the stream id once read (empty before)."""

    user_id: str
    model_version: str
    text_hash: str
    dirty_ms: int
    encoded_ms: int
    id: str = ""

    def to_fields(self) -> dict[str, str]:
        """The entry's fields as XADD takes them (``FIELDS`` order)."""
        return {"user_id": self.user_id, "model_version": self.model_version,
                "text_hash": self.text_hash, "dirty_ms": str(int(self.dirty_ms)),
                "encoded_ms": str(int(self.encoded_ms))}

    def xadd_args(self) -> list[str]:
        """``to_fields`` flattened to name, value, ... (``user_id`` first), for a script."""
        return [part for item in self.to_fields().items() for part in item]

    @classmethod
    def parse(cls, entry_id: bytes | str, fields: dict[bytes, bytes] | dict[str, str]
              ) -> EmbeddedEntry | None:
        """The entry read from the stream, or None when it has no ``user_id`` or a time
        is not a number (an entry trimmed while pending reads back empty). Entries written
        before ``dirty_ms`` existed fall back to ``encoded_ms``."""
        f = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        try:
            return cls(f["user_id"], f.get("model_version", ""), f.get("text_hash", ""),
                       int(float(f.get("dirty_ms") or f.get("encoded_ms") or 0)),
                       int(float(f.get("encoded_ms") or 0)), eid)
        except (KeyError, ValueError):
            return None
