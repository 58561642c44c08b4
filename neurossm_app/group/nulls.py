"""Null maps for the reference score's p-value: BrainSMASH surrogates or ROI permutations.

A parcel map is spatially autocorrelated: neighbouring ROIs have similar values. Shuffling ROI
labels destroys that, so a permutation null is too narrow for two smooth maps and its p-values
are too small. BrainSMASH (Burt, Helmer, Shinn, Anticevic & Murray 2020, "Generative modeling of
brain maps with spatial autocorrelation", NeuroImage 220:117038) makes surrogate maps whose
variogram matches the map's own: the map's values are permuted, smoothed over each ROI's nearest
neighbours (for several neighbourhood sizes), and rescaled so that the smoothed variogram of the
surrogate fits the map's; the best-fitting neighbourhood is kept per surrogate.

:func:`brainsmash_surrogates` is ``brainsmash.mapgen.Base`` (kernel ``exp``, ``pv`` 25, ``nh``
25, no resampling) with its smoothing done as one matrix product per neighbourhood size instead of
masked-array gathers: the same random draws and the same surrogates (tests compare the two), about
ten times faster, so 1000 surrogates of a 400-ROI map take seconds.
"""

from __future__ import annotations

import math

import numpy as np

#: ``--null-model`` choices; the first is the default.
NULL_MODELS = ("brainsmash", "permutation")

#: BrainSMASH's default neighbourhood sizes (fractions of the ROIs used to smooth a permuted map).
DELTAS = tuple(np.linspace(0.1, 0.9, 9))

#: Fewest ROIs with a centroid for which a variogram can be fitted.
MIN_ROIS = 10

#: Surrogates made per batch (memory: pairs x batch floats for the variograms).
BATCH = 100


def centroid_distances(centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances between ROI centroids, (R, R) in the centroids' unit (mm).

    Parameters
    ----------
    centroids : numpy.ndarray, (R, 3)
        NaN rows (ROIs without voxels) give NaN rows and columns.
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    return np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)


def _smoothers(generator, distances: np.ndarray, deltas: tuple[float, ...]) -> dict[float, np.ndarray]:
    """Per neighbourhood size delta, the (R, R) matrix of ``Base.smooth_map``: each ROI's
    ``int(delta * R)`` nearest other ROIs, weighted by the generator's kernel, rows summing to 1."""
    n_rois = len(distances)
    order = np.argsort(distances, axis=-1)
    rows = np.arange(n_rois)[:, None]
    smoothers = {}
    for delta in deltas:
        neighbours = order[:, 1 : int(delta * n_rois) + 1]
        weights = generator.kernel(distances[rows, neighbours])
        matrix = np.zeros((n_rois, n_rois))
        matrix[rows, neighbours] = weights / weights.sum(axis=1, keepdims=True)
        smoothers[delta] = matrix
    return smoothers


def _variograms(generator, maps: np.ndarray) -> np.ndarray:
    """Smoothed variograms of (R, N) maps, (nh, N)."""
    return np.asarray(generator.compute_smooth_variogram(maps)).reshape(generator.nh, -1)


def _batch(generator, values, smoothers, target, size: int, seed: int) -> np.ndarray:
    """``size`` surrogates drawn as ``Base._call_method`` draws them with ``seed``, (size, R)."""
    state = np.random.RandomState(seed)
    permuted = values[state.random_sample((len(values), size)).argsort(axis=0)]  # (R, size)
    deltas = list(smoothers)
    fits = [generator.regress(_variograms(generator, smoothers[d] @ permuted), target) for d in deltas]
    alphas, betas, residuals = (
        np.array([fit[i] for fit in fits]).reshape(len(deltas), size) for i in range(3)
    )
    best = np.argmin(residuals, axis=0)  # (size,)
    smoothed = np.empty_like(permuted)
    for k, delta in enumerate(deltas):
        columns = best == k
        smoothed[:, columns] = smoothers[delta] @ permuted[:, columns]
    columns = np.arange(size)
    surrogates = np.sqrt(np.abs(betas[best, columns])) * smoothed + np.sqrt(
        np.abs(alphas[best, columns])
    ) * state.randn(len(values), size)
    return (surrogates - surrogates.mean(axis=0)).T


