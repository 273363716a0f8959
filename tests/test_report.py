"""``xdc report RUN``: a self-contained HTML page of a real (tiny) run, read back as a browser would.

The report is written once, through the command line, for a copy of the tiny run whose manifest has
moved (so ``--data`` is exercised), with an evaluation result and a failures list dropped in.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import wave
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from xdc import cli
from xdc.errors import DataError
from xdc.evaluation import report as report_module
from xdc.evaluation.report import (
    CLUSTERS_SHOWN,
    SOUNDS_PER_CLUSTER,
    add_report_parser,
    choose_clusters,
    load_run,
    member_features,
    write_report,
)
from xdc.evaluation.report_checks import CACHE_NAME

EVAL_RESULT = {
    "top1": 0.8125,
    "n_test": 37,
    "method": "tiny-check",
    "per_split": {"val": {"top1": 0.625, "top5": 0.9375}, "test": {"top1": 0.4375, "top5": 0.875}},
}
FAILED_VIDEO = "/videos/broken_clip_0042.mp4: cannot open: Invalid data found"


@dataclass
class Page:
    """What the parser collects: images, audio sources, headings and tables (cells per row)."""

    images: list[dict[str, str]] = field(default_factory=list)
    audio_sources: list[str] = field(default_factory=list)
    headings: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, list[list[str]]]] = field(default_factory=list)
    """(text of the heading before the table, rows of cell texts)."""


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._heading: str | None = None
        self._text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.page.images.append(values)
        elif tag in ("audio", "source") and values.get("src"):
            self.page.audio_sources.append(values["src"])
        elif tag in ("h1", "h2", "h3", "h4"):
            self._heading, self._text = tag, []
        elif tag == "table":
            last = self.page.headings[-1][1] if self.page.headings else ""
            self.page.tables.append((last, []))
        elif tag == "tr":
            self.page.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self.page.headings.append((tag, "".join(self._text).strip()))
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None:
            self.page.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._heading:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``xdc report …`` through the real CLI entry point (error handling and exit codes)."""
    if add_report_parser not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_report_parser])
    return cli.main(argv)


