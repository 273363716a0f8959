"""xdc: self-supervised audio-video learning by Cross-Modal Deep Clustering.

The library is organised along the data flow:

    video files -> ``xdc.data`` (index, decode, log-mel, datasets)
                -> ``xdc.models`` (R(2+1)D-18, ResNet-18 audio, heads)
                -> ``xdc.clustering`` + ``xdc.methods`` (SDC / MDC / CDC / XDC)
                -> ``xdc.training`` (extract -> cluster -> relabel -> train)
                -> ``xdc.evaluation`` (linear probe, finetune, retrieval, report)
"""

from xdc.errors import XdcError

__version__ = "0.1.0"
__all__ = ["XdcError", "__version__"]