def brainsmash_surrogates(values: np.ndarray, distances: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Variogram-matched surrogates of one map (BrainSMASH's ``Base``), seeded.

    Parameters
    ----------
    values : numpy.ndarray, (R,)
        The map, finite.
    distances : numpy.ndarray, (R, R)
        Distances between the ROIs (centroids, mm), finite and symmetric.
    n : int
        Number of surrogates.
    seed : int

    Returns
    -------
    numpy.ndarray, (n, R)
        Mean-zero surrogates; equal (to rounding) to
        ``brainsmash.mapgen.Base(values, distances, deltas, seed=seed)(n, batch_size=BATCH)``
        with the neighbourhood sizes that keep at least one neighbour.
    """
    from brainsmash.mapgen import Base
    from threadpoolctl import threadpool_limits

    values = np.asarray(values, dtype=np.float64)
    deltas = tuple(d for d in DELTAS if int(d * len(values)) >= 1)
    generator = Base(values, distances, deltas=np.array(deltas), seed=seed)
    smoothers = _smoothers(generator, np.asarray(distances, dtype=np.float64), deltas)
    target = _variograms(generator, values[:, None])[:, 0]
    sizes = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    seeds = np.random.RandomState(seed).randint(np.iinfo(np.int32).max, size=len(sizes))
    # Small products: BLAS threads only wait for each other (measured: 400 ROIs x 1000 surrogates,
    # 6.5 s on one thread, 90 s on two busy cores).
    with threadpool_limits(1, user_api="blas"):
        batches = [
            _batch(generator, values, smoothers, target, s, int(b)) for s, b in zip(sizes, seeds, strict=True)
        ]
    return np.concatenate(batches, axis=0) if batches else np.zeros((0, len(values)))


def permuted_maps(values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` random permutations of ``values`` across ROIs, (n, R), seeded."""
    rng = np.random.default_rng(seed)
    return (
        np.stack([values[rng.permutation(len(values))] for _ in range(n)])
        if n
        else np.zeros((0, len(values)))
    )


def null_maps(
    values: np.ndarray, n: int, seed: int, model: str = "brainsmash", distances: np.ndarray | None = None
) -> np.ndarray:
    """``n`` maps of the null model ``model`` for ``values`` (R,), (n, R).

    With ``brainsmash``, ROIs whose distance to themselves is NaN (no voxel, so no centroid) keep
    their own value in every surrogate; the others get BrainSMASH surrogates.

    Raises
    ------
    ValueError
        An unknown model, no distances for brainsmash, or fewer than :data:`MIN_ROIS` located ROIs.
    """
    values = np.asarray(values, dtype=np.float64)
    if model == "permutation":
        return permuted_maps(values, n, seed)
    if model != "brainsmash":
        raise ValueError(f"null model must be one of {', '.join(NULL_MODELS)}, got {model!r}")
    if distances is None:
        raise ValueError("the brainsmash null needs the distances between the ROIs")
    located = np.isfinite(np.diagonal(distances))  # an ROI without a centroid: NaN to itself
    if located.sum() < MIN_ROIS:
        raise ValueError(
            f"the brainsmash null needs at least {MIN_ROIS} ROIs with voxels, got {int(located.sum())}"
        )
    maps = np.tile(values, (n, 1))
    maps[:, located] = brainsmash_surrogates(values[located], distances[np.ix_(located, located)], n, seed)
    return maps


def p_decimals(n_null: int) -> int:
    """Decimals that ``n_null`` null maps justify: ``floor(log10(n_null))``, at least 1."""
    return max(1, int(math.floor(math.log10(n_null)))) if n_null >= 1 else 1


def format_p(p: float, n_null: int) -> str:
    """A p-value from ``n_null`` null maps at the precision they give.

    ``format_p(0.0421, 100) == "0.04"``; the smallest p the null can give, ``1 / (n_null + 1)``,
    reads ``"< 0.01"`` for 100 maps and ``"< 0.001"`` for 1000; NaN reads ``"n/a"``.
    """
    if p is None or not np.isfinite(p) or n_null < 1:
        return "n/a"
    decimals = p_decimals(n_null)
    resolution = 10.0**-decimals
    if p < resolution:
        return f"< {resolution:.{decimals}f}"
    return f"{p:.{decimals}f}"
