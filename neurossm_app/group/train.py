"""Training NeuroSSM on random windows of the training scans.

Every epoch draws one fresh random window of ``window`` volumes from every training scan, in a
shuffled order, optionally augmented (:func:`augment_windows`); AdamW with a one-cycle
learning-rate schedule, gradient clipping, class-weighted cross-entropy, and mixed precision on
CUDA only (bf16 where supported, else fp16 with a gradient scaler). After every epoch the model
can be scored on held-out scans (:class:`EpochChecks`): an inner validation split, whose best
epoch's weights are kept (early stopping), and the test fold, for the learning curves only.
Everything random comes from the seed given, so CPU runs repeat bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Full, Queue

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurossm_app.errors import BackendUnavailableError, UsageError
from neurossm_app.group.series_cache import release
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
    augment
        Names from :data:`neurossm_app.group.presets.AUGMENTATIONS` applied to every training window.
    background_loader
        Cut the next batches in a background thread while the device trains on this one (into
        pinned memory on CUDA); ``None``: on CUDA only. The windows are the same either way.
    """

    window: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float = 1.0
    augment: tuple[str, ...] = ()
    background_loader: bool | None = None


SCALE_RANGE = (0.8, 1.25)  # one amplitude factor per window, log-uniform
NOISE_SD = 0.1  # additive white noise, in the z-scored units of the series
ROI_DROPOUT = 0.1  # probability that a ROI of a window is set to 0 (its mean), as a missing ROI is
TIME_MASK = 0.1  # at most this fraction of a window's volumes, one span, set to 0 as censored ones are


