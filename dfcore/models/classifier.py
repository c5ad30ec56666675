r"""A small digit classifier on sklearn's 8×8 digits, for classifier-guided adjoint optimisation.

The guidance loss of a generated sample :math:`x_0` is :math:`L(x_0) = -\log p_\phi(c \mid x_0)` for a chosen
class c. The classifier is an MLP on the flattened 64 pixels (in the scaling of the diffusion data), trained
with cross-entropy on clean digits plus small Gaussian input noise, which smooths its input gradients
(:math:`\nabla_{x_0} L` is the adjoint's initial value :math:`\lambda_0`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm import tqdm

from dfcore.io import load_checkpoint

__all__ = ["DigitClassifier", "train_classifier", "classifier_state", "load_classifier", "class_nll"]


class DigitClassifier(nn.Module):
    """MLP ``dim -> hidden -> hidden -> num_classes`` with SiLU; accepts (B, dim) or (B, C, H, W)."""

    def __init__(self, dim: int = 64, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.dim, self.hidden, self.num_classes = dim, hidden, num_classes
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape (B, num_classes)."""
        return self.net(x.reshape(x.shape[0], -1).to(cast(nn.Linear, self.net[0]).weight.dtype))


def class_nll(classifier: DigitClassifier, x0: Tensor, target: int) -> Tensor:
    r""":math:`L(x_0) = -\log p(\text{target} \mid x_0)` per sample, shape (B,)."""
    logp = torch.log_softmax(classifier(x0), dim=1)
    return -logp[:, target].to(x0.dtype)


def train_classifier(
    x: Tensor,
    labels: Tensor,
    *,
    hidden: int = 256,
    epochs: int = 60,
    batch_size: int = 128,
    lr: float = 2e-3,
    noise: float = 0.1,
    holdout: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train on a random (1 - holdout) split; return the model and train/test accuracy and loss."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = x.reshape(x.shape[0], -1).float()
    labels = labels.long()
    perm = torch.randperm(x.shape[0], generator=g)
    n_test = int(round(holdout * x.shape[0]))
    test, train = perm[:n_test], perm[n_test:]
    model = DigitClassifier(x.shape[1], hidden, int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress):
        order = train[torch.randperm(train.numel(), generator=g)]
        for i in range(0, order.numel(), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx] + noise * torch.randn(idx.numel(), x.shape[1], generator=g)
            loss = nn.functional.cross_entropy(model(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    metrics: dict[str, float] = {}
    with torch.no_grad():
        for name, idx in (("train", train), ("test", test)):
            if idx.numel() == 0:
                continue
            logits = model(x[idx])
            metrics[f"{name}_accuracy"] = (logits.argmax(1) == labels[idx]).float().mean().item()
            metrics[f"{name}_loss"] = nn.functional.cross_entropy(logits, labels[idx]).item()
    return model, metrics


def classifier_state(model: DigitClassifier, metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """Weights and shape of ``model`` (and its ``metrics``), safe for a weights-only checkpoint."""
    return {
        "state_dict": model.state_dict(),
        "dim": model.dim,
        "hidden": model.hidden,
        "num_classes": model.num_classes,
        "metrics": dict(metrics or {}),
    }


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> DigitClassifier:
    """Load a classifier checkpoint holding :func:`classifier_state` (``weights_only=True``)."""
    state = load_checkpoint(path, map_location=device)
    model = DigitClassifier(state["dim"], state["hidden"], state["num_classes"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval().requires_grad_(False)
