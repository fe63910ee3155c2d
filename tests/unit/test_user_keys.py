"""Every per-user Redis key is listed by ``Keys.user_keys`` (what TTL refreshes and
``segstream forget`` iterate), so a new per-user key cannot be left behind."""

from __future__ import annotations

import inspect

from segstream.keys import Keys


def _per_user_keys(keys: Keys, probe: str) -> dict[str, str]:
    """Method name → key, for every ``Keys`` method whose key carries ``probe``'s hash tag
    when every argument is ``probe`` (whatever the method's signature)."""
    found = {}
    for name, fn in inspect.getmembers(type(keys), inspect.isfunction):
        if name.startswith("_") or name == "user_keys":
            continue
        args = [probe] * (len(inspect.signature(fn).parameters) - 1)
        try:
            key = getattr(keys, name)(*args)
        except ValueError:
            continue
        if isinstance(key, str) and f"{{{probe}}}" in key:
            found[name] = key
    return found


def test_user_keys_cover_every_per_user_key_method() -> None:
    keys = Keys("ss")
    per_user = _per_user_keys(keys, "probe-user")
    assert {"features", "text", "rfm", "interest", "emb", "seg", "seg_text"} <= set(per_user)
    listed = keys.user_keys("probe-user")
    missing = {name for name, key in per_user.items() if key not in listed}
    assert not missing, f"per-user key methods not in Keys.user_keys: {sorted(missing)}"
    assert len(listed) == len(set(listed)) == len(per_user)


def test_a_new_per_user_key_method_is_covered_without_listing_it() -> None:
    class WithConsent(Keys):
        def consent(self, user_id: str) -> str:
            return self._user(user_id, "consent")

    keys = WithConsent("ss")
    assert keys.consent("u") in keys.user_keys("u")
    assert set(_per_user_keys(keys, "u").values()) == set(keys.user_keys("u"))
