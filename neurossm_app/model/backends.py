"""Which selective-scan back end runs where, decided once per process.

The two optional back ends are probed lazily and at most once per process:

- ``cpu``: the numba kernels of :mod:`._scan_kernels`, when a CPU scan first asks for them;
- ``cuda``: mamba-ssm's ``selective_scan_fn`` *and its compiled module* ``selective_scan_cuda``
  (mamba-ssm after 2.3.2 imports without it and fails in the first forward instead), plus
  causal-conv1d's ``causal_conv1d_fn`` for the convolution, when a GPU tensor first asks for
  ``auto`` or ``cuda`` or :func:`cuda_backend_status` is called.

Each probe keeps its result, or the exception that stopped it, so a broken install costs one
import attempt and one warning, not one per forward. Nothing here changes the process: loading
numba starts its thread pool, which resets OpenMP's thread count, so the loader puts torch's
count back; thread bounds per call are scoped (:func:`._scan_kernels.thread_limit`).

Also here, because they are decisions about the CUDA path that the group level needs without
building a model: the kernels' limits (:data:`CUDA_MAX_D_STATE`, :data:`CUDA_D_CONV_RANGE`,
:func:`cuda_kernel_problems`) and the mixed-precision dtype for a GPU's compute capability
(:func:`autocast_dtype_for_capability`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "BACKENDS",
    "CUDA_D_CONV_RANGE",
    "CUDA_MAX_D_STATE",
    "Backend",
    "CudaBackendStatus",
    "OptionalKernels",
    "autocast_dtype_for_capability",
    "backend_for_device",
    "backend_summary",
    "conv_backend_for",
    "cpu_kernels_available",
    "cuda_backend_status",
    "cuda_kernel_problems",
    "resolve_backend",
]

Backend = Literal["auto", "cpu", "torch", "cuda"]
BACKENDS = ("auto", "cpu", "torch", "cuda")

#: mamba-ssm's selective-scan kernel: ``dstate <= 256`` (a TORCH_CHECK in selective_scan.cpp).
CUDA_MAX_D_STATE = 256
#: causal-conv1d's kernel: ``2 <= width <= 4`` (a TORCH_CHECK in causal_conv1d.cpp).
CUDA_D_CONV_RANGE = (2, 4)


def _one_line(err: BaseException) -> str:
    """``"ImportError: message"`` on one line (compiled-extension errors span several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


class OptionalKernels:
    """An optional dependency, loaded at most once: its value, or why it is missing.

    Parameters
    ----------
    name : str
        What it is, for messages.
    load : callable
        Returns the value (kernels, a function); any exception means "unavailable".
    """

    def __init__(self, name: str, load: Callable[[], Any]) -> None:
        self.name = name
        self._load = load
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._warned = False

    def get(self) -> Any | None:
        """The loaded value, or None when it cannot be loaded (tried once)."""
        if not self._done:
            self._done = True
            try:
                self._value = self._load()
            except Exception as err:  # noqa: BLE001 - ImportError, OSError of a .so, version clashes
                self._error = err
        return self._value

    @property
    def error(self) -> str | None:
        """The reason it is unavailable, on one line; None when it loaded."""
        self.get()
        return None if self._error is None else _one_line(self._error)

    def disable(self, err: BaseException) -> None:
        """Mark it unavailable after a failure at run time (e.g. a JIT that cannot compile)."""
        self._done, self._value, self._error = True, None, err

    def warn_once(self, message: str) -> None:
        """One ``RuntimeWarning`` per process for this dependency."""
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def _load_numba_kernels() -> tuple:
    """Import numba, build the kernels (compiled per dtype on first use), start numba's pool.

    Starting the pool sets OpenMP's thread count to numba's (all cores unless
    ``NUMBA_NUM_THREADS``); torch shares that OpenMP runtime, so its count would silently
    change too (a 30x slower training step was measured when it did). It is put back here.
    """
    torch_threads = torch.get_num_threads()
    try:
        from neurossm_app.model import _scan_kernels

        kernels = _scan_kernels.build_kernels()
        _scan_kernels.start_thread_pool()
    finally:
        torch.set_num_threads(torch_threads)
    return kernels


def _load_selective_scan_fn() -> Callable:
    """mamba-ssm's ``selective_scan_fn``, only when its compiled module imports as well."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    scan_fn = selective_scan_fn
    # mamba-ssm after 2.3.2 imports without its compiled module and raises in the first
    # forward instead: ask for the module itself.
    import selective_scan_cuda  # noqa: F401

    return scan_fn


def _load_causal_conv1d_fn() -> Callable:
    """causal-conv1d's ``causal_conv1d_fn`` (its import loads the compiled module)."""
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn


#: The process's probes; tests replace them with fresh :class:`OptionalKernels`.
NUMBA_KERNELS = OptionalKernels("the numba selective-scan kernels", _load_numba_kernels)
MAMBA_SSM = OptionalKernels("mamba-ssm's CUDA selective scan", _load_selective_scan_fn)
CAUSAL_CONV1D = OptionalKernels("causal-conv1d's CUDA convolution", _load_causal_conv1d_fn)


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class CudaBackendStatus:
    """Whether the ``cuda`` back end can run here (the package side; a GPU is another matter).

    Attributes
    ----------
    available : bool
        mamba-ssm's selective scan and its compiled module import.
    error : str or None
        Why not, on one line (``"ImportError: ..."``).
    conv_available : bool
        causal-conv1d imports (else the convolution runs in PyTorch, also on the GPU).
    conv_error : str or None
    mamba_ssm_version, causal_conv1d_version : str or None
        Installed distributions (None when not installed).
    """

    available: bool
    error: str | None
    conv_available: bool
    conv_error: str | None
    mamba_ssm_version: str | None
    causal_conv1d_version: str | None

    def describe(self) -> str:
        """One line for logs and errors."""
        if self.available:
            conv = (
                f"causal-conv1d {self.causal_conv1d_version}"
                if self.conv_available
                else f"PyTorch's conv1d (causal-conv1d: {self.conv_error})"
            )
            return f"mamba-ssm {self.mamba_ssm_version} CUDA kernels, convolution by {conv}"
        return f"mamba-ssm's CUDA kernels do not import ({self.error})"


def cuda_backend_status() -> CudaBackendStatus:
    """Probe (once per process) mamba-ssm and causal-conv1d; see :class:`CudaBackendStatus`."""
    return CudaBackendStatus(
        available=MAMBA_SSM.get() is not None,
        error=MAMBA_SSM.error,
        conv_available=CAUSAL_CONV1D.get() is not None,
        conv_error=CAUSAL_CONV1D.error,
        mamba_ssm_version=_version("mamba-ssm"),
        causal_conv1d_version=_version("causal-conv1d"),
    )


def cpu_kernels_available() -> bool:
    """Whether the numba back end can be used (imports numba on first call)."""
    return NUMBA_KERNELS.get() is not None


def cuda_kernel_problems(d_state: int, d_conv: int) -> list[tuple[str, int, str]]:
    """What the CUDA kernels refuse in these sizes (empty when they take them).

    Returns
    -------
    list of (field, value, reason)
        e.g. ``("d_state", 300, "is over 256, the limit of mamba-ssm's scan kernel")``.
    """
    problems = []
    if d_state > CUDA_MAX_D_STATE:
        problems.append(
            ("d_state", d_state, f"is over {CUDA_MAX_D_STATE}, the limit of mamba-ssm's scan kernel")
        )
    low, high = CUDA_D_CONV_RANGE
    if not low <= d_conv <= high:
        problems.append(("d_conv", d_conv, f"is outside {low}-{high}, the widths of causal-conv1d's kernel"))
    return problems


def _fallback_warning() -> str:
    return (
        f"The cuda selective-scan back end is unavailable ({MAMBA_SSM.error}); the GPU runs the "
        "much slower PyTorch scan (backend='torch') instead. Install the kernels "
        "(pip install 'neurossm-app[cuda]', docs/installation.md), or ask for backend='cuda' "
        "(--device cuda) to make this an error."
    )


def resolve_backend(backend: Backend, device: torch.device, d_state: int | None = None) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into the one that will run on ``device``.

    Parameters
    ----------
    backend : {"auto", "cpu", "torch", "cuda"}
    device : torch.device
        Where the tensors live.
    d_state : int, optional
        State size N; ``auto`` does not pick ``cuda`` above :data:`CUDA_MAX_D_STATE`.

    Returns
    -------
    str
        ``"cpu"``, ``"torch"`` or ``"cuda"``. ``"cpu"`` and ``auto`` degrade to ``"torch"`` when
        their kernels cannot load, each with one ``RuntimeWarning`` per process.

    Raises
    ------
    ValueError
        ``cpu`` for GPU tensors, ``cuda`` for CPU tensors or for a ``d_state`` over the limit.
    ImportError
        ``cuda`` where mamba-ssm's kernels do not import (the message says why).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    on_gpu = device.type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "cuda" or (backend == "auto" and on_gpu):
        return _resolve_cuda(backend, device, d_state)
    if on_gpu:  # backend == "cpu"
        raise ValueError(
            f"backend='cpu' needs CPU tensors, got tensors on {device}; "
            "use backend='auto', 'torch' or 'cuda'."
        )
    if NUMBA_KERNELS.get() is not None:
        return "cpu"
    NUMBA_KERNELS.warn_once(
        f"The numba selective-scan kernel is unavailable ({NUMBA_KERNELS.error}); falling back "
        "to the slower PyTorch scan (backend='torch'). Install a numba that matches your numpy "
        "to get it back."
    )
    return "torch"


def _resolve_cuda(backend: str, device: torch.device, d_state: int | None) -> str:
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' needs tensors on a GPU, got {device}; use backend='auto'.")
    too_big = d_state is not None and d_state > CUDA_MAX_D_STATE
    if backend == "auto":
        if too_big:
            return "torch"
        if MAMBA_SSM.get() is None:
            MAMBA_SSM.warn_once(_fallback_warning())
            return "torch"
        return "cuda"
    if too_big:
        raise ValueError(
            f"backend='cuda': d_state {d_state} is over {CUDA_MAX_D_STATE}, the limit of "
            "mamba-ssm's scan kernel; use backend='auto' or 'torch'."
        )
    if MAMBA_SSM.get() is None:
        raise ImportError(
            f"backend='cuda' needs mamba-ssm's CUDA kernels, which do not import here "
            f"({MAMBA_SSM.error}); pip install 'neurossm-app[cuda]' (docs/installation.md), "
            "or use backend='torch'."
        )
    return "cuda"


def conv_backend_for(scan_backend: str, d_conv: int) -> str:
    """``"causal-conv1d"`` when the convolution of a ``scan_backend`` block runs on that
    kernel (cuda back end, causal-conv1d importing, ``d_conv`` within its widths), else
    ``"torch"`` (``nn.Conv1d``)."""
    low, high = CUDA_D_CONV_RANGE
    if scan_backend == "cuda" and low <= d_conv <= high and CAUSAL_CONV1D.get() is not None:
        return "causal-conv1d"
    return "torch"


def backend_for_device(device: torch.device | str, backend: Backend = "auto", d_state: int = 16) -> str:
    """The scan back end a model with ``backend`` uses for tensors on ``device``.

    :func:`resolve_backend` without the errors: an impossible request (``cuda`` on a CPU, or
    without mamba-ssm) is named as asked, the caller having refused it already.
    """
    try:
        return resolve_backend(backend, torch.device(device), d_state)
    except (ValueError, ImportError):
        return backend


def backend_summary(
    device: torch.device | str, backend: Backend = "auto", d_state: int = 16, d_conv: int = 4
) -> dict[str, str | None]:
    """What a NeuroSSM runs on ``device``: for provenance (a unit's JSON, the report).

    Returns
    -------
    dict
        ``scan_backend`` (``cpu``, ``torch`` or ``cuda``), ``conv_backend`` (``torch`` or
        ``causal-conv1d``) and, on a GPU, ``mamba_ssm`` and ``causal_conv1d`` (versions, or
        None) and ``cuda_error`` (why the kernels do not import, or None).
    """
    device = torch.device(device)
    scan = backend_for_device(device, backend, d_state)
    summary: dict[str, str | None] = {"scan_backend": scan, "conv_backend": conv_backend_for(scan, d_conv)}
    if device.type == "cuda":
        status = cuda_backend_status()
        summary.update(
            mamba_ssm=status.mamba_ssm_version,
            causal_conv1d=status.causal_conv1d_version,
            cuda_error=status.error,
        )
    return summary


def autocast_dtype_for_capability(capability: tuple[int, int] | None) -> torch.dtype | None:
    """The mixed-precision dtype for a GPU of compute ``capability`` (None: no GPU).

    bfloat16 from compute capability 8.0 (Ampere) on, where it is native; float16 below (Volta,
    Turing), to be paired with a gradient scaler. ``torch.cuda.is_bf16_supported()`` is not
    used: from torch 2.4 it also counts emulated bfloat16, which those GPUs would run slowly.
    None (full precision) without a GPU.
    """
    if capability is None:
        return None
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16
