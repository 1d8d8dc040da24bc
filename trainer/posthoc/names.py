"""The post-hoc classifiers' names, without importing them (no torch): one module each in
trainer/posthoc/classifiers/, named as its classifier (trainer.posthoc.registry checks that).
The recipe check and the command-line help read the names from here."""
from __future__ import annotations

import pkgutil
from pathlib import Path

FOLDER = Path(__file__).parent / "classifiers"


def classifier_names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(FOLDER)]) if not m.name.startswith("_")))
