"""Synthetic multimodal recommendation data with planted structure (the embedded default data).

Users and items get latent factors. Each item modality is a noisy *nonlinear* view of a random
subspace of the item factors (a random two-layer tanh network), so no single modality sees
everything, fusing them recovers more, and cold-start items are predictable from features.
Interactions follow the users' affinity for the items tilted by a Zipf popularity prior, which
gives the long-tailed item popularity of real data. Everything is drawn from numpy generators
seeded by ``(seed, stream, chunk)``, so the output is a pure function of the arguments, and is
produced in bounded chunks (never a dense users x items matrix for large sizes).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from jaxrec.data._dataset import Interactions, Modality, MultimodalDataset
from jaxrec.data._synthetic_interactions import (
    check_split_ratios,
    resolve_sampler,
    sample_interactions,
    split_by_ratio,
    user_activity,
)
from jaxrec.data._synthetic_interactions import stream_rng as _rng
from jaxrec.errors import ConfigError

DEFAULT_DIMS = {"text": 64, "image": 96, "audio": 32}

# Independent random streams: changing how one part is drawn leaves the others unchanged.
_STREAM_FACTORS, _STREAM_POPULARITY, _STREAM_ACTIVITY, _STREAM_SPLIT = 1, 2, 3, 4
_STREAM_MODALITY_BASE = 1000  # + CRC32 of the name: a modality's features do not depend on the others
_ITEM_CHUNK_VALUES = 1 << 22  # floats per chunk of item features (16 MiB of float32)
_SEQUENCE_DRIFT = 0.5


class SyntheticTruth(NamedTuple):
    """The planted quantities behind a synthetic dataset (for tests and notebooks).

    Attributes:
      user_factors: (n_users, latent_dim) float32.
      item_factors: (n_items, latent_dim) float32.
      item_log_popularity: (n_items,) float32 log of the normalised Zipf prior.
      affinity_scale: scalar such that the sampling logits are
        ``affinity_scale * user_factors @ item_factors.T + item_log_popularity``.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    item_log_popularity: np.ndarray
    affinity_scale: float


