"""``metaflow adapt``, ``predict`` and ``export``: use a trained run on your own examples."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from mamlflow.core import DataError, ImageInputs, image_files
from mamlflow.engine import (
    AdaptedModel,
    MetaModel,
    answers,
    load_adapted,
    load_run,
    read_class_folder,
    read_images,
    read_table,
)

from ._common import console

__all__ = ["adapt_command", "export_command", "predict_command"]

PLOT = "adapted.png"


def adapt_command(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by 'metaflow run'")],
    support: Annotated[
        Path | None,
        typer.Option(
            "--support",
            help="image families: a folder with one sub-folder of images per class (its name "
            "is the class's); regression: a CSV with a header row",
        ),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="reinforcement learning: the task, key=v1,v2 (repeatable), e.g. goal=0.3,-0.2 "
            "for navigation",
        ),
    ] = None,
    trajectories: Annotated[
        int | None,
        typer.Option(
            "--trajectories", min=1, help="RL: trajectories per step (default: eval.shots)"
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=0, help="adaptation steps (default: eval.steps)")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="inner learning rate (default: the run's inner.lr)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="where to write the adapted model (default: RUN_DIR/adapted/<support name>)",
        ),
    ] = None,
    best: Annotated[
        bool, typer.Option("--best", help="adapt checkpoint_best.pt instead of checkpoint.pt")
    ] = False,
    x_columns: Annotated[
        str | None,
        typer.Option(
            "--x-columns",
            help="CSV input columns, comma-separated (default: x, or x0,x1,… for several inputs)",
        ),
    ] = None,
    y_columns: Annotated[
        str | None,
        typer.Option("--y-columns", help="CSV target columns (default: y, or y0,y1,…)"),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Adapt a trained run to your own few examples; write the adapted model to a folder."""
    if (support is None) == (not task):
        raise DataError("give --support (examples) or --task (a reinforcement-learning task)")
    meta = load_run(run_dir, "best" if best else "final", device=device)
    extra: dict[str, bytes] = {}
    if support is None:
        if lr is not None:
            raise DataError("--lr: a policy adapts at the run's inner.lr; leave --lr out")
        adapted = meta.adapt_to_task(_task(task or []), steps=steps, trajectories=trajectories)
    else:
        adapted, extra = _adapt_to_support(meta, support, steps, lr, (x_columns, y_columns))
    name = "task" if support is None else support.stem or "support"
    out = out if out is not None else Path(run_dir) / "adapted" / name
    adapted.save(out, extra=extra)
    if as_json:
        print(json.dumps(adapted.manifest, indent=2))
        return
    console.print(_summary(adapted, out, extra))


def _adapt_to_support(
    meta: MetaModel,
    support: Path,
    steps: int | None,
    lr: float | None,
    columns: tuple[str | None, str | None],
) -> tuple[AdaptedModel, dict[str, bytes]]:
    """A folder of class folders, or a CSV; with the files to write beside the model."""
    extra: dict[str, bytes] = {}
    if support.is_dir():
        adapted = _adapt_to_images(meta, support, steps, lr)
    else:
        adapted, x, y = _adapt_to_table(meta, support, steps, lr, *columns)
        extra = _curve_plot(meta, adapted, x, y)
    adapted.manifest["support"] = str(support.resolve())
    return adapted, extra


