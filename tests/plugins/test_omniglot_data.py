"""Omniglot loading: the official layout in, one memory-mapped uint8 array cache out.

Uses the repack in ``../shared/data/omniglot`` (see its README). The full cache is built once per
module; the error cases use small broken copies. Nothing here touches the network: downloads go
through a fake ``fetch`` that writes what a bad network would (HTML, a truncated zip) or copies
the shared zips.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import load_array_cache
from mamlflow.plugins.omniglot._data import OmniglotArrays, load_omniglot

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
ZIPS = ("images_background.zip", "images_evaluation.zip")
OFFICIAL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"


def _readme_alphabets(split: str) -> list[str]:
    """The alphabet list the README gives for ``split`` ("Background" or "Evaluation")."""
    text = (SHARED / "README.md").read_text()
    block = text.split(f"{split} alphabets (")[1].split("):", 1)[1].split("\n\n")[0]
    return [name.strip().rstrip(".") for name in " ".join(block.split()).split(", ")]


def _reference(zip_name: str, member_prefix: str, drawer: int) -> np.ndarray:
    """The spec, image by image: 105x105 mode 1 -> L -> Lanczos 28x28 -> ink = 255."""
    with zipfile.ZipFile(SHARED / zip_name) as archive:
        (member,) = [
            n
            for n in archive.namelist()
            if n.startswith(member_prefix) and n.endswith(f"_{drawer:02d}.png")
        ]
        image = Image.open(io.BytesIO(archive.read(member)))
        assert image.size == (105, 105) and image.mode == "1"
        small = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    return 255 - np.asarray(small)


def _one_line(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def _cache_files(cache_dir: Path) -> tuple[Path, Path]:
    (npy,) = cache_dir.glob("omniglot-28x28-*.npy")
    return npy, npy.with_suffix(".json")


def _copy_cache(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for file in _cache_files(src):
        shutil.copy(file, dest / file.name)
    return _cache_files(dest)[0]


def _data_dir(root: Path, **parts: bytes | None) -> Path:
    """``root`` holding both zips as links to the shared ones, except those given as bytes
    (written instead) or None (left out)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ZIPS:
        content = parts.get(name.removesuffix(".zip"), b"link")
        if content == b"link":
            (root / name).symlink_to(SHARED / name)
        elif content is not None:
            (root / name).write_bytes(content)
    return root


@dataclass
class Built:
    arrays: OmniglotArrays
    cache_dir: Path
    progress: list[tuple[int, int]]
    seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    assert SHARED.is_dir(), f"the shared Omniglot copy is missing: {SHARED}"
    cache_dir = tmp_path_factory.mktemp("cache")
    calls: list[tuple[int, int]] = []
    start = time.perf_counter()
    arrays = load_omniglot(
        SHARED, cache_dir=cache_dir, download=False, progress=lambda d, t: calls.append((d, t))
    )
    return Built(arrays, cache_dir, calls, time.perf_counter() - start)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test reads or writes the real user cache or a developer's MAMLFLOW_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MAMLFLOW_DATA", raising=False)
    return tmp_path / "xdg" / "mamlflow"


# --- the array


def test_shapes_dtypes_and_counts(built: Built) -> None:
    a = built.arrays
    assert a.images.shape == (1623, 20, 28, 28) and a.images.dtype == np.uint8
    assert len(a.characters) == len(set(a.characters)) == len(a.alphabets) == 1623
    assert a.background.dtype == np.bool_ and a.background.shape == (1623,)
    assert a.background.sum() == 964
    assert a.background[:964].all() and not a.background[964:].any()
    assert len(set(a.alphabets)) == 50


def test_ink_is_255_on_a_zero_background(built: Built) -> None:
    images = built.arrays.images
    assert images.max() == 255 and images.min() == 0
    assert images.mean() < 40  # strokes are thin: mostly background
    border = np.concatenate([images[..., 0, :], images[..., -1, :]], axis=-1)
    assert np.median(border) == 0


def test_images_are_the_lanczos_resized_pngs_in_order(built: Built) -> None:
    images = built.arrays.images
    first = _reference(ZIPS[0], "images_background/Alphabet_of_the_Magi/character01/", 1)
    assert np.array_equal(images[0, 0], first)
    last_drawer = _reference(ZIPS[1], "images_evaluation/Angelic/character01/", 20)
    assert np.array_equal(images[964, 19], last_drawer)
    assert not np.array_equal(images[964, 0], images[964, 19])


