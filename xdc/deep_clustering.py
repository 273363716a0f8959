"""The model a deep-clustering method trains: both encoders and one classifier head per
(encoder, clustering) pair of the method, with DeepCluster's head re-initialisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xdc import distributed as dist
from xdc import seeds
from xdc.config import PretrainConfig, cluster_k
from xdc.encoders import build_encoders
from xdc.methods import LABELS, Method
from xdc.models.heads import ClassifierHead


class DeepClusteringModel(nn.Module):
    """Both encoders and one head per (encoder, clustering) pair the method trains."""

    def __init__(self, encoders: dict[str, nn.Module], method: Method, num_classes: dict[str, int]):
        super().__init__()
        self.method = method
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(
            {
                method.head_name(enc, name): ClassifierHead(
                    num_features(encoders[enc]), num_classes[name]
                )
                for enc, name in method.heads()
            }
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """{modality: batch} → {head name: (B, K) logits}."""
        feats = {m: self.encoders[m](inputs[m]) for m in self.encoders if m in inputs}
        return {
            self.method.head_name(enc, name): self.heads[self.method.head_name(enc, name)](
                feats[enc]
            )
            for enc, name in self.method.heads()
        }


def num_features(encoder: nn.Module) -> int:
    """The encoder contract's ``num_features`` (D of ``forward_features``)."""
    return int(getattr(encoder, "num_features"))  # noqa: B009 - nn.Module types it as Tensor | Module


def build_model(
    config: PretrainConfig, method: Method, num_labels: int, device: torch.device
) -> DeepClusteringModel:
    """Encoders initialised from ``train.seed``, heads sized by the method's clusterings."""
    sizes = {
        c.name: num_labels if c.name == LABELS else cluster_k(config.cluster, c.name)
        for c in method.clusterings
    }
    with seeds.torch_global(config.train.seed, "init"):
        encoders = build_encoders(config.model, config.data.n_mels)
        model = DeepClusteringModel(encoders, method, sizes)
    return model.to(device)


def reset_heads(
    model: DeepClusteringModel, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    """DeepCluster's re-initialisation: N(0, 0.01) weights, zero bias, no momentum carried over."""
    for head in model.heads.values():
        assert isinstance(head, ClassifierHead)
        head.reset_parameters(generator=generator)
        for p in head.parameters():
            optimizer.state.pop(p, None)


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    if not dist.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_replicas_agree(model: nn.Module) -> None:
    """In a distributed run, every process must end with the same weights (DDP keeps them in
    step); a difference means a bug or a broken collective, so stop rather than save one copy.

    Compares each parameter's sum, in float64 on the parameters' device (NCCL takes only CUDA
    tensors).
    """
    if not dist.is_distributed():
        return
    with torch.no_grad():
        local = torch.stack([p.detach().double().sum() for p in model.parameters()])
    total = dist.all_reduce_sum(local.clone())
    if not torch.allclose(total, local * dist.world_size(), rtol=1e-9, atol=1e-9):
        differ = int((~torch.isclose(total, local * dist.world_size(), rtol=1e-9)).sum())
        raise RuntimeError(
            f"the processes of this distributed run ended with different weights ({differ} of "
            f"{len(local)} parameter tensors differ on rank {dist.rank()}); the checkpoint was "
            "not updated: report it as a bug"
        )
