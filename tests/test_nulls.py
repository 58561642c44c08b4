"""The reference score's null models: BrainSMASH surrogates are calibrated where ROI permutations
are not, find a planted association, and reproduce ``brainsmash.mapgen.Base``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from neurossm_app.group.maps import partial_correlation, roi_centroids
from neurossm_app.group.nulls import (
    BATCH,
    DELTAS,
    MIN_ROIS,
    brainsmash_surrogates,
    centroid_distances,
    format_p,
    null_maps,
    p_decimals,
)

N_ROIS, N_PAIRS, N_NULL = 40, 150, 99
LENGTH = 60.0  # mm: correlation length of the smooth maps in a 100 mm box


@pytest.fixture(scope="module")
def smooth_maps():
    """Distances between 40 random centroids, and a sampler of maps with exponential spatial
    covariance exp(-d / 60 mm): neighbouring ROIs are alike, as in real parcel maps."""
    rng = np.random.default_rng(0)
    distances = centroid_distances(rng.uniform(0, 100, (N_ROIS, 3)))
    chol = np.linalg.cholesky(np.exp(-distances / LENGTH) + 1e-9 * np.eye(N_ROIS))

    def draw(k: int) -> np.ndarray:
        return (chol @ rng.standard_normal((N_ROIS, k))).T  # (k, R)

    return distances, draw


def null_pvalues(model: str, distances: np.ndarray, draw) -> np.ndarray:
    """p of x against y given z, for 150 triples of independent smooth maps."""
    p = []
    for i in range(N_PAIRS):
        x, y, z = draw(3)
        p.append(partial_correlation(x, y, z[:, None], N_NULL, i, model, distances)[1])
    return np.array(p)


def test_brainsmash_null_is_calibrated_and_permutations_are_not(smooth_maps):
    """With no true association, BrainSMASH's p is uniform within tolerance; ROI permutations,
    blind to the maps' smoothness, give p <= 0.05 far more often than 5%.

    Measured (this seed): brainsmash 7.3% of p <= 0.05, KS p 0.70, quintile counts 27 32 24 35 32;
    permutation 15% and KS p 0.005.
    """
    distances, draw = smooth_maps
    p = null_pvalues("brainsmash", distances, draw)
    assert stats.kstest(p, "uniform").pvalue > 0.05
    counts = np.histogram(p, bins=5, range=(0, 1))[0]
    assert counts.min() >= 0.6 * N_PAIRS / 5 and counts.max() <= 1.4 * N_PAIRS / 5, counts
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09
    permuted = null_pvalues("permutation", distances, draw)
    assert np.mean(permuted <= 0.05) >= 0.12
    assert stats.kstest(permuted, "uniform").pvalue < 0.01


def test_brainsmash_finds_a_planted_association(smooth_maps):
    distances, draw = smooth_maps
    for seed in range(5):
        x, noise, z = draw(3)
        r, p = partial_correlation(x, x + 0.5 * noise, z[:, None], N_NULL, seed, "brainsmash", distances)
        assert r > 0.7 and p <= 0.02, (seed, r, p)


def test_surrogates_are_brainsmash_base_and_seeded():
    """The vectorised smoothing draws exactly what BrainSMASH's own ``Base`` draws."""
    from brainsmash.mapgen import Base

    rng = np.random.default_rng(3)
    n_rois = 23
    distances = centroid_distances(rng.uniform(0, 80, (n_rois, 3)))
    values = rng.standard_normal(n_rois)
    n = BATCH + 17  # two batches, the second partial
    ours = brainsmash_surrogates(values, distances, n, seed=5)
    deltas = np.array([d for d in DELTAS if int(d * n_rois) >= 1])
    theirs = Base(values, distances, deltas=deltas, seed=5)(n, batch_size=BATCH)
    assert ours.shape == (n, n_rois)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    np.testing.assert_array_equal(ours, brainsmash_surrogates(values, distances, n, seed=5))
    assert not np.allclose(ours, brainsmash_surrogates(values, distances, n, seed=6))


def test_rois_without_voxels_keep_their_value_and_too_few_rois_are_refused():
    rng = np.random.default_rng(1)
    centroids = rng.uniform(0, 80, (15, 3))
    centroids[[2, 9]] = np.nan  # no voxel in the atlas image
    values = rng.standard_normal(15)
    maps = null_maps(values, 30, 0, "brainsmash", centroid_distances(centroids))
    assert maps.shape == (30, 15) and np.isfinite(maps).all()
    assert (maps[:, [2, 9]] == values[[2, 9]]).all()
    assert not np.allclose(maps[:, 0], values[0])
    with pytest.raises(ValueError, match=f"at least {MIN_ROIS} ROIs with voxels, got 8"):
        null_maps(values[:9], 5, 0, "brainsmash", centroid_distances(centroids[:9]))
    permuted = null_maps(values, 4, 0, "permutation")
    assert all(sorted(row) == sorted(values) for row in permuted)


def test_centroids_are_centres_of_mass_in_mm():
    labels = np.zeros((9, 11, 13), dtype=np.int16)
    labels[1:4, 2:5, 3:9] = 2
    labels[6:9, 1:3, 1:2] = 5
    labels[5, 9, 12] = 5
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    centroids = roi_centroids(nib.Nifti1Image(labels, affine), np.array([5, 2, 7]))
    expected = [
        affine[:3, :3] @ np.array(c) + affine[:3, 3]
        for c in ndimage.center_of_mass(labels > 0, labels, [5, 2])
    ]
    np.testing.assert_allclose(centroids[:2], expected)
    assert np.isnan(centroids[2]).all()  # label 7 has no voxel


@pytest.mark.parametrize(
    ("p", "n", "shown"),
    [
        (1 / 101, 100, "< 0.01"),
        (0.0421, 100, "0.04"),
        (0.5, 100, "0.50"),
        (1 / 1001, 1000, "< 0.001"),
        (0.0123, 1000, "0.012"),
        (3 / 501, 500, "< 0.01"),
        (0.3, 9, "0.3"),
        (float("nan"), 100, "n/a"),
        (0.2, 0, "n/a"),
    ],
)
def test_p_is_shown_at_the_precision_of_the_null(p, n, shown):
    assert format_p(p, n) == shown
    assert "0.0000" not in format_p(1 / (n + 1), n)


def test_p_decimals():
    assert [p_decimals(n) for n in (1, 10, 99, 100, 999, 1000, 10000)] == [1, 1, 1, 2, 2, 3, 4]


def test_null_options_on_the_command_line(tmp_path, capsys):
    from neurossm_app.cli import main
    from neurossm_app.cli.group import analysis_options
    from neurossm_app.cli.parser import build_parser

    argv = [str(tmp_path), str(tmp_path / "out"), "group", "--analysis"]
    default = analysis_options(build_parser().parse_args(argv))
    assert (default.null_model, default.n_null_maps, default.null_seed) == ("brainsmash", 1000, 0)
    chosen = analysis_options(
        build_parser().parse_args([*argv, "--null-model", "permutation", "--n-null-maps", "100"])
    )
    assert (chosen.null_model, chosen.n_null_maps) == ("permutation", 100)
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--null-model", "spin"])
    assert stop.value.code == 64
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("neurossm-app: error: argument --null-model: invalid choice: 'spin'")
    assert "brainsmash" in err and "permutation" in err
