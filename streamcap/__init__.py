"""streamcap: a real-time streaming captioner for live video."""
__version__ = "0.1.0"
