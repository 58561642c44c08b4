"""Training NeuroSSM on random windows of the training scans.

Every epoch draws one fresh random window of ``window`` volumes from every training scan, in a
shuffled order; AdamW with a one-cycle learning-rate schedule, gradient clipping, class-weighted
cross-entropy, and mixed precision on CUDA only (bf16 where supported, else fp16 with a gradient
scaler). Everything random comes from the seed given, so CPU runs repeat bit for bit.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurossm_app.errors import BackendUnavailableError, UsageError
from neurossm_app.model.backends import autocast_dtype_for_capability, cuda_backend_status

LOGGER = logging.getLogger("neurossm_app")


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained.

    Attributes
    ----------
    window
        Training window length in volumes.
    epochs, batch_size
        Passes over the training scans (one window per scan and epoch) and windows per step.
    lr, weight_decay
        Peak learning rate of the one-cycle schedule and AdamW's decoupled weight decay.
    grad_clip
        Maximum global gradient norm.
    """

    window: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float = 1.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    ``auto`` on a GPU without mamba-ssm's kernels trains with the PyTorch scan (one warning,
    from :mod:`neurossm_app.model.backends`); ``cuda`` asks for the kernels and refuses without
    them, rather than running many times slower than the user planned for.

    Raises
    ------
    UsageError
        ``cuda`` was asked for and no GPU is visible.
    BackendUnavailableError
        ``cuda`` was asked for and mamba-ssm's kernels do not import (exit 69).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda but torch sees no GPU; use --device cpu or check CUDA_VISIBLE_DEVICES."
        )
    if device == "cuda":
        status = cuda_backend_status()
        if not status.available:
            raise BackendUnavailableError(
                f"--device cuda but mamba-ssm's CUDA kernels do not import ({status.error}); install "
                "them as docs/installation.md says, or use --device auto to train with the PyTorch scan."
            )
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (model initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(warn_only: bool = True) -> Iterator[None]:
    """Deterministic torch kernels inside the block; the caller's setting is restored after it.

    ``warn_only``: a CUDA op without a deterministic kernel warns instead of stopping training.
    The setting is process-wide, so it is scoped: a notebook or an in-process test that trains a
    unit gets torch back as it was.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=was_warn_only)


@contextmanager
def reproducible(seed: int) -> Iterator[None]:
    """:func:`seed_everything`, then :func:`deterministic_algorithms` for the block."""
    seed_everything(seed)
    with deterministic_algorithms():
        yield


def unit_seed(seed: int, fold: int) -> int:
    """One integer seed per (seed, fold) unit, stable across runs and platforms."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def random_windows(series: list[np.ndarray], window: int, rng: np.random.Generator) -> np.ndarray:
    """One random window of ``window`` volumes from each series.

    Parameters
    ----------
    series : list of numpy.ndarray, each (R, T_i) with T_i >= window
    window : int
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, (N, R, window) float32
    """
    starts = [int(rng.integers(0, x.shape[1] - window + 1)) for x in series]
    return np.stack([x[:, s : s + window] for x, s in zip(series, starts, strict=True)]).astype(np.float32)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``: bf16 from compute capability 8.0, fp16 (with a gradient
    scaler) below, ``None`` (full precision) off CUDA; see ``autocast_dtype_for_capability``."""
    if device.type != "cuda":
        return None
    return autocast_dtype_for_capability(torch.cuda.get_device_capability(device))


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * n_c)`` so each class weighs the same in the loss, (C,)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices and kernels only.

    Biases, normalisation gains (1-D tensors) and parameters that mamba-ssm marks
    ``_no_weight_decay`` (``A_log``, ``D``: decaying them pulls every state's decay rate
    towards ``exp(-1)`` and the skip connection to 0) get none, as in mamba-ssm's own training.

    Returns
    -------
    list of dict
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``
    """
    decayed, exempt = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or getattr(parameter, "_no_weight_decay", False)
        (exempt if no_decay else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def train_model(
    model: nn.Module,
    series: list[np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    description: str = "train",
) -> pd.DataFrame:
    """Train ``model`` in place on random windows.

    Parameters
    ----------
    model
        Maps ``(B, R, window)`` float32 to ``(B, C)`` logits.
    series : list of numpy.ndarray, each (R, T_i)
        Normalized training scans, ``T_i >= settings.window``.
    labels : numpy.ndarray, (N,) int64
    n_classes : int
    settings : TrainSettings
    seed : int
        Seeds the window positions and batch order (model initialisation is the caller's).
    device : torch.device
    description : str
        Prefix of the progress bar and log lines (e.g. ``fold-0 seed-1``).

    Returns
    -------
    pandas.DataFrame
        One row per epoch: ``epoch``, ``loss`` (mean training loss), ``train_accuracy`` (on the
        windows of that epoch), ``lr`` (at the end of the epoch).
    """
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(series) // settings.batch_size)
    model.to(device)
    optimisation = Optimisation.build(model, settings, labels, n_classes, steps_per_epoch, device)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    history = []
    for epoch in range(1, settings.epochs + 1):
        row = train_epoch(optimisation, series, labels_t, settings, rng, f"{description} epoch {epoch}")
        history.append({"epoch": epoch, **row})
        log_epoch(description, epoch, settings.epochs, history[-1])
    return pd.DataFrame(history, columns=["epoch", "loss", "train_accuracy", "lr"])


@dataclass
class Optimisation:
    """What one training step needs besides the batch: model, optimizer, schedule, loss, precision."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None
    grad_clip: float
    device: torch.device

    @classmethod
    def build(
        cls,
        model: nn.Module,
        settings: TrainSettings,
        labels: np.ndarray,
        n_classes: int,
        steps_per_epoch: int,
        device: torch.device,
    ) -> Optimisation:
        """AdamW (:func:`weight_decay_groups`), one-cycle schedule, class-weighted cross-entropy."""
        optimizer = torch.optim.AdamW(
            weight_decay_groups(model, settings.weight_decay),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch
        )
        amp_dtype = autocast_dtype(device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        loss_fn = nn.CrossEntropyLoss(weight=class_weights(labels, n_classes).to(device))
        return cls(model, optimizer, schedule, scaler, loss_fn, amp_dtype, settings.grad_clip, device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimisation step on a batch ``x`` (B, R, L), ``y`` (B,).

        Returns
        -------
        loss, logits, lr
            The batch loss, the logits (B, C) and the learning rate this step used.
        """
        optimizer, amp_dtype = self.optimizer, self.amp_dtype
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = self.model(x)  # (B, C)
            loss = self.loss_fn(logits.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        self.schedule.step()
        return loss, logits, lr


def train_epoch(
    optimisation: Optimisation,
    series: list[np.ndarray],
    labels: torch.Tensor,
    settings: TrainSettings,
    rng: np.random.Generator,
    description: str,
) -> dict[str, float]:
    """One pass: a fresh random window of every training scan, in a shuffled order.

    Returns
    -------
    dict
        ``loss`` (mean over the windows), ``train_accuracy``, ``lr`` (of the last step).
    """
    from tqdm.auto import tqdm

    optimisation.model.train()
    n_samples, batch_size = len(series), settings.batch_size
    order = rng.permutation(n_samples)
    targets = labels[order]
    total_loss, correct, last_lr = 0.0, 0, float("nan")
    steps = -(-n_samples // batch_size)
    bar = tqdm(
        range(steps), desc=f"{description}/{settings.epochs}", disable=not sys.stderr.isatty(),
        leave=False, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    for step in bar:
        chunk = slice(step * batch_size, (step + 1) * batch_size)
        # Cut per batch: all windows of an epoch at once would not fit in memory on HCP.
        windows = random_windows([series[i] for i in order[chunk]], settings.window, rng)
        x = torch.from_numpy(windows).to(optimisation.device, non_blocking=True)  # (B, R, L)
        y = targets[chunk].to(optimisation.device)
        loss, logits, last_lr = optimisation.step(x, y)
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(dim=1) == y).sum())
        seen = min(n_samples, (step + 1) * batch_size)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.2f}")
    bar.close()
    return {"loss": total_loss / n_samples, "train_accuracy": correct / n_samples, "lr": last_lr}


def log_epoch(description: str, epoch: int, epochs: int, row: dict[str, float]) -> None:
    """Log about five epochs per run at INFO (the others at DEBUG); warn of a non-finite loss."""
    level = logging.INFO if epoch % max(1, epochs // 5) == 0 or epoch == epochs else logging.DEBUG
    LOGGER.log(
        level,
        "%s epoch %d/%d: loss %.4f, train accuracy %.3f, lr %.2e",
        description, epoch, epochs, row["loss"], row["train_accuracy"], row["lr"],
    )  # fmt: skip
    if not np.isfinite(row["loss"]):
        LOGGER.warning("%s: the training loss is not finite; try a lower --lr", description)