@pytest.fixture(scope="module")
def moved_run(
    tiny_run: Path, demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A copy of the tiny run whose manifest (and videos) moved after training."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    old, new = root / "data_before", root / "data_after"
    shutil.copytree(demo_manifest.parent, old)
    info = json.loads((run / "run.json").read_text())
    info["data"] = str(old / demo_manifest.name)
    (run / "run.json").write_text(json.dumps(info))
    old.rename(new)
    (run / "eval").mkdir()
    (run / "eval" / "tiny_check.json").write_text(json.dumps(EVAL_RESULT))
    (run / "failures.txt").write_text(FAILED_VIDEO + "\n")
    return {"run": run, "old": old / demo_manifest.name, "new": new / demo_manifest.name}


@pytest.fixture(scope="module")
def report(moved_run: dict) -> dict:
    """The report written by `xdc report RUN --data NEW_MANIFEST` (module scope: written once)."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        code = run_cli(
            ["report", str(moved_run["run"]), "--data", str(moved_run["new"]), "--no-progress"],
            monkeypatch,
        )
    finally:
        monkeypatch.undo()
    assert code == 0
    path = moved_run["run"] / "report.html"
    text = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    return {"path": path, "text": text, "page": parser.page, "run": moved_run["run"]}


def _data_bytes(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:60]
    return base64.b64decode(uri[len(prefix) :], validate=True)


def test_every_image_is_an_embedded_png(report: dict) -> None:
    images = report["page"].images
    assert images
    for img in images:
        pixels = matplotlib.image.imread(io.BytesIO(_data_bytes(img["src"], "image/png")))
        assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0


def test_every_sound_is_16khz_mono_wav(report: dict) -> None:
    sources = report["page"].audio_sources
    assert sources
    for src in sources:
        with wave.open(io.BytesIO(_data_bytes(src, "audio/wav"))) as wav:
            assert wav.getframerate() == 16000
            assert wav.getnchannels() == 1
            assert wav.getnframes() > 0
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        # The demo videos have sound in every clip: a silent window would mean misplaced audio.
        assert np.abs(samples).max() > 100


def test_page_is_self_contained(report: dict) -> None:
    text = report["text"]
    assert "http://" not in text and "https://" not in text
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    assert report["path"].stat().st_size < 5_000_000


def test_header_curves_and_cluster_sizes(report: dict, moved_run: dict) -> None:
    page, text = report["page"], report["text"]
    titles = [t for _, t in page.headings]
    for section in ("Run", "Training curves", "Cluster sizes", "Clusters", "Evaluation"):
        assert section in titles
    header = dict(row for row in page.tables[0][1] if len(row) == 2)
    assert header["method"].startswith("xdc")
    assert str(moved_run["new"]) in header["manifest"]
    assert "<details><summary>resolved config</summary>" in text
    plots = [img for img in page.images if img.get("class") == "plot"]
    # Per step, per epoch and per clustering iteration, plus the cluster-size histograms.
    assert len(plots) == 4


def test_clusters_show_montages_and_sounds(report: dict) -> None:
    state = torch.load(report["run"] / "checkpoint.pt", weights_only=True)
    labels = state["loop"]["labels"]
    # The tiny run has K=3 <= CLUSTERS_SHOWN: every non-empty cluster is among the largest.
    sizes = [
        int((assign == c).sum()) for assign in labels.values() for c in assign.unique() if c >= 0
    ]
    assert all(len(a.unique()) <= CLUSTERS_SHOWN for a in labels.values())
    montages = [img for img in report["page"].images if img.get("class") == "montage"]
    assert len(montages) == len(sizes)
    assert len(report["page"].audio_sources) == sum(min(SOUNDS_PER_CLUSTER, s) for s in sizes)
    cluster_headings = [
        t for level, t in report["page"].headings if level == "h3" and "clustering" in t
    ]
    assert [t.split()[0] for t in cluster_headings] == list(labels)


def test_warnings_come_first_and_encoders_face_a_random_init(report: dict) -> None:
    sections = [t for level, t in report["page"].headings if level == "h2"]
    assert sections[0] == "Warnings" and "Trained vs random init" in sections
    warnings = report["text"][report["text"].index('<section id="warnings">') :]
    warnings = warnings[: warnings.index("</section>")]
    assert "<li>" in warnings or "no warnings" in warnings
    (rows,) = [
        rows for heading, rows in report["page"].tables if heading == "Trained vs random init"
    ]
    assert rows[0][:4] == ["encoder", "trained", "random init", "chance"]
    assert [r[0] for r in rows[1:]] == ["video", "audio"]
    for row in rows[1:]:
        assert all(0.0 <= float(v) <= 100.0 for v in row[1:4])
    cache = json.loads((report["run"] / "eval" / CACHE_NAME).read_text())
    assert cache["train_split"] == "train" and set(cache["top1"]) == {"video", "audio"}


def test_evaluation_json_becomes_a_table(report: dict) -> None:
    tables = report["page"].tables
    flat = [rows for heading, rows in tables if heading == "tiny_check.json"]
    assert flat and ["top1", "0.8125"] in flat[0] and ["n_test", "37"] in flat[0]
    nested = [rows for heading, rows in tables if heading == "per_split"]
    assert nested and nested[0][0] == ["", "top1", "top5"]
    assert ["val", "0.625", "0.9375"] in nested[0] and ["test", "0.4375", "0.875"] in nested[0]


def test_failures_are_listed(report: dict) -> None:
    assert "Skipped unreadable videos" in [t for _, t in report["page"].headings]
    assert FAILED_VIDEO in report["text"]


def test_missing_evaluation_gives_a_hint(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    from xdc.evaluation.report_plots import evaluation_html

    assert "no evaluation yet: run xdc linear-probe" in evaluation_html(run)


def test_moved_manifest_names_the_path_and_data_flag(moved_run: dict) -> None:
    with pytest.raises(DataError) as err:
        write_report(moved_run["run"], progress=False)
    message = str(err.value)
    assert str(moved_run["old"]) in message and "--data" in message and "\n" not in message


def test_missing_checkpoint_exits_2_with_one_line(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint.pt", "report.html"))
    assert run_cli(["report", str(run), "--no-progress"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint" in err and str(run) in err
    assert run_cli(["report", str(tmp_path / "nowhere")], monkeypatch) == 2
    assert not (run / "report.html").exists()


def test_largest_and_purest_clusters_are_chosen(tiny_run: Path) -> None:
    """Synthetic assignments over the real manifest: sizes and purities known by construction."""
    contents = load_run(tiny_run)
    true = np.asarray(contents.manifest.labels())
    n = len(true)
    # Cluster c holds rows c, c+6, …: 6 clusters of 2-3 rows. Then make cluster 5 hold only rows
    # of one class, and cluster 0 absorb most others, so the two rankings differ.
    assign = np.arange(n) % 6
    one_class = np.flatnonzero(true == true[0])[:3]
    assign[assign == 5] = 0
    assign[one_class] = 5
    contents.meta["loop"] = {"labels": {"video": torch.as_tensor(assign)}, "centroids": {}}
    shown = choose_clusters(contents, max_members=2)
    sizes = np.bincount(assign, minlength=6)
    largest = [s for s in shown if "largest" in s.reasons]
    assert [s.cluster for s in largest] == sorted(range(6), key=lambda c: (-sizes[c], c))[:4]
    purity = {c: np.bincount(true[assign == c]).max() / sizes[c] for c in range(6)}
    purest = {s.cluster for s in shown if "purest" in s.reasons}
    assert purest == set(sorted(range(6), key=lambda c: (-purity[c], -sizes[c], c))[:4])
    assert shown[[s.cluster for s in shown].index(5)].purity == 1.0
    assert all(len(s.members) <= 2 and s.size == sizes[s.cluster] for s in shown)
    assert len({s.cluster for s in shown}) == len(shown)


def test_cluster_members_are_extracted_in_the_layout_the_run_trained_in(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's member features, like the probes', come from the run's encoder in the layout
    it trained in (``train.channels_last``), on a copy, with the default layout's features."""
    used: list[bool] = []
    extract = report_module.extract_features

    def recording(encoders: dict[str, nn.Module], *args: object, **kwargs: object) -> object:
        for encoder in encoders.values():
            conv = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
            used.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
        return extract(encoders, *args, **kwargs)

    monkeypatch.setattr(report_module, "extract_features", recording)
    contents = load_run(tiny_run)
    rows = list(range(6))
    features = {}
    for layout in (True, False):
        contents.config = replace(
            contents.config, train=replace(contents.config.train, channels_last=layout)
        )
        got = member_features(contents, "video", rows, torch.device("cpu"), False, [])
        assert sorted(got) == rows
        features[layout] = torch.stack([got[r] for r in rows])
    assert used == [True, False]
    given = next(m for m in contents.encoders["video"].modules() if isinstance(m, nn.Conv2d))
    assert given.weight.is_contiguous(), "the run's encoder keeps its layout (a copy is changed)"
    torch.testing.assert_close(features[True], features[False], rtol=1e-4, atol=1e-5)


EVIL_LABEL = "<script>alert(1)</script>"
EVIL_NAME = '&"<>'
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "h5", "h6",
    "section", "p", "table", "tr", "th", "td", "details", "summary", "pre", "img", "ul", "li",
    "b", "i", "br", "span", "div", "figure", "figcaption", "audio", "code",
}  # fmt: skip
PAGE_ATTRIBUTES = {"lang", "charset", "id", "class", "alt", "src", "controls", "preload"}


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.update(k for k, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_labels_paths_and_config_values_are_escaped(
    demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose folder, manifest folder and file names hold `&"<>` and whose class is named
    `<script>…`: the page shows them as text, never as markup."""
    from tests.conftest import tiny_config
    from xdc.training import pretrain

    root = tmp_path / f"x{EVIL_NAME}y"
    data = root / "data"
    shutil.copytree(demo_manifest.parent, data)
    manifest = data / demo_manifest.name
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    first_class = rows[0]["label"]
    for i, row in enumerate(rows):
        if row["label"] == first_class:
            row["label"] = EVIL_LABEL
        if i in (1, 7):  # train rows; the second is broken after indexing
            new = Path(row["path"]).with_name(f"{'ok' if i == 1 else 'bad'}{EVIL_NAME}.mp4")
            (data / row["path"]).rename(data / new)
            row["path"] = str(new)
    (data / rows[7]["path"]).write_bytes(b"broken")
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = root / f"run{EVIL_NAME}"
    pretrain(tiny_config("xdc"), manifest, run, progress=False)
    evil_result = {EVIL_LABEL: EVIL_NAME, "per_class": {EVIL_LABEL: {"top1": 0.5}}}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / f"evil{EVIL_NAME}.json").write_text(json.dumps(evil_result))
    assert run_cli(["report", str(run), "--no-progress"], monkeypatch) == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "alert(1)</" not in text
    assert EVIL_NAME not in text and '"<' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&amp;&quot;&lt;&gt;" in text
    parser = TagCollector()
    parser.feed(text)
    assert parser.tags <= PAGE_TAGS and parser.attributes <= PAGE_ATTRIBUTES
    shown = "".join(parser.text)
    assert EVIL_LABEL in shown, "the label is shown, as text"
    assert str(run) in shown and f"bad{EVIL_NAME}.mp4" in shown  # run folder, failures list
