"""Which languages a model folder declares, to warn when it cannot read the texts.

The declaration is the model card's front matter (``README.md``: ``language: en`` or a
``language:`` list), else a ``language`` key in ``config.json``. A folder that declares
nothing is trusted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---", re.DOTALL)
_INLINE = re.compile(r"^language:\s*(\S.*)$", re.MULTILINE)
_BLOCK = re.compile(r"^language:\s*\n((?:\s*-\s*\S+\s*\n?)+)", re.MULTILINE)


def declared_languages(model_dir: Path) -> set[str] | None:
    """The language codes the folder declares (lower case), or None when it declares none."""
    readme = model_dir / "README.md"
    if readme.is_file():
        match = _FRONT.match(readme.read_text(encoding="utf-8", errors="replace"))
        if match:
            front = match.group(1)
            block = _BLOCK.search(front)
            if block:
                return {x.strip().lstrip("-").strip().strip("'\"").lower()
                        for x in block.group(1).splitlines() if x.strip()}
            inline = _INLINE.search(front)
            if inline:
                value = inline.group(1).strip().strip("[]")
                return {x.strip().strip("'\"").lower() for x in value.split(",") if x.strip()}
    config = model_dir / "config.json"
    if config.is_file():
        try:
            lang = json.loads(config.read_text(encoding="utf-8")).get("language")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(lang, str):
            return {lang.lower()}
        if isinstance(lang, list):
            return {str(x).lower() for x in lang}
    return None


def language_warning(model_dir: Path, text_language: str) -> str | None:
    """A warning when the texts are in ``text_language`` but the model declares only
    other languages (``multilingual`` counts as every language); None when it fits."""
    declared = declared_languages(model_dir)
    if not declared or text_language in declared or "multilingual" in declared:
        return None
    return (f"THE ENCODER MODEL DOES NOT READ {text_language.upper()}: {model_dir} declares "
            f"language {', '.join(sorted(declared))}, but ingest.text_language = "
            f"{text_language!r}; its item and feature-text vectors will mostly be noise. "
            "Set encoder.model_path to a model that reads it (e.g. a multilingual "
            "MiniLM).")
