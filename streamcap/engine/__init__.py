"""Caption engines: ``load_engine(path)`` opens an engine folder (see docs/engine-format.md)."""

from streamcap.engine.base import CaptionEngine, load_engine

__all__ = ["CaptionEngine", "load_engine"]
