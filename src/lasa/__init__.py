"""lasa: multilingual LLM safety alignment at the semantic bottleneck.

Stages mirror the LASA paper (arXiv 2604.12710): ``locate`` the semantic bottleneck layer,
``interpret`` it with a small safety probe (the SSI), ``align`` with semantic-conditioned KTO and
``evaluate`` attack success across ten languages. Each stage is a plain function over
(config, run directory) that the ``lasa`` CLI merely calls.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lasa.errors import LasaError

__all__ = ["LasaError", "__version__"]
