"""xdc: self-supervised audio-video learning by Cross-Modal Deep Clustering.

The library is organised along the data flow:

    video files -> ``xdc.data`` (index, decode, log-mel, datasets)
                -> ``xdc.models`` (R(2+1)D-18, ResNet-18 audio, heads)
                -> ``xdc.clustering`` + ``xdc.methods`` (SDC / MDC / CDC / XDC)
                -> ``xdc.training`` (extract -> cluster -> relabel -> train)
                -> ``xdc.evaluation`` (linear probe, finetune, retrieval, report)
                -> ``xdc.export`` (safetensors, TorchScript, ONNX), ``xdc.Embedder`` (embeddings)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xdc.errors import XdcError

if TYPE_CHECKING:
    from xdc.embed import Embedder

__version__ = "0.1.0"
__all__ = ["Embedder", "XdcError", "__version__"]


def __getattr__(name: str) -> Any:
    """``xdc.Embedder`` (``xdc.embed``), imported when first asked for: ``import xdc`` stays
    light."""
    if name == "Embedder":
        from xdc.embed import Embedder

        return Embedder
    raise AttributeError(f"module 'xdc' has no attribute {name!r}")