def test_names_follow_the_readme_and_sort_order(built: Built) -> None:
    a = built.arrays
    assert a.characters[0] == "Alphabet_of_the_Magi/character01"
    assert a.characters[964] == "Angelic/character01"
    assert a.characters[-1] == "ULOG/character26"
    assert all(
        c.split("/")[0] == alphabet for c, alphabet in zip(a.characters, a.alphabets, strict=True)
    )
    assert sorted(set(a.alphabets[:964])) == sorted(_readme_alphabets("Background"))
    assert sorted(set(a.alphabets[964:])) == sorted(_readme_alphabets("Evaluation"))

    def order(name: str) -> tuple[str, int]:
        alphabet, character = name.split("/")
        return alphabet, int(character.removeprefix("character"))

    for part in (a.characters[:964], a.characters[964:]):
        assert list(part) == sorted(part, key=order)


def test_progress_is_reported_every_500_images(built: Built) -> None:
    done = [d for d, _ in built.progress]
    assert {t for _, t in built.progress} == {32_460}
    assert done[:3] == [500, 1000, 1500] and done[-1] == 32_460


# --- the cache


def test_second_load_is_fast_memory_mapped_and_silent(built: Built) -> None:
    calls: list[tuple[int, int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = time.perf_counter()
        again = load_omniglot(
            SHARED, cache_dir=built.cache_dir, progress=lambda d, t: calls.append((d, t))
        )
        seconds = time.perf_counter() - start
    assert seconds < 1.0, f"cached load took {seconds:.2f} s"
    assert calls == []
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    assert not again.background.flags.writeable
    assert np.array_equal(again.images, built.arrays.images)
    assert again.characters == built.arrays.characters
    npy, sidecar = _cache_files(built.cache_dir)
    assert Path(again.images.filename) == npy and sidecar.is_file()


def test_a_bit_flipped_cache_is_rebuilt_with_a_warning_to_identical_bytes(
    built: Built, tmp_path: Path
) -> None:
    npy = _copy_cache(built.cache_dir, tmp_path / "cache")
    original = npy.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    npy.write_bytes(bytes(flipped))
    with pytest.warns(RuntimeWarning, match=r"corrupt.*rebuilding"):
        rebuilt = load_omniglot(SHARED, cache_dir=tmp_path / "cache", download=False)
    # Two independent builds give the same bytes: the build is deterministic.
    assert npy.read_bytes() == original
    assert np.array_equal(rebuilt.images, built.arrays.images)


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip a data byte", "flip a header byte", "no sidecar", "stale key", "bad json"],
)
def test_a_broken_cache_is_detected(built: Built, tmp_path: Path, damage: str) -> None:
    npy = _copy_cache(built.cache_dir, tmp_path)
    sidecar = npy.with_suffix(".json")
    key = npy.stem.rsplit("-", 1)[1]
    expect = {"dataset": "omniglot", "key": key, "shape": [1623, 20, 28, 28], "dtype": "|u1"}
    assert load_array_cache(npy, expect) is not None  # the intact copy is accepted
    data = bytearray(npy.read_bytes())
    if damage == "truncate":
        npy.write_bytes(bytes(data[: len(data) - 1000]))
    elif damage.startswith("flip"):
        data[-7 if "data" in damage else 20] ^= 0x10
        npy.write_bytes(bytes(data))
    elif damage == "no sidecar":
        sidecar.unlink()
    elif damage == "stale key":
        sidecar.write_text(sidecar.read_text().replace(key, "0" * 16))
    else:
        sidecar.write_text(sidecar.read_text()[:100])
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        assert load_array_cache(npy, expect) is None


def test_the_default_cache_dir_is_under_xdg_cache_home(built: Built, _isolated: Path) -> None:
    npy = _copy_cache(built.cache_dir, _isolated / "cache")
    arrays = load_omniglot(SHARED, download=False)
    assert Path(arrays.images.filename) == npy


# --- where the data is looked for


def test_mamlflow_data_names_a_root_holding_omniglot(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _data_dir(tmp_path / "root" / "omniglot")
    monkeypatch.setenv("MAMLFLOW_DATA", str(tmp_path / "root"))
    arrays = load_omniglot(cache_dir=built.cache_dir, download=False)  # same zips: a cache hit
    assert np.array_equal(arrays.images, built.arrays.images)


def test_data_dir_comes_before_mamlflow_data(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _data_dir(tmp_path / "root" / "omniglot", images_background=b"<!DOCTYPE html>")
    monkeypatch.setenv("MAMLFLOW_DATA", str(tmp_path / "root"))
    arrays = load_omniglot(SHARED, cache_dir=built.cache_dir, download=False)
    assert arrays.characters == built.arrays.characters
    (tmp_path / "empty").mkdir()  # a data_dir without the files: the next place is looked in
    with pytest.raises(DataError, match="HTML page"):
        load_omniglot(tmp_path / "empty", cache_dir=built.cache_dir, download=False)


def test_an_extracted_folder_gives_the_same_arrays(built: Built, tmp_path: Path) -> None:
    data = _data_dir(tmp_path / "data", images_evaluation=None)
    with zipfile.ZipFile(SHARED / ZIPS[1]) as archive:
        archive.extractall(data)
    calls: list[tuple[int, int]] = []
    arrays = load_omniglot(
        data, cache_dir=tmp_path / "cache", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (32_460, 32_460)
    assert np.array_equal(arrays.images, built.arrays.images)
    assert arrays.characters == built.arrays.characters
    calls.clear()
    load_omniglot(data, cache_dir=tmp_path / "cache")  # the folder's fingerprint is stable
    assert calls == []


# --- broken inputs: one line each, saying what was found and how to fix it


def test_a_half_extracted_folder_is_one_line_with_counts(tmp_path: Path) -> None:
    data = _data_dir(tmp_path / "data", images_evaluation=None)
    keep = ("Angelic/", "Atemayar_Qelisayer/", "Atlantean/")
    with zipfile.ZipFile(SHARED / ZIPS[1]) as archive:
        members = [
            n for n in archive.namelist() if n.removeprefix("images_evaluation/").startswith(keep)
        ]
        archive.extractall(data, members)
    character = data / "images_evaluation" / "Angelic" / "character01"
    for png in sorted(character.iterdir())[12:]:
        png.unlink()
    with pytest.raises(DataError) as excinfo:
        load_omniglot(data, cache_dir=tmp_path / "cache", download=False)
    message = _one_line(excinfo)
    assert "images_evaluation" in message and "is incomplete: 3 of 20 alphabets" in message
    assert "missing alphabets Aurek-Besh" in message
    assert "Angelic/character01 has 12 of 20 drawings (missing 13, 14" in message
    assert "extract images_evaluation.zip" in message and OFFICIAL in message


def test_a_zip_that_is_really_html_is_one_line(tmp_path: Path) -> None:
    page = b"\n<!DOCTYPE html>\n<html><body>Rate limit exceeded</body></html>\n"
    data = _data_dir(tmp_path / "data", images_background=page)
    with pytest.raises(DataError) as excinfo:
        load_omniglot(data, cache_dir=tmp_path / "cache", download=False)
    message = _one_line(excinfo)
    assert f"{data / ZIPS[0]} is an HTML page, not a zip" in message
    assert "delete it" in message and OFFICIAL + ZIPS[0] in message


def test_a_truncated_zip_is_one_line(tmp_path: Path) -> None:
    half = (SHARED / ZIPS[1]).read_bytes()[:1_000_000]
    data = _data_dir(tmp_path / "data", images_evaluation=half)
    with pytest.raises(DataError) as excinfo:
        load_omniglot(data, cache_dir=tmp_path / "cache", download=False)
    message = _one_line(excinfo)
    assert f"{data / ZIPS[1]} is not a valid zip, truncated or corrupt" in message
    assert "1,000,000 bytes" in message and "delete it" in message


def test_a_corrupt_zip_member_is_named(tmp_path: Path) -> None:
    raw = bytearray((SHARED / ZIPS[0]).read_bytes())
    name = "images_background/Alphabet_of_the_Magi/character01/0709_01.png"
    with zipfile.ZipFile(SHARED / ZIPS[0]) as archive:
        info = archive.getinfo(name)
    raw[info.header_offset + 30 + len(name.encode()) + 40] ^= 0xFF  # inside the deflated data
    data = _data_dir(tmp_path / "data", images_background=bytes(raw))
    with pytest.raises(DataError) as excinfo:
        load_omniglot(data, cache_dir=tmp_path / "cache", download=False)
    message = _one_line(excinfo)
    assert f"cannot read {name} in {data / ZIPS[0]}" in message


def test_a_png_that_fails_to_decode_is_named(tmp_path: Path) -> None:
    broken = "images_background/Alphabet_of_the_Magi/character01/0709_01.png"
    buffer = io.BytesIO()
    with zipfile.ZipFile(SHARED / ZIPS[0]) as src, zipfile.ZipFile(buffer, "w") as dest:
        for info in src.infolist():
            dest.writestr(
                info.filename,
                b"\x89PNG\r\n\x1a\nnot really" if info.filename == broken else src.read(info),
            )
    data = _data_dir(tmp_path / "data", images_background=buffer.getvalue())
    with pytest.raises(DataError) as excinfo:
        load_omniglot(data, cache_dir=tmp_path / "cache", download=False)
    message = _one_line(excinfo)
    assert f"cannot decode the PNG {broken} in {data / ZIPS[0]}" in message


# --- missing data and downloads (the network is never touched)


def _no_network(url: str, dest: Path) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _assert_how_to_place(message: str) -> None:
    assert "images_background.zip and images_evaluation.zip" in message
    assert "MAMLFLOW_DATA=<root>" in message and "<root>/omniglot/images_background.zip" in message


def test_missing_data_without_download_is_one_line(tmp_path: Path, _isolated: Path) -> None:
    (tmp_path / "nowhere").mkdir()  # a data_dir that exists but holds neither archive
    with pytest.raises(DataError) as excinfo:
        load_omniglot(
            tmp_path / "nowhere", cache_dir=tmp_path / "cache", download=False, fetch=_no_network
        )
    message = _one_line(excinfo)
    assert message.startswith("Omniglot not found")
    assert f"{tmp_path / 'nowhere'} (data_dir): has neither" in message
    assert "$MAMLFLOW_DATA/omniglot (unset)" in message
    assert str(_isolated / "omniglot") in message and "download=False" in message
    _assert_how_to_place(message)


def test_missing_data_offline_is_one_line_and_leaves_nothing(
    tmp_path: Path, _isolated: Path
) -> None:
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(DataError) as excinfo:
        load_omniglot(tmp_path / "nowhere", cache_dir=tmp_path / "cache", fetch=_no_network)
    message = _one_line(excinfo)
    assert f"download of {OFFICIAL}{ZIPS[0]} failed" in message
    assert "name resolution" in message
    _assert_how_to_place(message)
    assert list((_isolated / "omniglot").iterdir()) == []


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("html", "is an HTML page"),
        ("truncated", "is not a valid zip, truncated or corrupt"),
        ("empty", "is empty"),
        ("another zip", "neither a known good copy"),
    ],
)
def test_a_bad_download_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path, _isolated: Path, kind: str, problem: str
) -> None:
    if kind == "html":  # what a captive portal or a login page serves
        body = b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>"
    elif kind == "truncated":  # a dropped connection
        body = (SHARED / ZIPS[0]).read_bytes()[:4_000_000]
    elif kind == "empty":
        body = b""
    else:  # a valid zip, but not Omniglot's
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("images_background/readme.txt", "hello")
        body = buffer.getvalue()

    def fetch(url: str, dest: Path) -> None:
        dest.write_bytes(body)

    with pytest.raises(DataError) as excinfo:
        load_omniglot(cache_dir=tmp_path / "cache", fetch=fetch)
    message = _one_line(excinfo)
    assert f"download of {OFFICIAL}{ZIPS[0]} failed: the file " in message and problem in message
    _assert_how_to_place(message)
    assert list((_isolated / "omniglot").iterdir()) == []


def test_a_good_download_is_verified_renamed_and_used(built: Built, _isolated: Path) -> None:
    fetched: list[str] = []

    def fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        shutil.copy(SHARED / url.rsplit("/", 1)[1], dest)

    arrays = load_omniglot(cache_dir=built.cache_dir, fetch=fetch)  # same zips: a cache hit
    assert fetched == [OFFICIAL + name for name in ZIPS]
    assert sorted(p.name for p in (_isolated / "omniglot").iterdir()) == list(ZIPS)
    for name in ZIPS:
        digest = hashlib.sha256((_isolated / "omniglot" / name).read_bytes()).hexdigest()
        assert digest == hashlib.sha256((SHARED / name).read_bytes()).hexdigest()
    assert arrays.characters == built.arrays.characters
    load_omniglot(cache_dir=built.cache_dir, fetch=_no_network)  # found now: nothing fetched


# --- import hygiene


def test_core_does_not_import_the_data_layer_and_it_imports_no_heavy_extras() -> None:
    core = Path(__file__).resolve().parents[2] / "mamlflow" / "core"
    for source in core.rglob("*.py"):
        text = source.read_text()
        assert "omniglot._data" not in text and "_imagedata" not in text, source
    code = (
        "import sys, mamlflow.plugins.omniglot._data\n"
        "print(sorted({'numba', 'matplotlib', 'PIL'} & set(sys.modules)))"
    )
    env = {**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    from mamlflow.core import DataError

    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match=r"^task\.data_dir: .*no-such-folder is not a directory"):
        load_omniglot(missing, cache_dir=tmp_path / "cache", download=False)