def augment_windows(windows: np.ndarray, augment: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """Augmented copies of training windows.

    Parameters
    ----------
    windows : numpy.ndarray, (B, R, L) float32
        Windows of z-scored series.
    augment : tuple of str
        Names from :data:`~neurossm_app.group.presets.AUGMENTATIONS`:
        ``scale`` multiplies each window by one factor drawn
        log-uniformly from :data:`SCALE_RANGE`; ``noise`` adds white noise of SD
        :data:`NOISE_SD`; ``roi-dropout`` sets each ROI of a window to 0 with probability
        :data:`ROI_DROPOUT`; ``time-mask`` sets one span of up to :data:`TIME_MASK` of the volumes
        of every ROI to 0. Zero is what the group level writes for a missing ROI or a censored
        volume (the mean after z-scoring), so the last two teach the model the gaps real data have.
    rng : numpy.random.Generator
        Only the augmentations asked for draw from it.

    Returns
    -------
    numpy.ndarray, (B, R, L) float32
    """
    if not augment:
        return windows
    out = windows.copy()
    n_windows, n_rois, length = out.shape
    if "scale" in augment:
        low, high = np.log(SCALE_RANGE)
        out *= np.exp(rng.uniform(low, high, size=(n_windows, 1, 1))).astype(np.float32)
    if "noise" in augment:
        out += (NOISE_SD * rng.standard_normal(out.shape)).astype(np.float32)
    if "roi-dropout" in augment:
        out *= rng.random((n_windows, n_rois, 1)) >= ROI_DROPOUT
    if "time-mask" in augment:
        spans = rng.integers(0, int(TIME_MASK * length) + 1, size=n_windows)
        starts = rng.integers(0, length - spans + 1)
        for index, (start, span) in enumerate(zip(starts, spans, strict=True)):
            out[index, :, start : start + span] = 0.0
    return out


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


@dataclass(frozen=True)
class HeldOut:
    """Scans scored after every epoch: normalized series, each (R, T_i), and labels (N,) int64."""

    series: Sequence[np.ndarray]
    labels: np.ndarray


@dataclass(frozen=True)
class EpochChecks:
    """What :func:`train_model` scores after every epoch (full-length scans, eval mode).

    Attributes
    ----------
    validation
        The inner validation split: the epoch with the highest balanced accuracy on it (ties: the
        lowest class-balanced cross-entropy, then the earliest) is kept, its weights restored.
    test
        The test fold: its accuracy goes into the history for the learning curves only; nothing
        is chosen with it.
    """

    validation: HeldOut | None = None
    test: HeldOut | None = None


#: Columns of :func:`train_model`'s history (``val_*``/``test_*`` NaN when not scored).
HISTORY_COLUMNS = (
    "epoch", "loss", "train_accuracy", "lr", "val_loss", "val_accuracy", "val_balanced_accuracy",
    "test_accuracy", "selected",
)  # fmt: skip


def train_model(
    model: nn.Module,
    series: list[np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    description: str = "train",
    checks: EpochChecks | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place on random windows; with a validation split, keep its best epoch.

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
        Seeds the window positions, augmentations and batch order (model initialisation is the
        caller's).
    device : torch.device
    description : str
        Prefix of the progress bar and log lines (e.g. ``fold-0 seed-1``).
    checks : EpochChecks, optional
        Held-out scans scored after every epoch; with ``checks.validation`` the model ends with
        the weights of the chosen epoch, otherwise with those of the last.

    Returns
    -------
    pandas.DataFrame
        One row per epoch, :data:`HISTORY_COLUMNS`: ``loss`` (mean training loss),
        ``train_accuracy`` (on the windows of that epoch, in training mode), ``lr`` (at the end
        of the epoch), the validation split's ``val_loss`` (class-balanced cross-entropy),
        ``val_accuracy``, ``val_balanced_accuracy``, the test fold's ``test_accuracy``, and
        ``selected`` (1 on the epoch whose weights the model ends with).
    """
    checks = checks or EpochChecks()
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(series) // settings.batch_size)
    model.to(device)
    optimisation = Optimisation.build(model, settings, labels, n_classes, steps_per_epoch, device)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    history, best = [], _BestEpoch()
    for epoch in range(1, settings.epochs + 1):
        row = train_epoch(optimisation, series, labels_t, settings, rng, f"{description} epoch {epoch}")
        row |= score_epoch(model, checks, n_classes, settings.batch_size, device)
        history.append({"epoch": epoch, **row})
        log_epoch(description, epoch, settings.epochs, history[-1])
        if checks.validation is not None:
            best.offer(epoch, row, model)
    chosen = best.restore(model) if checks.validation is not None else settings.epochs
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS[:-1]))
    frame["selected"] = (frame["epoch"] == chosen).astype(int)
    return frame


@dataclass
class _BestEpoch:
    """The best epoch on the validation split so far, and a copy of its weights."""

    key: tuple[float, float] | None = None
    epoch: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def offer(self, epoch: int, row: dict[str, float], model: nn.Module) -> None:
        loss = row["val_loss"] if np.isfinite(row["val_loss"]) else np.inf
        key = (row["val_balanced_accuracy"], -loss)
        if self.key is None or key > self.key:  # strictly better: ties keep the earlier epoch
            self.key, self.epoch = key, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> int:
        model.load_state_dict(self.state)
        return self.epoch


def score_epoch(
    model: nn.Module, checks: EpochChecks, n_classes: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """``val_loss``, ``val_accuracy``, ``val_balanced_accuracy`` and ``test_accuracy`` (NaN: not scored)."""
    from neurossm_app.group.evaluate import predict_proba

    row = dict.fromkeys(HISTORY_COLUMNS[4:8], float("nan"))
    if checks.validation is not None:
        proba = predict_proba(model, checks.validation.series, device, batch_size)  # (N_val, C)
        row |= held_out_scores(checks.validation.labels, proba, n_classes)
    if checks.test is not None:
        proba = predict_proba(model, checks.test.series, device, batch_size)
        row["test_accuracy"] = float((proba.argmax(axis=1) == checks.test.labels).mean())
    return row


def held_out_scores(labels: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and class-balanced cross-entropy of probabilities (N, C).

    Balanced: every class present counts the same, whatever its number of scans.
    """
    correct = proba.argmax(axis=1) == labels
    nll = -np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-12, None))
    present = [k for k in range(n_classes) if np.any(labels == k)]
    return {
        "val_loss": float(np.mean([nll[labels == k].mean() for k in present])),
        "val_accuracy": float(correct.mean()),
        "val_balanced_accuracy": float(np.mean([correct[labels == k].mean() for k in present])),
    }


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
        total=steps, desc=f"{description}/{settings.epochs}", disable=not sys.stderr.isatty(),
        leave=False, file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    cuda = optimisation.device.type == "cuda"
    batches = training_batches(series, order, settings, rng, pin_memory=cuda)
    background = cuda if settings.background_loader is None else settings.background_loader
    with background_batches(batches) if background else contextlib.nullcontext(batches) as batches:
        for step, windows in enumerate(batches):
            chunk = slice(step * batch_size, (step + 1) * batch_size)
            x = windows.to(optimisation.device, non_blocking=True)  # (B, R, L)
            y = targets[chunk].to(optimisation.device)
            loss, logits, last_lr = optimisation.step(x, y)
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            seen = min(n_samples, (step + 1) * batch_size)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.2f}")
    bar.close()
    return {"loss": total_loss / n_samples, "train_accuracy": correct / n_samples, "lr": last_lr}


def training_batches(
    series: Sequence[np.ndarray],
    order: np.ndarray,
    settings: TrainSettings,
    rng: np.random.Generator,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """The windows of one epoch, batch by batch, (B, R, window) float32 tensors.

    Cut per batch: all windows of an epoch at once would not fit in memory on HCP. Each batch
    draws its window starts, then its augmentations, from ``rng``, in batch order, so the batches
    are the same whether this runs in the training thread or in :func:`background_batches`. The
    memory-mapped pages of the scans a batch was cut from are released after it
    (:func:`~neurossm_app.group.series_cache.release`).
    """
    for start in range(0, len(order), settings.batch_size):
        chosen = order[start : start + settings.batch_size]
        windows = random_windows([series[i] for i in chosen], settings.window, rng)
        release(series, chosen)
        windows = augment_windows(windows, settings.augment, rng)
        batch = torch.from_numpy(windows)
        yield batch.pin_memory() if pin_memory else batch


_DONE = object()


@contextmanager
def background_batches(batches: Iterator[torch.Tensor], depth: int = 2) -> Iterator[Iterator[torch.Tensor]]:
    """Run ``batches`` in a background thread, ``depth`` batches ahead of the consumer.

    Only that thread advances ``batches`` (and its random generator), in order, so the batches
    are those of the foreground loop. An error in the thread is raised in the consumer; leaving
    the block early stops the thread.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(err)

    def consume() -> Iterator[torch.Tensor]:
        while (item := queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=produce, name="neurossm-batches", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


_HELD_OUT_LOGGED = (
    ("val_balanced_accuracy", "validation balanced accuracy"),
    ("test_accuracy", "test accuracy"),
)


def log_epoch(description: str, epoch: int, epochs: int, row: dict[str, float]) -> None:
    """Log about five epochs per run at INFO (the others at DEBUG); warn of a non-finite loss."""
    level = logging.INFO if epoch % max(1, epochs // 5) == 0 or epoch == epochs else logging.DEBUG
    held_out = "".join(
        f", {name} {row[key]:.3f}"
        for key, name in _HELD_OUT_LOGGED
        if np.isfinite(row.get(key, float("nan")))
    )
    LOGGER.log(
        level,
        "%s epoch %d/%d: loss %.4f, train accuracy %.3f, lr %.2e%s",
        description, epoch, epochs, row["loss"], row["train_accuracy"], row["lr"], held_out,
    )  # fmt: skip
    if not np.isfinite(row["loss"]):
        LOGGER.warning("%s: the training loss is not finite; try a lower --lr", description)
