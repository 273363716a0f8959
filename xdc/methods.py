"""The four deep-clustering methods of the paper, as data (README, "The methods").

A method says which clusterings are made (k-means over which modality's features) and which
clusterings the heads of each encoder predict. One training loop serves all of them:

| method | clusterings                      | video encoder predicts | audio encoder predicts |
|--------|----------------------------------|------------------------|------------------------|
| sdc    | video ← f_v, audio ← f_a         | video                  | audio                  |
| mdc    | video ← f_v, audio ← f_a         | video and audio        | video and audio        |
| cdc    | joint ← [f_v, f_a]               | joint                  | joint                  |
| xdc    | video ← f_v, audio ← f_a         | **audio**              | **video**              |

``supervised`` is not a paper method: both encoders predict the manifest's true labels with the
same loop and budget. It is the upper bound every self-supervised result is shown next to.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdc.errors import ConfigError

MODALITIES = ("video", "audio")
LABELS = "labels"
"""The name of the 'clustering' made of the manifest's true labels (method ``supervised``)."""


@dataclass(frozen=True)
class Clustering:
    """A k-means over the concatenation of the features of ``modalities`` (L2-normalised each)."""

    name: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class Method:
    name: str
    clusterings: tuple[Clustering, ...]
    targets: tuple[tuple[str, tuple[str, ...]], ...]
    """(encoder modality, names of the clusterings its heads predict), one entry per encoder."""
    description: str

    def heads(self) -> list[tuple[str, str]]:
        """(encoder modality, clustering name) of every head, in a fixed order."""
        return [(enc, name) for enc, names in self.targets for name in names]

    def head_name(self, encoder: str, clustering: str) -> str:
        return f"{encoder}_to_{clustering}"

    @property
    def uses_labels(self) -> bool:
        return any(c.name == LABELS for c in self.clusterings)

    @property
    def feature_modalities(self) -> tuple[str, ...]:
        """Modalities whose features must be extracted for clustering."""
        return tuple(m for m in MODALITIES if any(m in c.modalities for c in self.clusterings))


_VIDEO = Clustering("video", ("video",))
_AUDIO = Clustering("audio", ("audio",))

METHODS: dict[str, Method] = {
    "sdc": Method(
        "sdc",
        (_VIDEO, _AUDIO),
        (("video", ("video",)), ("audio", ("audio",))),
        "Single-modality deep clustering: each encoder predicts its own modality's clusters.",
    ),
    "mdc": Method(
        "mdc",
        (_VIDEO, _AUDIO),
        (("video", ("video", "audio")), ("audio", ("video", "audio"))),
        "Multi-head deep clustering: each encoder predicts both modalities' clusters.",
    ),
    "cdc": Method(
        "cdc",
        (Clustering("joint", ("video", "audio")),),
        (("video", ("joint",)), ("audio", ("joint",))),
        "Concatenation deep clustering: both encoders predict clusters of [f_v, f_a].",
    ),
    "xdc": Method(
        "xdc",
        (_VIDEO, _AUDIO),
        (("video", ("audio",)), ("audio", ("video",))),
        "Cross-modal deep clustering: each encoder predicts the OTHER modality's clusters.",
    ),
    "supervised": Method(
        "supervised",
        (Clustering(LABELS, ()),),
        (("video", (LABELS,)), ("audio", (LABELS,))),
        "Upper bound, not self-supervised: both encoders predict the manifest's true labels.",
    ),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"--method {name!r} is unknown; choose one of {', '.join(METHODS)}"
        ) from None
