"""``metaflow adapt``, ``predict`` and ``export`` on trained runs: a sinusoid from a CSV, an image
classifier from class folders; the exported files run without mamlflow; bad input is one line
and writes nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlflow.cli import main
from mamlflow.engine import PluginHost, Trainer, evaluate, load_adapted, load_run, resolve

from ..plugins.image_fixtures import write_classes, write_image


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = _cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _write_csv(path: Path, header: list[str], rows: list[list[float]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- regression: a sinusoid run and a CSV


def test_adapt_a_csv_then_predict_a_grid_reproduces_evaluation(
    sinusoid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = load_run(sinusoid_run)
    c = meta.components
    batch = c.family.sample(c.config.seed, 0, torch.arange(2), split="test", shots=5)
    result, examples = evaluate(
        c, meta.params, meta.learnables, shots=5, steps=3, tasks=2, batch_size=2, split="test"
    )
    sx, sy = batch.support["x"][0, :, 0].tolist(), batch.support["y"][0, :, 0].tolist()
    support = _write_csv(
        tmp_path / "points.csv", ["x", "y"], [[a, b] for a, b in zip(sx, sy, strict=True)]
    )
    qx, qy = batch.query["x"][0], batch.query["y"][0]
    grid = _write_csv(tmp_path / "grid.csv", ["x"], [[v] for v in qx[:, 0].tolist()])
    out = tmp_path / "adapted"
    code, text, _ = _cli(
        ["adapt", str(sinusoid_run), "--support", str(support), "--out", str(out)], capsys
    )
    assert code == 0 and "adapted model written to" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "adapted.json",
        "adapted.png",
        "model.safetensors",
    ]
    assert (out / "adapted.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "adapted.json").read_text())
    assert manifest["adaptation"]["steps"] == 3 and manifest["inputs"]["columns"] == ["x"]
    code, text, _ = _cli(["predict", str(out), "--inputs", str(grid), "--json"], capsys)
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and [r["row"] for r in rows] == list(range(len(qx)))
    predicted = torch.tensor([r["y"] for r in rows], dtype=torch.float64)
    after = {k: v[0] for k, v in examples.after.items()}
    want = c.learner(after, qx)[:, 0].double()
    torch.testing.assert_close(predicted, want, rtol=1e-5, atol=1e-5)
    mse = float(((predicted - qy[:, 0].double()) ** 2).mean())
    per_task_eval = float(c.family.score(c.learner)(after, {"x": qx, "y": qy}))
    assert mse == pytest.approx(per_task_eval, rel=1e-4)
    assert result.tasks == 2


def _run_without_mamlflow(code: str) -> str:
    """``code`` in a fresh interpreter that must never import mamlflow; its stdout."""
    guard = (
        "import sys\n" + code + "\nassert not any(m.startswith('mamlflow') for m in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", guard],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_files_reproduce_predict_without_mamlflow(
    sinusoid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    x = torch.linspace(-4, 4, 5)[:, None]
    load_run(sinusoid_run).adapt(x, torch.sin(x)).save(tmp_path / "a")
    target = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    code, _text, err = _cli(
        ["export", str(tmp_path / "a"), "--format", fmt, "--out", str(target)], capsys
    )
    assert code == 0, err
    grid = np.linspace(-5, 5, 33, dtype=np.float32)[:, None]
    np.save(tmp_path / "grid.npy", grid)
    if fmt == "torchscript":
        run = (
            f"import numpy, torch\nm = torch.jit.load({str(target)!r})\n"
            f"print(m(torch.from_numpy(numpy.load({str(tmp_path / 'grid.npy')!r}))).tolist())"
        )
    else:
        run = (
            f"import numpy, onnxruntime\ns = onnxruntime.InferenceSession({str(target)!r})\n"
            f"print(s.run(None, {{'x': numpy.load({str(tmp_path / 'grid.npy')!r})}})[0].tolist())"
        )
    got = torch.tensor(json.loads(_run_without_mamlflow(run)), dtype=torch.float64)
    want = load_adapted(tmp_path / "a").predict(torch.from_numpy(grid)).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a", "b"], ["1", "2"]], "no column 'x', 'y' (columns: a, b)"),
        ([["x", "y"], ["1", "oops"]], "row 2, column 'y' is 'oops', not a finite number"),
        ([["x", "y"], ["1", "nan"]], "row 2, column 'y' is 'nan', not a finite number"),
        ([["x", "y"]], "a header but no rows"),
    ],
)
def test_a_bad_csv_is_one_line_and_writes_nothing(
    sinusoid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], rows, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    out = tmp_path / "out"
    line = _error(["adapt", str(sinusoid_run), "--support", str(path), "--out", str(out)], capsys)
    assert message in line
    assert not out.exists()


def test_adaptation_that_blows_up_is_one_line_naming_the_step(
    sinusoid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_csv(tmp_path / "s.csv", ["x", "y"], [[float(i), 1e6] for i in range(5)])
    out = tmp_path / "out"
    line = _error(
        ["adapt", str(sinusoid_run), "--support", str(path), "--lr", "1e30", "--out", str(out)],
        capsys,
    )
    assert "at step" in line and "adapt with a smaller lr" in line and not out.exists()


def test_a_run_without_a_checkpoint_is_one_line(
    sinusoid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_bytes((sinusoid_run / "config.json").read_bytes())
    path = _write_csv(tmp_path / "s.csv", ["x", "y"], [[0.0, 0.0]])
    line = _error(["adapt", str(tmp_path / "run"), "--support", str(path)], capsys)
    assert "checkpoint" in line


# -- classification: an image run and class folders

CLASSES = {f"c{i:02d}": 6 for i in range(12)}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    data = root / "data"
    write_classes(data, CLASSES)
    run_dir = root / "run"
    host = PluginHost()
    sets = (
        f"task.data_dir={data}",
        f"task.cache_dir={root / 'cache'}",
        "task.image_size=16",
        "task.query=2",
        "task.ways=3",
        "task.train_classes=6",
        "task.val_classes=3",
        "task.decode_workers=1",
        "model.filters=4",
        "train.iterations=3",
        "train.meta_batch_size=2",
        "inner.steps=1",
        "eval.steps=2",
        "kernel.strategy=loop",
        "device=cpu",
    )
    Trainer(resolve(host, preset="imagefolder", sets=sets), run_dir, host).fit()
    return run_dir, data


def _support_folder(data: Path, where: Path, classes: list[str], shots: int = 1) -> Path:
    for name in classes:
        files = sorted((data / name).glob("*.png"))[:shots]
        for f in files:
            (where / name).mkdir(parents=True, exist_ok=True)
            (where / name / f.name).write_bytes(f.read_bytes())
    return where


def test_adapt_class_folders_then_predict_images(
    image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, data = image_run
    support = _support_folder(data, tmp_path / "support", ["c09", "c10", "c11"])
    out = tmp_path / "adapted"
    code, text, err = _cli(
        ["adapt", str(run_dir), "--support", str(support), "--out", str(out)], capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "adapted.json").read_text())
    assert manifest["classes"] == ["c09", "c10", "c11"]
    assert manifest["inputs"]["kind"] == "images" and manifest["inputs"]["size"] == 16
    assert manifest["normalisation"] == "support"
    queries = tmp_path / "queries"
    for name in ("c09", "c10", "c11"):
        for f in sorted((data / name).rglob("*.jpg"))[:2]:
            (queries / name).mkdir(parents=True, exist_ok=True)
            (queries / name / f.name).write_bytes(f.read_bytes())
    code, text, _ = _cli(["predict", str(out), "--inputs", str(queries), "--json"], capsys)
    rows = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and len(rows) == 6
    for row in rows:
        assert row["class"] in ("c09", "c10", "c11")
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # One image alone gets exactly the answer it gets among the others.
    first = Path(rows[0]["input"])
    code, text, _ = _cli(["predict", str(out), "--inputs", str(first), "--json"], capsys)
    (alone,) = [json.loads(line) for line in text.splitlines()]
    assert alone["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-6)


def test_a_single_input_is_answered_as_in_any_batch(
    image_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _data = image_run
    meta = load_run(run_dir)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    adapted = meta.adapt(x, torch.arange(3), steps=2)
    queries = torch.randn(9, 3, 16, 16, generator=g)
    together = adapted.predict(queries)
    alone = torch.cat([adapted.predict(q[None]) for q in queries])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("problem", ["one class", "empty class", "four classes", "not an image"])
def test_a_bad_support_folder_is_one_line_and_writes_nothing(
    image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    run_dir, data = image_run
    support = tmp_path / "support"
    if problem == "one class":
        _support_folder(data, support, ["c09"])
        expected = "1 class folder(s); put each class's images in a sub-folder"
    elif problem == "empty class":
        _support_folder(data, support, ["c09", "c10"])
        (support / "c11").mkdir()
        expected = "no images (.png, .jpg, …) in class 'c11'"
    elif problem == "four classes":
        _support_folder(data, support, ["c08", "c09", "c10", "c11"])
        expected = "4 class folders, but this model is 3-way; give exactly 3 classes"
    else:
        _support_folder(data, support, ["c09", "c10", "c11"])
        (support / "c10" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        expected = "broken.png: cannot be decoded"
    out = tmp_path / "out"
    line = _error(["adapt", str(run_dir), "--support", str(support), "--out", str(out)], capsys)
    assert expected in line and not out.exists()


def test_predict_of_an_html_page_saved_as_an_image_is_one_line(
    image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, data = image_run
    support = _support_folder(data, tmp_path / "support", ["c09", "c10", "c11"])
    assert (
        _cli(
            ["adapt", str(run_dir), "--support", str(support), "--out", str(tmp_path / "a")], capsys
        )[0]
        == 0
    )
    page = tmp_path / "page.jpg"
    page.write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    line = _error(["predict", str(tmp_path / "a"), "--inputs", str(page)], capsys)
    assert "is an HTML page, not an image" in line
    write_image(tmp_path / "ok.png", 3)
    assert (
        _cli(["predict", str(tmp_path / "a"), "--inputs", str(tmp_path / "ok.png")], capsys)[0] == 0
    )


# -- reinforcement learning: a policy adapted to a goal


def test_adapt_a_policy_to_a_goal_then_predict_and_export(
    navigation_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy"
    code, text, err = _cli(
        ["adapt", str(navigation_run), "--task", "goal=0.3,-0.2", "--steps", "1", "--out",
         str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "mean return" in text
    manifest = json.loads((out / "adapted.json").read_text())
    assert manifest["adaptation"]["task"]["goal"] == pytest.approx([0.3, -0.2])
    obs = _write_csv(tmp_path / "obs.csv", ["obs0", "obs1"], [[0.0, 0.0], [0.1, -0.1]])
    code, text, _ = _cli(["predict", str(out), "--inputs", str(obs), "--json"], capsys)
    rows = [json.loads(line) for line in text.splitlines()]
    assert (
        code == 0
        and [sorted(r) for r in rows] == [["action0", "action1", "obs0", "obs1", "row"]] * 2
    )
    code, _, err = _cli(["export", str(out), "--format", "torchscript"], capsys)
    assert code == 0, err
    policy = torch.jit.load(str(out / "model.pt"))
    want = torch.tensor([[r["action0"], r["action1"]] for r in rows])
    torch.testing.assert_close(policy(torch.tensor([[0.0, 0.0], [0.1, -0.1]])), want)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "goal"], "--task 'goal': write key=number[,number…]"),
        (["--task", "goal=1,x"], "--task 'goal=1,x': write key=number[,number…]"),
        (["--task", "speed=1"], "a 'navigation' task is given by goal; got speed"),
        (["--task", "goal=1,2", "--lr", "0.1"], "--lr: a policy adapts at the run's inner.lr"),
        ([], "give --support (examples) or --task"),
    ],
)
def test_a_bad_task_is_one_line(
    navigation_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message: str
) -> None:
    out = tmp_path / "out"
    line = _error(["adapt", str(navigation_run), *args, "--out", str(out)], capsys)
    assert message in line and not out.exists()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_classifier_with_batch_norm_answers_one_image_as_predict(
    image_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    run_dir, _ = image_run
    g = torch.Generator().manual_seed(3)
    adapted = load_run(run_dir).adapt(torch.randn(3, 3, 16, 16, generator=g), torch.arange(3))
    adapted.save(tmp_path / "a")
    target = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    code, _, err = _cli(
        ["export", str(tmp_path / "a"), "--format", fmt, "--out", str(target)], capsys
    )
    assert code == 0, err
    images = torch.randn(5, 3, 16, 16, generator=g)
    np.save(tmp_path / "x.npy", images.numpy())
    x = f"numpy.load({str(tmp_path / 'x.npy')!r})"
    if fmt == "torchscript":
        run = (
            f"import numpy, torch\nm = torch.jit.load({str(target)!r})\nx = torch.from_numpy({x})\n"
            "print([m(x).tolist(), [m(x[i : i + 1])[0].tolist() for i in range(len(x))]])"
        )
    else:
        run = (
            f"import numpy, onnxruntime\ns = onnxruntime.InferenceSession({str(target)!r})\n"
            f"x = {x}\nf = lambda v: s.run(None, {{'x': v}})[0]\n"
            "print([f(x).tolist(), [f(x[i : i + 1])[0].tolist() for i in range(len(x))]])"
        )
    together, alone = json.loads(_run_without_mamlflow(run))
    want = load_adapted(tmp_path / "a").predict(images).double()
    torch.testing.assert_close(
        torch.tensor(together, dtype=torch.float64), want, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(torch.tensor(alone, dtype=torch.float64), want, rtol=1e-5, atol=1e-5)
