"""torch.hub entry points of xdc's encoders, for a local checkout:

    model = torch.hub.load("path/to/xdc", "xdc_r2plus1d_18", source="local",
                           weights="r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth")

``weights``: a released XDC file (hash-checked) or its name (looked up in torch.hub's cache), an
``xdc export`` folder, an xdc run, or None for random initialisation; nothing is downloaded.
See ``xdc/hub.py``.
"""

dependencies = ["torch"]

from xdc.hub import (  # noqa: E402, F401
    xdc_audio_resnet18,
    xdc_frame2d,
    xdc_mixed2d3d,
    xdc_r2plus1d_18,
)
