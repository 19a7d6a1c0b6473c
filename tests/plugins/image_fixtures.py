"""Tiny image data sets written by the tests, in every layout ``imagefolder`` reads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mamlflow.cli import main

__all__ = ["cli_run_and_eval", "write_classes", "write_image", "write_split_folders"]


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10), fmt: str = "PNG") -> None:
    """A random RGB image of ``size`` (width, height) saved as ``fmt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_classes(root: Path, counts: Mapping[str, int], *, seed: int = 0) -> None:
    """``root/<class>/...`` with ``counts[class]`` images: PNG and JPEG, some in a subfolder."""
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            # Every third image one level deeper, every other one a JPEG: real nesting, mixed files.
            folder = root / name / ("more" if i % 3 == 2 else "")
            fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            write_image(folder / f"img{i:03d}.{suffix}", seed * 100_000 + c * 1000 + i, fmt=fmt)


def write_split_folders(root: Path, counts: Mapping[str, Mapping[str, int]]) -> None:
    """``root/<split>/<class>/<image>`` for each split's classes."""
    for s, (split, classes) in enumerate(counts.items()):
        write_classes(root / split, classes, seed=s + 1)


def cli_run_and_eval(
    preset: str, run_dir: Path, sets: list[str], capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``metaflow run --plugin preset --out run_dir --set …`` then ``metaflow eval --json``,
    both through the real app, each exiting 0; eval's JSON object."""
    args = ["run", "--plugin", preset, "--out", str(run_dir)]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["eval", str(run_dir), "--json", "--no-plots"])
    assert done.value.code in (0, None)
    return json.loads(capsys.readouterr().out)
