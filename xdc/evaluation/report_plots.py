"""The pieces of the run report (``xdc.evaluation.report``): figures, montages, and tables.

Figures are self-contained ``data:`` URIs. Curves and histograms are matplotlib figures (its
object API: no pyplot, no global backend) saved as PNG, matplotlib imported only when one is drawn; montages of video frames are palette PNGs (a photo montage shrinks about
threefold with 128 colours, which keeps the page small). The tables render any JSON generically,
so a new RUN/eval/*.json shows up without code changes. The clusters' frames and sound are in
``xdc.evaluation.report`` itself; this module does not import it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from xdc.run import FAILURES_NAME

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_DPI = 90
MONTAGE_DPI = 100
TILE_PX = 88
MONTAGE_COLOURS = 128
MAX_TABLE_ROWS = 200
# The PNG's "Software" text names matplotlib's web site; the page must hold no external reference.
_PNG_METADATA: dict[str, Any] = {"Software": None}


def figure_png_uri(fig: Figure) -> str:
    """Save ``fig`` as PNG, close it, and return a ``data:image/png;base64`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI, metadata=_PNG_METADATA)
    return data_uri("image/png", buffer.getvalue())


def _figure(size: tuple[float, float], dpi: float = PLOT_DPI, constrained: bool = True) -> Figure:
    """A matplotlib figure outside pyplot: nothing global is registered or changed."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=dpi, layout="constrained" if constrained else None)


def _default_colours() -> list[str]:
    import matplotlib

    return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])


def data_uri(mime: str, payload: bytes) -> str:
    """A base64 ``data:`` URI: the page embeds its figures and sounds, nothing is fetched."""
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def _mark_boundaries(ax: Any, positions: Sequence[float], labels: Sequence[str]) -> None:
    """Dashed vertical lines where a new iteration (a new clustering) starts."""
    for x, text in zip(positions, labels, strict=True):
        ax.axvline(x, color="0.6", linestyle="--", linewidth=0.8)
        ax.annotate(
            text,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="0.4",
            xytext=(2, -10),
            textcoords="offset points",
        )


def training_curves(
    train: Sequence[Mapping[str, Any]], boundaries: Sequence[tuple[int, int]]
) -> str:
    """Loss and pseudo-label accuracy per logged step; ``boundaries`` are (step, iteration) pairs."""
    fig = _figure((10, 3.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [_num(r.get("loss")) for r in train], marker=".", color="tab:blue")
    ax_acc.plot(steps, [_num(r.get("acc")) for r in train], marker=".", color="tab:green")
    for ax, title in (
        (ax_loss, "training loss (sum over heads)"),
        (ax_acc, "pseudo-label accuracy"),
    ):
        _mark_boundaries(ax, [s for s, _ in boundaries], [f"it {i + 1}" for _, i in boundaries])
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(-0.02, 1.02)
    return figure_png_uri(fig)


def epoch_curves(epochs: Sequence[Mapping[str, Any]]) -> str:
    """Training and held-out loss / accuracy per epoch; per-head held-out accuracy when logged."""
    fig = _figure((10, 3.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = np.arange(len(epochs))
    ticks = [f"{r.get('iteration', 0) + 1}.{r.get('epoch', 0) + 1}" for r in epochs]
    ax_loss.plot(x, [_num(r.get("loss")) for r in epochs], marker="o", label="train")
    ax_loss.plot(x, [_num(r.get("val_loss")) for r in epochs], marker="s", label="held-out")
    ax_acc.plot(x, [_num(r.get("acc")) for r in epochs], marker="o", label="train")
    ax_acc.plot(x, [_num(r.get("val_acc")) for r in epochs], marker="s", label="held-out")
    heads = sorted({k for r in epochs for k in r if k.startswith("val_acc_")})
    for key in heads:
        ax_acc.plot(
            x,
            [_num(r.get(key)) for r in epochs],
            marker=".",
            linestyle=":",
            label=f"held-out {key[len('val_acc_') :]}",
        )
    starts = [
        i
        for i, r in enumerate(epochs)
        if i == 0 or r.get("iteration") != epochs[i - 1].get("iteration")
    ]
    for ax, title in ((ax_loss, "loss per epoch"), (ax_acc, "pseudo-label accuracy per epoch")):
        _mark_boundaries(
            ax,
            [s - 0.5 for s in starts],
            [f"it {epochs[s].get('iteration', 0) + 1}" for s in starts],
        )
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_xlim(-0.7, len(epochs) - 0.3)
        ax.set_xlabel("iteration.epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_acc.set_ylim(-0.02, 1.02)
    return figure_png_uri(fig)


def clustering_curves(cluster: Sequence[Mapping[str, Any]]) -> str:
    """Per clustering: NMI with the previous iteration's clustering, and NMI with the true labels
    next to its chance level (a random labelling of the same sizes), per iteration."""
    has_labels = any(r.get("nmi_labels") is not None for r in cluster)
    panels = 2 if has_labels else 1
    fig = _figure((5 * panels, 3.2))
    axes = fig.subplots(1, panels, squeeze=False)
    names = list(dict.fromkeys(str(r.get("clustering")) for r in cluster))
    colours = _default_colours()
    for n, name in enumerate(names):
        rows = [r for r in cluster if str(r.get("clustering")) == name]
        it = [r.get("iteration", 0) + 1 for r in rows]
        colour = colours[n % len(colours)]
        axes[0, 0].plot(
            it, [_num(r.get("nmi_previous")) for r in rows], marker="o", color=colour, label=name
        )
        if has_labels:
            axes[0, 1].plot(
                it, [_num(r.get("nmi_labels")) for r in rows], marker="o", color=colour, label=name
            )
            axes[0, 1].plot(
                it,
                [_num(r.get("nmi_chance")) for r in rows],
                marker="x",
                linestyle="--",
                color=colour,
                alpha=0.6,
                label=f"{name} chance",
            )
    titles = ["NMI with the previous clustering", "NMI with the true labels (dashed: chance)"]
    for ax, title in zip(axes[0], titles, strict=False):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        last = max(int(r.get("iteration", 0)) for r in cluster) + 1
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
        ax.grid(alpha=0.3)
        if ax.has_data() and any(np.isfinite(line.get_ydata()).any() for line in ax.get_lines()):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "needs two or more iterations", ha="center", transform=ax.transAxes)
    return figure_png_uri(fig)


def cluster_size_plot(sizes: Mapping[str, np.ndarray]) -> str:
    """One panel per clustering: cluster sizes sorted largest first; empty clusters marked in red."""
    fig = _figure((5 * len(sizes), 3))
    axes = fig.subplots(1, len(sizes), squeeze=False)
    for ax, (name, counts) in zip(axes[0], sizes.items(), strict=True):
        ordered = np.sort(np.asarray(counts))[::-1]
        x = np.arange(len(ordered))
        ax.bar(x, ordered, width=1.0 if len(ordered) > 40 else 0.8, color="tab:blue")
        empty = x[ordered == 0]
        if len(empty):
            ax.plot(
                empty, np.zeros(len(empty)), "x", color="tab:red", label=f"empty ({len(empty)})"
            )
            ax.legend(fontsize=7)
        total = int(ordered.sum())
        largest = 100.0 * ordered[0] / max(1, total) if len(ordered) else 0.0
        ax.set_title(
            f"{name}: K={len(ordered)}, {total} videos, largest {largest:.0f}%", fontsize=10
        )
        ax.set_xlabel("cluster (sorted by size)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("videos")
        ax.grid(alpha=0.3, axis="y")
    return figure_png_uri(fig)


def montage_uri(tiles: Sequence[np.ndarray], captions: Sequence[str]) -> str:
    """A row of (TILE_PX, TILE_PX, 3) uint8 frames, each under its caption (up to two lines), as
    a palette PNG data URI; frames keep their pixel size."""
    n = max(1, len(tiles))
    tile_in, gap_in, caption_in = TILE_PX / MONTAGE_DPI, 4 / MONTAGE_DPI, 0.26
    width_in, height_in = n * (tile_in + gap_in), tile_in + caption_in
    fig = _figure((width_in, height_in), dpi=MONTAGE_DPI, constrained=False)
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        left = i * (tile_in + gap_in) + gap_in / 2
        ax = fig.add_axes((left / width_in, 0.0, tile_in / width_in, tile_in / height_in))
        ax.imshow(tile, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(_two_lines(caption), fontsize=6.5, pad=2, linespacing=1.0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=MONTAGE_DPI, metadata=_PNG_METADATA)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=MONTAGE_COLOURS)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return data_uri("image/png", out.getvalue())


def _two_lines(caption: str, width: int = 17) -> str:
    """Wrap a class name (words joined by '_', '-' or spaces) on two lines of ``width`` characters."""
    lines = textwrap.wrap(
        re.sub(r"([_\-])", r"\1 ", caption), width=width + 1, break_long_words=False
    )
    lines = [line.replace("_ ", "_").replace("- ", "-").strip() for line in lines] or [caption]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "…"]
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in lines)


def evaluation_html(run: Path, skip: Sequence[str] = ()) -> str:
    """Every RUN/eval/*.json (but those named in ``skip``) as tables, whatever its fields (new
    result files need no code)."""
    files = sorted((run / "eval").glob("*.json")) if (run / "eval").is_dir() else []
    files = [f for f in files if f.name not in skip]
    parts = ['<section id="evaluation"><h2>Evaluation</h2>']
    if not files:
        parts.append(
            f'<p class="note">no evaluation yet: run xdc linear-probe {esc(str(run))} '
            "(and the other evaluation commands) to fill RUN/eval/</p>"
        )
    for path in files:
        parts.append(f"<h3>{esc(path.name)}</h3>")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            parts.append(f'<p class="note">cannot read {esc(str(path))}: {esc(str(err))}</p>')
            continue
        parts.append(json_html(value))
    return "".join(parts) + "</section>"


def failures_html(run: Path, failures: Sequence[str]) -> str:
    path = run / FAILURES_NAME
    during_run = (
        [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if path.is_file()
        else []
    )
    if not during_run and not failures:
        return ""
    parts = ['<section id="failures"><h2>Skipped unreadable videos</h2>']
    for title, lines in (
        ("during the run (RUN/failures.txt)", during_run),
        ("while writing this report", failures),
    ):
        if lines:
            items = "".join(f"<li>{esc(x)}</li>" for x in list(dict.fromkeys(lines))[:500])
            parts.append(f"<h3>{title}: {len(set(lines))}</h3><ul>{items}</ul>")
    return "".join(parts) + "</section>"


def json_html(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: the scalar fields of a dict as one table, then each nested field under
    its own heading — as a matrix when it is a table of scalars (see ``_matrix``), recursively
    otherwise; what fits no table is shown as JSON text."""
    matrix = _matrix(value)
    if matrix is not None:
        return matrix
    if not isinstance(value, dict):
        return f"<pre>{esc(json.dumps(value)[:4000])}</pre>"
    flat = [(str(k), cell(v)) for k, v in value.items() if _is_flat(v)]
    parts = [kv_table(flat)] if flat else []
    level = min(6, depth + 4)
    for key, sub in value.items():
        if not _is_flat(sub):
            body = json_html(sub, depth + 1) if depth < 3 else f"<pre>{esc(json.dumps(sub))}</pre>"
            parts.append(f"<h{level}>{esc(str(key))}</h{level}>{body}")
    return "".join(parts)


def _matrix(value: Any) -> str | None:
    """A grid table for a list of dicts (a row each, a column per scalar key), a dict of dicts of
    scalars (a row per outer key), or a list of lists of scalars (e.g. a confusion matrix)."""
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, dict) and all(map(_is_flat, v.values())) for v in value.values())
    ):
        records = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        records = [(str(i), v) for i, v in enumerate(value)]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and _is_flat(v) for v in value)
    ):
        records = [(str(i), dict(enumerate(v))) for i, v in enumerate(value)]
    else:
        return None
    columns = list(dict.fromkeys(k for _, v in records for k, x in v.items() if _is_flat(x)))
    rows = [[name, *(cell(v.get(c)) for c in columns)] for name, v in records[:MAX_TABLE_ROWS]]
    more = len(records) - len(rows)
    note = f'<p class="note">… {more} more rows in the file</p>' if more > 0 else ""
    return grid_table(rows, ["", *map(str, columns)]) + note


def _is_flat(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (
        isinstance(value, list) and len(value) <= 32 and all(isinstance(v, scalar) for v in value)
    )


def cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "—"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return esc(str(value))


def kv_table(rows: Sequence[tuple[str, str]]) -> str:
    """Two-column table of (plain-text key, HTML value)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def grid_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A table with a header row; the first cell of each row (plain text) is its row header."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr><th>{esc(row[0])}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
        for row in rows
    )
    return f'<table class="grid"><tr>{head}</tr>{body}</table>'


def esc(text: str) -> str:
    return html.escape(text, quote=True)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1150px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h4{margin:.2em 0}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;
font-size:.9em}table.grid td{text-align:right}th{background:#f4f4f4}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto;max-height:30em}
img.plot{max-width:100%}.note{color:#a15c00}.ok{color:#2e7d32}ul.warnings li{margin:.4em 0}
.tag{font-size:.75em;color:#fff;background:#5b7fa6;border-radius:3px;padding:1px 5px;font-weight:normal}
.cluster{border:1px solid #ddd;border-radius:4px;padding:.5em;margin:.6em 0}.cluster p{margin:.2em 0;font-size:.9em}
.sounds{display:flex;flex-wrap:wrap;gap:.8em}figure.sound{margin:0;font-size:.8em}audio{height:2em;width:260px}
"""


def _num(value: Any) -> float:
    """A logged number, or NaN (gap in the curve) for missing values and "nan"/"inf" strings."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