def _task(items: list[str]) -> dict[str, list[float]]:
    """``["goal=0.3,-0.2"]`` → ``{"goal": [0.3, -0.2]}``."""
    task: dict[str, list[float]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            task[key.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise DataError(
                f"--task {item!r}: write key=number[,number…], e.g. goal=0.3,-0.2"
            ) from None
    return task


def _adapt_to_images(
    meta: MetaModel, folder: Path, steps: int | None, lr: float | None
) -> AdaptedModel:
    spec = _image_spec(meta)
    classes = read_class_folder(folder, ways=meta.output_dim)
    x = read_images(classes.paths, spec)
    adapted = meta.adapt(x, classes.labels, steps=steps, lr=lr)
    adapted.manifest["classes"] = list(classes.classes)
    return adapted


def _image_spec(meta: MetaModel) -> ImageInputs:
    spec = meta.image_inputs
    if spec is None:
        raise DataError(
            f"task family '{meta.config.task.name}' reads no image files; adapt it to tensors "
            "with mamlflow.load_run(...).adapt(x, y), or to a CSV for a regression run"
        )
    if spec.input_shape != meta.input_shape:
        raise DataError(
            f"the family reads images as {spec.input_shape}, but the model takes "
            f"{meta.input_shape}; the run's task and model do not match"
        )
    return spec


def _columns(given: str | None, prefix: str, count: int) -> list[str]:
    if given is not None:
        names = [c.strip() for c in given.split(",") if c.strip()]
        if len(names) != count:
            raise DataError(
                f"--{prefix}-columns names {len(names)} column(s); this run needs {count}"
            )
        return names
    return [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]


def _table_shape(meta: MetaModel) -> int:
    if meta.metric != "mse" or len(meta.input_shape) != 1:
        raise DataError(
            f"this run ({meta.config.task.name}) takes inputs of shape {meta.input_shape}, "
            "not CSV rows; pass --support a folder of class folders of images"
        )
    return meta.input_shape[0]


def _adapt_to_table(
    meta: MetaModel,
    path: Path,
    steps: int | None,
    lr: float | None,
    x_columns: str | None,
    y_columns: str | None,
) -> tuple[AdaptedModel, Tensor, Tensor]:
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder; pass --support a CSV or a folder")
    inputs = _columns(x_columns, "x", _table_shape(meta))
    targets = _columns(y_columns, "y", meta.output_dim)
    table = read_table(path, inputs + targets)
    x, y = table.stack(inputs).float(), table.stack(targets).float()
    adapted = meta.adapt(x, y, steps=steps, lr=lr)
    adapted.manifest["inputs"] = {"kind": "table", "columns": inputs, "targets": targets}
    return adapted, x, y


def _curve_plot(meta: MetaModel, adapted: AdaptedModel, x: Tensor, y: Tensor) -> dict[str, bytes]:
    """A 1-d regression's curve before and after adaptation, with the support points."""
    if x.shape[1] != 1 or y.shape[1] != 1:
        return {}
    from ._plots import plot_adapted_curve

    before = meta.adapt(x, y, steps=0)
    return {PLOT: plot_adapted_curve(before, adapted, x[:, 0], y[:, 0])}


def _summary(adapted: AdaptedModel, out: Path, extra: dict[str, bytes]) -> Table:
    m = adapted.manifest
    a = m["adaptation"]
    table = Table(title=f"adapted model written to {escape(str(out))}", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    source = m["source"]
    table.add_row(
        "from",
        escape(
            f"{source['run_dir']} ({source['checkpoint']} checkpoint, iteration "
            f"{source['iteration']:,})"
        ),
    )
    if m.get("classes"):
        table.add_row("classes", escape(", ".join(m["classes"])))
    if "support_examples" in a:
        table.add_row("support", f"{a['support_examples']} examples")
    if "task" in a:
        table.add_row("task", escape(json.dumps(a["task"])))
        table.add_row("trajectories", f"{a['trajectories']} per step")
    table.add_row("steps, lr", f"{a['steps']}, {a['lr']}")
    for key in a["after"]:
        where = "mean" if key == "return" else "support"
        table.add_row(
            f"{where} {key}", f"{a['before'][key]:.4f} before → {a['after'][key]:.4f} after"
        )
    if m["normalisation"] == "support":
        table.add_row("batch norm", "by the support set's statistics (one input = same answer)")
    if extra:
        table.add_row("plot", escape(str(out / next(iter(extra)))))
    return table


# -- predict


def predict_command(
    adapted_dir: Annotated[Path, typer.Argument(help="a folder written by 'metaflow adapt'")],
    inputs: Annotated[
        Path,
        typer.Option(
            "--inputs",
            help="images: an image or a folder of them (nested folders too); regression: a "
            "CSV with the input columns",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cpu (default) or cuda")] = None,
) -> None:
    """Predict with an adapted model: classes and probabilities, or values."""
    model = load_adapted(adapted_dir, device=device)
    names, x = _read_inputs(model, inputs)
    prediction = model.predict(x).cpu().double()
    rows = _rows(model, names, x, prediction)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title=f"{escape(str(adapted_dir))}: {len(rows)} prediction(s)")
    for key in rows[0]:
        if key != "probabilities":
            table.add_column(key, justify="left" if key in ("input", "class") else "right")
    for row in rows:
        table.add_row(*(_cell(v) for k, v in row.items() if k != "probabilities"))
    console.print(table)


def _read_inputs(model: AdaptedModel, path: Path) -> tuple[list[str], Tensor]:
    spec = model.manifest.get("inputs")
    if not isinstance(spec, dict):
        raise DataError(
            f"this adapted model records no input format; predict in Python "
            f"(mamlflow.load_adapted('{path}').predict(x))"
        )
    if spec.get("kind") == "images":
        files = [path] if path.is_file() else list(image_files(path)) if path.is_dir() else []
        if not files:
            raise DataError(f"{path}: no images there; pass an image or a folder of images")
        return [str(f) for f in files], read_images(files, ImageInputs.from_json(spec))
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file; pass --inputs a CSV with a header row")
    columns = list(spec["columns"])
    table = read_table(path, columns)
    return [str(i) for i in range(table.rows)], table.stack(columns).float()


def _rows(model: AdaptedModel, names: list[str], x: Tensor, out: Tensor) -> list[dict[str, Any]]:
    if model.metric == "accuracy":
        classes = model.classes or [str(i) for i in range(out.shape[1])]
        best = out.argmax(1).tolist()
        return [
            {
                "input": name,
                "class": classes[b],
                "label": b,
                "probability": round(float(p[b]), 6),
                "probabilities": dict(zip(classes, (round(float(v), 6) for v in p), strict=True)),
            }
            for name, b, p in zip(names, best, out, strict=True)
        ]
    spec = model.manifest["inputs"]
    return [
        {
            "row": int(name),
            **{c: float(v) for c, v in zip(spec["columns"], xi.tolist(), strict=True)},
            **{t: float(v) for t, v in zip(spec["targets"], yi.tolist(), strict=True)},
        }
        for name, xi, yi in zip(names, x, out, strict=True)
    ]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return escape(str(value))


# -- export


class _Predictor(torch.nn.Module):
    """What ``predict`` returns, as one module: probabilities, values or mean actions."""

    def __init__(self, adapted: AdaptedModel) -> None:
        super().__init__()
        self.adapted = adapted
        self.metric = adapted.metric
        self.output_dim = int(adapted.manifest["model"]["output_dim"])

    def forward(self, x: Tensor) -> Tensor:
        return answers(self.adapted(x), self.metric, self.output_dim)


def export_command(
    adapted_dir: Annotated[Path, typer.Argument(help="a folder written by 'metaflow adapt'")],
    format: Annotated[
        str, typer.Option("--format", help="torchscript (model.pt) or onnx (model.onnx)")
    ] = "torchscript",
    out: Annotated[
        Path | None, typer.Option("--out", help="the file to write (default: in ADAPTED_DIR)")
    ] = None,
) -> None:
    """Export an adapted model as a file that runs without mamlflow (predict's outputs)."""
    if format not in ("torchscript", "onnx"):
        raise DataError(f"--format {format!r}: use torchscript or onnx")
    kind: Literal["torchscript", "onnx"] = "onnx" if format == "onnx" else "torchscript"
    model = load_adapted(adapted_dir)
    target = out or adapted_dir / ("model.onnx" if kind == "onnx" else "model.pt")
    shape = tuple(model.manifest["model"]["input_shape"])
    example = torch.zeros(2, *shape, dtype=next(model.parameters()).dtype)
    predictor = _Predictor(model).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        if kind == "torchscript":
            _torchscript(predictor, example, Path(tmp))
        else:
            _onnx(predictor, example, Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    console.print(
        f"wrote {escape(str(target))} ({kind}): input float ({', '.join(['n', *map(str, shape)])})"
        f", output {'class probabilities' if model.metric == 'accuracy' else 'values'}; "
        f'inputs are preprocessed as adapted.json\'s "inputs" says'
    )


def _torchscript(predictor: torch.nn.Module, example: Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(predictor, (example,), check_trace=False)
    traced.save(str(path))


def _onnx(predictor: torch.nn.Module, example: Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise DataError(
            "exporting to ONNX needs the onnx extra: pip install 'mamlflow[onnx]'"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    # The exporter narrates its passes and warns about optional packages (torchvision) it
    # does not need here; the one line this command prints says what was written.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                predictor,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes={"x": {0: batch}},
                input_names=["x"],
                output_names=["y"],
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
