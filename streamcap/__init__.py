"""streamcap: a real-time streaming captioner for live video.

Library use::

    import streamcap
    engine = streamcap.load_engine("engines/shapes-git")
    result = engine.caption(frames)          # frames: RGB uint8 H×W×3 numpy arrays
    print(result.text, result.score)
"""

__version__ = "0.1.0"


def load_engine(path, **options):
    """Open an engine folder; see ``streamcap.engine.onnx.OnnxCaptionEngine`` for the options."""
    from streamcap.engine.base import load_engine as _load

    return _load(path, **options)


__all__ = ["__version__", "load_engine"]