def make_synthetic(
    n_users: int,
    n_items: int,
    *,
    n_interactions: int | None = None,
    density: float | None = None,
    dims: Mapping[str, int] | None = None,
    latent_dim: int = 16,
    seed: int = 0,
    missing_rate: float | Mapping[str, float] = 0.0,
    sequence_modality: tuple[str, int, int] | None = None,
    popularity_skew: float = 1.0,
    temperature: float = 0.5,
    noise: float = 0.3,
    view_fraction: float = 0.75,
    min_user_interactions: int = 5,
    split: str = "ratio",
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    sampler: str = "auto",
    name: str = "synthetic",
    return_truth: bool = False,
) -> MultimodalDataset | tuple[MultimodalDataset, SyntheticTruth]:
    r"""Generates a synthetic multimodal dataset with planted user and item factors.

    Factors are standard normal, :math:`p_u, q_i \sim \mathcal{N}(0, I_k)`. Item popularity is
    a Zipf prior over a random ranking, :math:`\pi_i \propto \mathrm{rank}(i)^{-s}`. User
    :math:`u` gets :math:`n_u` distinct items (log-normal activity, at least
    ``min_user_interactions``, summing to ``n_interactions``), drawn without replacement from

    .. math::
        P(i \mid u) \propto \pi_i \exp\!\big(p_u^\top q_i / (\sqrt{k}\,\tau)\big)

    by Gumbel top-k. Modality :math:`m` of item :math:`i` is

    .. math::
        x_i^m = c_m \tanh\!\big(q_i^\top P_m A_m + b_m\big) B_m + \sigma \varepsilon,
        \qquad \varepsilon \sim \mathcal{N}(0, I)

    with a random orthonormal :math:`P_m \in \mathbb{R}^{k \times r}` (:math:`r` =
    ``view_fraction`` of :math:`k`), random :math:`A_m, b_m, B_m` and :math:`c_m` making the
    noiseless signal unit-variance. A sequence modality ``(name, T, d)`` has per-item lengths
    uniform in :math:`[\lceil T/2 \rceil, T]`; frame :math:`t` views :math:`q_i^\top P_m + t/(T-1)\,
    \delta_i` (a per-item drift :math:`\delta_i`), padded frames are zero.

    Args:
      n_users, n_items: counts (>= 1).
      n_interactions: total number of distinct (user, item) pairs; or give ``density``.
      density: ``n_interactions / (n_users * n_items)``.
      dims: modality name -> feature dimension (default text 64, image 96, audio 32).
      latent_dim: k, the size of the planted factors.
      seed: the integer seed; the same arguments give bitwise the same dataset.
      missing_rate: share of items lacking each modality (a number, or name -> number); those
        rows are zero and masked out (sequence items also get length 0).
      sequence_modality: optional ``(name, T, d)`` for a video-like modality of T frames.
      popularity_skew: Zipf exponent s (0 = no popularity bias).
      temperature: tau; lower makes choices follow affinity more closely.
      noise: sigma, the standard deviation of feature noise (the signal has unit variance).
      view_fraction: share of the latent dimensions each modality sees.
      min_user_interactions: the least interactions per user (lowered to ``n_items`` or to
        ``n_interactions // n_users`` when those are smaller).
      split: ``"ratio"``: each user's interactions are split at random by ``split_ratios``.
      split_ratios: (train, valid, test) shares, summing to 1.
      sampler: ``"exact"`` (dense Gumbel top-k over all items, cost n_users x n_items),
        ``"candidates"`` (Gumbel top-k over popularity-drawn candidates, for large sizes;
        exact as the oversampling grows) or ``"auto"`` (exact when the dense work is small).
      name: the dataset's name.
      return_truth: also return the planted :class:`SyntheticTruth`.

    Returns:
      A :class:`MultimodalDataset` (implicit feedback: no ratings or timestamps); with
      ``return_truth``, the tuple ``(dataset, truth)``.

    Raises:
      ConfigError: on impossible or inconsistent arguments.

    Example:
      >>> from jaxrec.data import make_synthetic
      >>> data = make_synthetic(50, 40, n_interactions=600, seed=1)
      >>> data.n_users, data.n_items, len(data.interactions), data.modality_names
      (50, 40, 600, ('text', 'image', 'audio'))
    """
    n_users, n_items = _positive_int(n_users, "n_users"), _positive_int(n_items, "n_items")
    latent_dim = _positive_int(latent_dim, "latent_dim")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ConfigError(f"make_synthetic: seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    n_interactions = _resolve_interaction_count(n_users, n_items, n_interactions, density)
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    for mod_name, dim in dims.items():
        _positive_int(dim, f"dims[{mod_name!r}]")
    if sequence_modality is not None:
        if not (isinstance(sequence_modality, (tuple, list)) and len(sequence_modality) == 3
                and isinstance(sequence_modality[0], str)):
            raise ConfigError(f"make_synthetic: sequence_modality must be (name, T, d), got {sequence_modality!r}")
        seq_name, steps, seq_dim = sequence_modality
        _positive_int(steps, "sequence_modality T")
        _positive_int(seq_dim, "sequence_modality d")
        if seq_name in dims:
            raise ConfigError(f"sequence modality name {seq_name!r} clashes with a flat modality in dims")
    missing = _missing_rates(missing_rate, list(dims) + ([sequence_modality[0]] if sequence_modality else []))
    for label, value, low, high in (("temperature", temperature, 0.0, math.inf), ("view_fraction", view_fraction, 0.0, 1.0)):
        if not (math.isfinite(value) and low < value <= high):
            raise ConfigError(f"make_synthetic: {label} must be in ({low}, {high}], got {value}")
    for label, value in (("noise", noise), ("popularity_skew", popularity_skew)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"make_synthetic: {label} must be finite and >= 0, got {value}")
    check_split_ratios(split_ratios)
    if split != "ratio":
        raise ConfigError(f"make_synthetic: unknown split {split!r}; expected 'ratio'")
    if sampler not in ("auto", "exact", "candidates"):
        raise ConfigError(f"make_synthetic: unknown sampler {sampler!r}; expected 'auto', 'exact' or 'candidates'")

    factor_rng = _rng(seed, _STREAM_FACTORS)
    user_factors = factor_rng.standard_normal((n_users, latent_dim), dtype=np.float32)
    item_factors = factor_rng.standard_normal((n_items, latent_dim), dtype=np.float32)
    log_popularity = _zipf_log_prior(n_items, popularity_skew, _rng(seed, _STREAM_POPULARITY))
    affinity_scale = 1.0 / (math.sqrt(latent_dim) * temperature)

    counts = user_activity(n_users, n_items, n_interactions, min_user_interactions, _rng(seed, _STREAM_ACTIVITY))
    users, items = sample_interactions(user_factors, item_factors, log_popularity, counts,
                                       affinity_scale=affinity_scale, seed=seed, sampler=sampler)
    labels = split_by_ratio(users, counts, split_ratios, _rng(seed, _STREAM_SPLIT))

    modalities = {}
    for mod_name, dim in dims.items():
        modalities[mod_name] = _flat_modality(mod_name, item_factors, dim, seed=seed, stream=_modality_stream(mod_name),
                                              noise=noise, view_fraction=view_fraction, missing_rate=missing[mod_name])
    if sequence_modality is not None:
        seq_name, steps, seq_dim = sequence_modality
        modalities[seq_name] = _sequence_modality(seq_name, item_factors, int(steps), int(seq_dim), seed=seed,
                                                  stream=_modality_stream(seq_name), noise=noise,
                                                  view_fraction=view_fraction, missing_rate=missing[seq_name])

    generator = {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions, "latent_dim": latent_dim,
                 "seed": int(seed), "popularity_skew": float(popularity_skew), "temperature": float(temperature),
                 "noise": float(noise), "view_fraction": float(view_fraction), "missing_rate": missing,
                 "min_user_interactions": int(min_user_interactions), "sampler": sampler}
    dataset = MultimodalDataset(
        name=name, n_users=n_users, n_items=n_items,
        interactions=Interactions(users, items, labels),
        modalities=modalities,
        metadata={"source": "synthetic", "format": "synthetic", "generator": generator,
                  "interaction_sampler": resolve_sampler(sampler, n_users, n_items),
                  "split_method": "ratio {}:{}:{} per user, random".format(*split_ratios)},
    )
    if return_truth:
        return dataset, SyntheticTruth(user_factors, item_factors, log_popularity, affinity_scale)
    return dataset


@functools.lru_cache(maxsize=1)
def default_dataset() -> MultimodalDataset:
    """The embedded default data (``jaxrec demo``): 2,000 users, 1,500 items, 60,000 interactions.

    Three modalities (text 64, image 96, audio 32), 10% of items missing audio, a 8:1:1 split
    per user. Small enough that a model trains on it in seconds on two CPU cores; the dataset
    is immutable, so the cached object is shared.
    """
    return make_synthetic(2000, 1500, n_interactions=60_000, seed=0, missing_rate={"audio": 0.1},
                          name="synthetic_default")


# ---- argument checks --------------------------------------------------------------------


def _positive_int(value, label: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"make_synthetic: {label} must be an integer >= 1, got {value!r}")
    return int(value)


def _resolve_interaction_count(n_users: int, n_items: int, n_interactions, density) -> int:
    if (n_interactions is None) == (density is None):
        raise ConfigError("make_synthetic: give exactly one of n_interactions and density")
    if density is not None:
        if not 0 < density <= 1:
            raise ConfigError(f"make_synthetic: density must be in (0, 1], got {density}")
        n_interactions = max(1, round(density * n_users * n_items))
    if isinstance(n_interactions, bool) or int(n_interactions) != n_interactions or n_interactions < 1:
        raise ConfigError(f"make_synthetic: n_interactions must be a positive integer, got {n_interactions!r}")
    if n_interactions > n_users * n_items:
        raise ConfigError(f"make_synthetic: {n_interactions} interactions cannot fit in "
                          f"{n_users} x {n_items} distinct (user, item) pairs")
    return int(n_interactions)


def _missing_rates(missing_rate, names: list[str]) -> dict[str, float]:
    if isinstance(missing_rate, Mapping):
        unknown = sorted(set(missing_rate) - set(names))
        if unknown:
            raise ConfigError(f"make_synthetic: missing_rate names unknown modalities {unknown}; known: {names}")
        rates = {name: float(missing_rate.get(name, 0.0)) for name in names}
    else:
        rates = {name: float(missing_rate) for name in names}
    for name, rate in rates.items():
        if not 0 <= rate < 1:
            raise ConfigError(f"make_synthetic: missing_rate for {name!r} must be in [0, 1), got {rate}")
    return rates


# ---- planted structure ------------------------------------------------------------------


def _modality_stream(name: str) -> int:
    return _STREAM_MODALITY_BASE + zlib.crc32(name.encode("utf-8"))


def _zipf_log_prior(n_items: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    ranks = rng.permutation(n_items) + 1.0
    log_prior = -skew * np.log(ranks)
    log_prior -= np.logaddexp.reduce(log_prior)
    return log_prior.astype(np.float32)


class _TanhView(NamedTuple):
    """A random two-layer tanh network reading a random subspace of the item factors."""

    projection: np.ndarray  # (k, r) orthonormal columns
    hidden_weights: np.ndarray  # (r, h)
    hidden_bias: np.ndarray  # (h,)
    output_weights: np.ndarray  # (h, d), scaled so the noiseless output has unit variance

    def __call__(self, view_coords: np.ndarray) -> np.ndarray:
        return np.tanh(view_coords @ self.hidden_weights + self.hidden_bias) @ self.output_weights


def _random_view(rng: np.random.Generator, latent_dim: int, view_fraction: float, out_dim: int) -> _TanhView:
    rank = max(1, round(view_fraction * latent_dim))
    hidden = max(32, 2 * rank)
    projection, _ = np.linalg.qr(rng.standard_normal((latent_dim, rank)))
    hidden_weights = rng.standard_normal((rank, hidden)) / math.sqrt(rank)
    hidden_bias = 0.3 * rng.standard_normal(hidden)
    output_weights = rng.standard_normal((hidden, out_dim)) / math.sqrt(hidden)
    # Each pre-activation is N(b_j, |w_j|^2) for standard normal view coordinates; Gauss-Hermite
    # quadrature gives E[tanh^2] per unit, hence the output variance, without sampling.
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)
    spread = np.linalg.norm(hidden_weights, axis=0)
    second_moment = (np.tanh(hidden_bias[:, None] + spread[:, None] * nodes) ** 2) @ weights / weights.sum()
    output_weights = output_weights / math.sqrt(second_moment.mean())
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return _TanhView(f32(projection), f32(hidden_weights), f32(hidden_bias), f32(output_weights))


def _missing_mask(n_items: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.ones(n_items, dtype=bool)
    mask[rng.permutation(n_items)[: round(rate * n_items)]] = False
    return mask


def _provenance(kind: str, seed: int, noise: float, view_fraction: float) -> dict:
    return {"encoder": "synthetic", "source": "jaxrec.data.make_synthetic", "version": "1",
            "view": kind, "seed": int(seed), "noise": float(noise), "view_fraction": float(view_fraction)}


def _flat_modality(name, item_factors, dim, *, seed, stream, noise, view_fraction, missing_rate) -> Modality:
    rng = _rng(seed, stream)
    view = _random_view(rng, item_factors.shape[1], view_fraction, dim)
    mask = _missing_mask(len(item_factors), missing_rate, rng)
    features = np.empty((len(item_factors), dim), dtype=np.float32)
    chunk = max(1, _ITEM_CHUNK_VALUES // max(dim, view.hidden_bias.size))
    for index, start in enumerate(range(0, len(item_factors), chunk)):
        rows = slice(start, start + chunk)
        chunk_rng = _rng(seed, stream, 1 + index)
        signal = view(item_factors[rows] @ view.projection)
        features[rows] = signal + noise * chunk_rng.standard_normal(signal.shape, dtype=np.float32)
    features[~mask] = 0.0
    return Modality(name, features, mask, provenance=_provenance("tanh MLP of item factors", seed, noise, view_fraction))


def _sequence_modality(name, item_factors, steps, dim, *, seed, stream, noise, view_fraction, missing_rate) -> Modality:
    rng = _rng(seed, stream)
    view = _random_view(rng, item_factors.shape[1], view_fraction, dim)
    mask = _missing_mask(len(item_factors), missing_rate, rng)
    lengths = rng.integers((steps + 1) // 2, steps + 1, size=len(item_factors)).astype(np.int32)
    lengths[~mask] = 0
    rank = view.projection.shape[1]
    time = (np.arange(steps, dtype=np.float32) / max(steps - 1, 1))[None, :, None]
    features = np.zeros((len(item_factors), steps, dim), dtype=np.float32)
    chunk = max(1, _ITEM_CHUNK_VALUES // (steps * max(dim, view.hidden_bias.size)))
    for index, start in enumerate(range(0, len(item_factors), chunk)):
        rows = slice(start, start + chunk)
        chunk_rng = _rng(seed, stream, 1 + index)
        base = (item_factors[rows] @ view.projection)[:, None, :]
        drift = _SEQUENCE_DRIFT * chunk_rng.standard_normal((base.shape[0], 1, rank), dtype=np.float32)
        frames = view(base + time * drift)
        frames += noise * chunk_rng.standard_normal(frames.shape, dtype=np.float32)
        frames[np.arange(steps)[None, :] >= lengths[rows, None]] = 0.0
        features[rows] = frames
    return Modality(name, features, mask, lengths,
                    provenance=_provenance("tanh MLP of drifting item factors, per frame", seed, noise, view_fraction))
