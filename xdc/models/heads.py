"""Classifier heads, kept outside the encoders so that they can be swapped and re-initialised."""

from __future__ import annotations

import torch
from torch import nn

from xdc.errors import ConfigError


class ClassifierHead(nn.Linear):
    """A linear classifier on pooled encoder features: (B, in_features) -> (B, num_classes) logits.

    A plain ``nn.Linear`` (state-dict keys ``weight``, ``bias``) whose ``reset_parameters`` draws
    weights from N(0, 0.01) and zeroes the bias, as DeepCluster does for its head at every
    clustering round (the cluster ids are a new labelling each time). Construction uses the
    same initialisation.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        if in_features < 1 or num_classes < 1:
            raise ConfigError(
                f"ClassifierHead needs in_features >= 1 and num_classes >= 1, "
                f"got {in_features} and {num_classes}"
            )
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights ~ N(0, 0.01) (drawn from ``generator`` when given, for exact resumes), bias 0."""
        # Drawn on the CPU, then copied: the same weights whatever the device of the head.
        with torch.no_grad():
            self.weight.copy_(
                torch.empty(self.weight.shape).normal_(0.0, 0.01, generator=generator)
            )
        if self.bias is not None:
            nn.init.zeros_(self.bias)


__all__ = ["ClassifierHead"]
