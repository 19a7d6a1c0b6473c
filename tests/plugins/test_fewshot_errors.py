"""Broken few-shot inputs: each is one line naming the file and the fix, writes nothing, and a
hostile pickle runs nothing. Downloads go through a fake ``fetch``; nothing touches the network."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from mamlflow.core import DataError
from mamlflow.plugins.fewshot import _checks, _cifar, _cub, _mini, _tiered
from mamlflow.plugins.fewshot._bundle import Tarball
from mamlflow.plugins.fewshot._pickle import load_pickle

from . import fewshot_fixtures as fx


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MAMLFLOW_DATA", raising=False)


def _message(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _no_network(url: str, dest: Path) -> None:
    raise OSError("Network is unreachable")


# --- pickles that would run code


@pytest.mark.parametrize("payload", [fx.Evil, fx.EvilWrite], ids=["os.system", "open"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(
    tmp_path: Path, payload: type, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    pickle_path = tmp_path / "mini-imagenet-cache-train.pkl"
    data = {"image_data": payload(marker), "class_dict": {}}
    pickle_path.write_bytes(pickle.dumps(data, protocol=protocol))
    with pytest.raises(DataError) as err:
        load_pickle(pickle_path, "get a good copy")
    message = _message(err)
    assert str(pickle_path) in message and "nothing was run" in message
    assert ("system" in message) if payload is fx.Evil else ("open" in message)
    assert not marker.exists()


def test_a_hostile_member_of_the_cifar_tarball_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fx.cifar_tarball(tmp_path / "data", meta_override=pickle.dumps(fx.Evil(marker), protocol=2))
    source = _cifar.locate_cifar("fc100", tmp_path / "data", download=False)
    with pytest.raises(DataError) as err:
        source.index()
    assert "cifar-100-python/meta in" in _message(err) and not marker.exists()


# --- HTML pages saved in place of the data


def test_html_saved_as_a_pickle_is_one_line(tmp_path: Path) -> None:
    fx.mini_pickles(tmp_path)
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(fx.HTML)
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path, fx.MINI_EXPECTED).index()
    message = _message(err)
    assert "mini-imagenet-cache-val.pkl is an HTML page" in message
    assert "few-shot-ssl-public" in message


def test_html_saved_as_the_cifar_tarball_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(fx.HTML)
    with pytest.raises(DataError) as err:
        _cifar.locate_cifar("cifar-fs", tmp_path, download=False).index()
    message = _message(err)
    assert "cifar-100-python.tar.gz is an HTML page" in message
    assert _cifar.CIFAR100.url in message


def test_html_saved_as_a_tiered_pickle_is_one_line(tmp_path: Path) -> None:
    fx.tiered(tmp_path)
    (tmp_path / "test_images_png.pkl").write_bytes(b"  \n<html><body>Quota exceeded</body></html>")
    with pytest.raises(DataError) as err:
        _tiered.locate_tiered(tmp_path, fx.TIERED_EXPECTED).index()
    assert "test_images_png.pkl is an HTML page" in _message(err)


# --- truncated archives and pickles


@pytest.mark.parametrize("which", ["cifar", "cub"])
def test_a_truncated_tarball_is_one_line(tmp_path: Path, which: str) -> None:
    make = fx.cifar_tarball if which == "cifar" else fx.cub_tarball
    path = make(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        if which == "cifar":
            _cifar.locate_cifar("cifar-fs", tmp_path, download=False).index()
        else:
            _cub.locate_cub(tmp_path, download=False, expected=fx.CUB_EXPECTED).index()
    message = _message(err)
    assert f"{path} is not a readable tar archive, truncated or corrupt" in message
    assert "md5" in message


def test_a_truncated_pickle_is_one_line(tmp_path: Path) -> None:
    fx.mini_pickles(tmp_path)
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path, fx.MINI_EXPECTED).index()
    assert f"{path} cannot be unpickled, truncated or corrupt" in _message(err)


# --- incomplete data sets


def test_a_csv_naming_missing_images_is_one_line(tmp_path: Path) -> None:
    fx.mini_csv(tmp_path)
    missing = tmp_path / "images" / f"{fx.wnids('test')[1]}00000003.jpg"
    missing.unlink()
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path, fx.MINI_EXPECTED).index()
    message = _message(err)
    assert "test.csv names 1 images missing from" in message and missing.name in message


def test_a_class_with_too_few_images_is_one_line(tmp_path: Path) -> None:
    fx.tiered(tmp_path, {"train": (2, 3, 4), "val": (2, 1), "test": (4, 2)})
    with pytest.raises(DataError) as err:
        _tiered.locate_tiered(tmp_path, fx.TIERED_EXPECTED).index()
    message = _message(err)
    assert "class n02000101 of the val split has 1 images, not between 2 and 4" in message


def test_the_real_counts_reject_a_tiny_copy(tmp_path: Path) -> None:
    fx.mini_pickles(tmp_path)
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path).index()
    assert "the train split has 3, not 64 classes" in _message(err)


def test_cub_images_missing_from_the_archive_are_one_line(tmp_path: Path) -> None:
    members = fx.cub_members()
    gone = next(name for name in members if name.endswith(".jpg"))
    del members[gone]
    fx.tar_gz(tmp_path / "CUB_200_2011.tgz", members)
    with pytest.raises(DataError) as err:
        _cub.locate_cub(tmp_path, download=False, expected=fx.CUB_EXPECTED).index()
    assert "lacks 1 of the 400 images images.txt lists" in _message(err)


# --- nothing found, and downloads


def test_nothing_found_says_where_it_looked_and_how_to_place_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path)
    message = _message(err)
    assert f"{tmp_path} (data_dir): no complete layout" in message
    assert "$MAMLFLOW_DATA/miniimagenet (unset)" in message and "user cache" in message
    assert "no official download" in message
    with pytest.raises(DataError) as err:
        _tiered.locate_tiered(tmp_path)
    assert "train,val,test}_images_png.pkl" in _message(err)


def test_cifar_missing_without_download_names_the_official_url(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _cifar.locate_cifar("cifar-fs", tmp_path, download=False, fetch=_no_network)
    message = _message(err)
    assert "task.download is false" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "eb9058c3a382ffc7106e4002c42a8d85" in message


@pytest.mark.parametrize("body", [fx.HTML, b"\x1f\x8b truncated"], ids=["html", "truncated"])
def test_a_bad_download_is_one_line_and_leaves_nothing(tmp_path: Path, body: bytes) -> None:
    def fetch(url: str, dest: Path) -> None:
        dest.write_bytes(body)

    with pytest.raises(DataError) as err:
        _cub.locate_cub(None, download=True, fetch=fetch)
    message = _message(err)
    assert f"download of {_cub.CUB.url} failed" in message
    assert not [p for p in (tmp_path / "xdg").rglob("*") if p.is_file()]


def test_a_good_download_is_verified_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = fx.cifar_tarball(tmp_path / "official")
    md5 = hashlib.md5(original.read_bytes()).hexdigest()
    official = Tarball(_cifar.CIFAR100.filename, _cifar.CIFAR100.top, _cifar.CIFAR100.url, md5)
    monkeypatch.setattr(_cifar, "CIFAR100", official)
    fetched: list[str] = []

    def fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(original.read_bytes())

    expected = fx.cifar_expected("fc100")
    source = _cifar.locate_cifar("fc100", None, download=True, fetch=fetch, expected=expected)
    assert fetched == [official.url]
    assert len(source.index().names("train")) == 60
    # Found in the user cache now: nothing is fetched again.
    _cifar.locate_cifar("fc100", None, download=True, fetch=_no_network, expected=expected)
    assert fetched == [official.url]


def test_the_data_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        _cub.locate_cub(tmp_path / "nowhere", download=True, fetch=_no_network)
    assert "is not a directory" in _message(err)


def test_reading_never_writes_beside_the_data(tmp_path: Path) -> None:
    fx.cub_tarball(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    source = _cub.locate_cub(tmp_path, download=False, expected=fx.CUB_EXPECTED)
    for split in fx.SPLITS:
        list(source.read(split))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert _checks.file_problem(tmp_path / "CUB_200_2011.tgz") is None
