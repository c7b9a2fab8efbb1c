"""rmm: resilient multimodal survival models trained across hospitals with Flower.

The repository's top-level folders are mapped into this one import package by
pyproject.toml: ``core/`` is ``rmmfed.core``, ``client/`` is ``rmmfed.client``,
``server/`` is ``rmmfed.server`` and ``simulations/`` is ``rmmfed.simulations``.
"""

__version__ = "0.16.0"
