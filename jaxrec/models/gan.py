r"""Filling missing modality rows with a conditional GAN, before recommender training.

:func:`fill_missing_with_gan` trains the GAN of :mod:`jaxrec.models._gan_training` to produce
an item's row of one modality from everything else known about the item -- its other
modalities (standardized, zero where absent, with a presence bit each) and its collaborative
ID embedding (:func:`collaborative_item_embeddings`, from TRAIN interactions only) -- on the
items that have the modality, and writes the generated row (the mean over noise draws) into
every missing row. The generator's objective (see that module) is

.. math::
  \mathcal{L}_G = \lambda_\text{adv}\,\mathbb{E}\,\operatorname{softplus}(-D(c, G(c, z)))
      + \lambda_\text{rec}\,\mathbb{E}\,\lVert G(c, z) - y\rVert^2 / d ,

against a discriminator :math:`D(c, y)` trained with
:math:`\mathbb{E}\operatorname{softplus}(-D(c, y)) + \mathbb{E}\operatorname{softplus}(D(c, G(c, z)))`.
A share of the present rows is held out (artificially masked) to select the training step
and to estimate the reconstruction error. Features are standardized with statistics of ALL
items that have the modality: item features are item attributes, known whether or not an
item has interactions, so no interaction label leaks.

The model registered as ``"gan"`` makes this a config: it optionally hides a share of one
modality's rows first (:func:`hide_modality_rows`, to measure what filling recovers), fills
them (``fill: gan``, ``mean`` or ``none``) and builds the ``base`` recommender (VBPR by
default) on the filled data, so ``jaxrec train`` trains the recommender on GAN-filled rows.
The filled rows are marked present (``mark_present``), since recommenders such as VBPR and
SideMF zero the rows of a modality's mask that are False; the provenance lists them.

References:
  Goodfellow et al., Generative Adversarial Nets, NeurIPS 2014; Yoon et al., `GAIN: Missing
  Data Imputation using Generative Adversarial Nets <https://arxiv.org/abs/1806.02920>`_,
  ICML 2018 (hint-free: our masks are per row, not per entry).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxrec.data import TRAIN, Modality, MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec.models import _registry
from jaxrec.models._common import check_nonnegative_int, check_number
from jaxrec.models._gan_training import generate, train_gan
from jaxrec.models._registry import Built, register

FILLS = ("gan", "mean", "none")


def hide_modality_rows(dataset: MultimodalDataset, modality: str, fraction: float, *,
                       seed: int = 0) -> tuple[MultimodalDataset, np.ndarray]:
    """Hides a random share of the items that have ``modality``: zero rows, mask False.

    Args:
      dataset: the dataset.
      modality: a 2-D modality's name.
      fraction: share of its present rows to hide, in [0, 1].
      seed: seed of the ``np.random.default_rng`` choosing them.

    Returns:
      ``(dataset, hidden item ids (sorted))``; the provenance records ``hidden_fraction``,
      ``hidden_seed`` and ``hidden_items``.
    """
    mod = _flat_modality(dataset, modality)
    if not 0 <= fraction <= 1:
        raise ConfigError(f"hide_fraction must be in [0, 1]; found {fraction!r}")
    present = np.flatnonzero(mod.mask)
    hidden = np.sort(np.random.default_rng(seed).choice(present, int(round(fraction * present.size)), replace=False))
    mask = mod.mask.copy()
    mask[hidden] = False
    features = mod.features.copy()
    features[hidden] = 0.0
    provenance = dict(mod.provenance, hidden_fraction=float(fraction), hidden_seed=int(seed),
                      hidden_items=hidden.tolist())
    return dataset.with_modality(Modality(mod.name, features, mask, None, provenance)), hidden


def collaborative_item_embeddings(dataset: MultimodalDataset, dim: int) -> np.ndarray:
    r"""Items' collaborative ID embeddings from the TRAIN interactions: the top ``dim`` left
    singular vectors of the degree-normalized item-user matrix, scaled by their singular values,

    .. math::
      \tilde R = D_I^{-1/2} R D_U^{-1/2} = U \Sigma V^\top, \qquad E = U_{:, :k}\,\Sigma_{:k},

    (columns' signs fixed so each column's largest entry is positive; items without a train
    interaction get zero rows).

    Returns:
      (n_items, dim) float32.
    """
    if isinstance(dim, bool) or int(dim) != dim or not 1 <= dim < min(dataset.n_items, dataset.n_users):
        raise ConfigError(f"id_embedding_dim must be an integer in [1, min(n_items, n_users)); found {dim!r}")
    inter = dataset.interactions
    train = inter.split == TRAIN
    matrix = np.zeros((dataset.n_items, dataset.n_users))
    matrix[inter.items[train], inter.users[train]] = 1.0
    item_degree, user_degree = matrix.sum(1), matrix.sum(0)
    matrix *= 1 / np.sqrt(np.maximum(item_degree, 1))[:, None]
    matrix *= 1 / np.sqrt(np.maximum(user_degree, 1))[None, :]
    left, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    embedding = left[:, :dim] * singular[:dim]
    signs = np.sign(embedding[np.argmax(np.abs(embedding), axis=0), np.arange(dim)])
    return (embedding * np.where(signs == 0, 1, signs)).astype(np.float32)


def _flat_modality(dataset, name) -> Modality:
    if name not in dataset.modalities:
        raise ConfigError(f"no modality {name!r} in the dataset (it has {', '.join(dataset.modalities) or 'none'})")
    mod = dataset.modalities[name]
    if mod.is_sequence:
        raise ConfigError(f"modality {name!r} is a sequence {mod.features.shape}; pool it to one row per item first")
    return mod


def _standardize(features, mask):
    rows = features[mask].astype(np.float64)
    mean, std = rows.mean(0), rows.std(0)
    std = np.where(std < 1e-8, 1.0, std)
    return np.where(mask[:, None], (features - mean) / std, 0.0).astype(np.float32), mean, std


def gan_conditions(dataset: MultimodalDataset, sources: Sequence[str], id_embedding_dim: int) -> np.ndarray:
    """(n_items, c) GAN conditions: each source modality standardized over its present rows
    (zero where absent) and its presence bit, then the standardized collaborative embedding."""
    blocks = []
    for name in sources:
        mod = _flat_modality(dataset, name)
        blocks += [_standardize(mod.features, mod.mask)[0], mod.mask[:, None].astype(np.float32)]
    if id_embedding_dim:
        embedding = collaborative_item_embeddings(dataset, id_embedding_dim)
        has = np.abs(embedding).sum(1) > 0
        blocks += [_standardize(embedding, has)[0] if has.any() else embedding, has[:, None].astype(np.float32)]
    if not blocks:
        raise ConfigError("the GAN needs at least one source modality or id_embedding_dim > 0")
    return np.concatenate(blocks, axis=1)


def fill_missing_with_gan(dataset: MultimodalDataset, modality: str, key, *, sources: Sequence[str] | None = None,
                          id_embedding_dim: int = 32, mark_present: bool = True, **gan_options):
    """A dataset whose missing ``modality`` rows are generated by a conditional GAN.

    Args:
      dataset: the dataset; ``modality`` must have present and missing rows.
      modality: the 2-D modality to fill.
      key: a PRNG key (``jax.random.PRNGKey(seed)``); the same key gives the same rows.
      sources: the modalities to generate from (default: every other 2-D modality).
      id_embedding_dim: width of the collaborative ID embedding in the condition (0: none).
      mark_present: set the filled rows' mask to True (so models use them); else the mask
        is unchanged and only the features are filled.
      **gan_options: options of :func:`jaxrec.models._gan_training.train_gan` (``steps``,
        ``adversarial_weight``, ``holdout``, ``hidden_dims`` ...).

    Returns:
      ``(dataset, result)``: the filled dataset, whose modality provenance records a
      ``gan_fill`` preprocessing step (options, sources, selected step, held-out error,
      ``filled_items``), and the :class:`~jaxrec.models._gan_training.GANResult`.
    """
    mod = _flat_modality(dataset, modality)
    if sources is None:
        sources = [n for n, m in dataset.modalities.items() if n != modality and not m.is_sequence]
    if modality in sources:
        raise ConfigError(f"the GAN cannot generate {modality!r} from itself; sources were {list(sources)}")
    missing = np.flatnonzero(~mod.mask)
    if missing.size == 0:
        raise DataError("nothing to fill: every item has the modality", field=f"modalities[{modality!r}]",
                        found="no missing rows", expected="some rows with mask False")
    condition = gan_conditions(dataset, sources, id_embedding_dim)
    target, mean, std = _standardize(mod.features, mod.mask)
    train_key, fill_key = jax.random.split(key)
    result = train_gan(condition, target, mod.mask, train_key, **gan_options)
    generated = np.asarray(generate(result.generator, result.params, condition[missing], fill_key,
                                    noise_dim=result.noise_dim, n_samples=gan_options.get("n_samples", 16)))
    features = mod.features.copy()
    features[missing] = (generated * std + mean).astype(np.float32)
    mask = mod.mask.copy()
    if mark_present:
        mask[missing] = True
    last = result.history[-1]
    step = {"name": "gan_fill", "params": {"sources": list(sources), "id_embedding_dim": int(id_embedding_dim),
                                           **{k: (list(v) if isinstance(v, tuple) else v) for k, v in gan_options.items()}},
            "best_step": result.best_step, "filled_items": missing.tolist(), "mark_present": bool(mark_present),
            "holdout_rows": int(result.holdout_rows.size),
            "holdout_mse_standardized": min((h["holdout_mse"] for h in result.history if "holdout_mse" in h),
                                            default=None),
            "final_d_loss": last["d_loss"], "final_g_adversarial": last["g_adversarial"]}
    provenance = dict(mod.provenance)
    provenance["preprocessing"] = [*provenance.get("preprocessing", []), step]
    return dataset.with_modality(Modality(mod.name, features, mask, None, provenance)), result


def fill_missing_with_mean(dataset: MultimodalDataset, modality: str, *, mark_present: bool = True):
    """The baseline: missing rows set to the mean of the present rows (all items that have the
    modality, as the GAN's statistics), recorded as a ``mean_fill`` preprocessing step."""
    mod = _flat_modality(dataset, modality)
    missing = np.flatnonzero(~mod.mask)
    if missing.size == 0 or missing.size == mod.mask.size:
        raise DataError("mean fill needs some present and some missing rows", field=f"modalities[{modality!r}]",
                        found=f"{missing.size} of {mod.mask.size} missing", expected="both kinds")
    features = mod.features.copy()
    features[missing] = mod.features[mod.mask].astype(np.float64).mean(0).astype(np.float32)
    mask = mod.mask.copy()
    if mark_present:
        mask[missing] = True
    provenance = dict(mod.provenance)
    provenance["preprocessing"] = [*provenance.get("preprocessing", []), {
        "name": "mean_fill", "fitted_on": int(mod.mask.sum()), "filled_items": missing.tolist(),
        "mark_present": bool(mark_present)}]
    return dataset.with_modality(Modality(mod.name, features, mask, None, provenance))


def _check_gan_args(*, modality, base_args, hide_fraction, hide_seed, seed, sources, id_embedding_dim, gan) -> None:
    """``ConfigError`` naming ``model.args.<name>`` for a mistyped or out-of-range argument of
    :func:`build` (checked whatever ``fill`` is, so that a typo never passes unnoticed)."""
    import inspect

    model = "gan"
    if not isinstance(modality, str):
        raise ConfigError(f"model {model}: model.args.modality must be a modality name; found {modality!r}")
    for name, value in (("base_args", base_args), ("gan", gan)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"model {model}: model.args.{name} must be a mapping of options; found {value!r}")
    check_number(hide_fraction, "hide_fraction", model, 0.0, 1.0)
    for name, value in (("hide_seed", hide_seed), ("seed", seed), ("id_embedding_dim", id_embedding_dim)):
        check_nonnegative_int(value, name, model)
    if sources is not None and (isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence)
                                or not all(isinstance(s, str) for s in sources)):
        raise ConfigError(f"model {model}: model.args.sources must be a list of modality names; found {sources!r}")
    known = [p for p in inspect.signature(train_gan).parameters][4:]  # after condition, target, present, key
    unknown = sorted(set(gan or {}) - set(known))
    if unknown:
        raise ConfigError(f"model {model}: model.args.gan has no option {unknown[0]!r}; its options are "
                          f"{', '.join(known)}")
    if gan and "holdout" in gan:
        check_number(gan["holdout"], "gan.holdout", model, 0.0, 1.0, high_open=True)
    if gan and "hidden_dims" in gan:
        dims = gan["hidden_dims"]
        if (isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
            raise ConfigError(f"model {model}: model.args.gan.hidden_dims must be a list of positive integers; "
                              f"found {dims!r}")


@register("gan")
def build(dataset, *, modality: str, base: str = "vbpr", base_args: dict | None = None, fill: str = "gan",
          hide_fraction: float = 0.0, hide_seed: int = 0, seed: int = 0, sources: list[str] | None = None,
          id_embedding_dim: int = 32, gan: dict | None = None) -> Built:
    """A ``base`` recommender trained on data whose missing ``modality`` rows are filled.

    Args:
      dataset: the dataset.
      modality: the modality whose missing rows are filled.
      base: the registered recommender to build on the filled data (default VBPR).
      base_args: its builder's arguments.
      fill: ``"gan"`` (:func:`fill_missing_with_gan`), ``"mean"``
        (:func:`fill_missing_with_mean`) or ``"none"`` (rows stay missing).
      hide_fraction: share of the modality's present rows hidden first
        (:func:`hide_modality_rows`; 0 fills only the rows missing in the data).
      hide_seed: seed choosing the hidden rows.
      seed: seed of the GAN's PRNG key.
      sources, id_embedding_dim: the GAN's conditions (:func:`fill_missing_with_gan`).
      gan: options of the GAN training (``steps``, ``adversarial_weight`` ...).

    Returns:
      The base model's :class:`~jaxrec.models.Built` (its loss terms and weights).
    """
    if fill not in FILLS:
        raise ConfigError(f"model gan: model.args.fill must be one of {', '.join(FILLS)}; found {fill!r}")
    if base == "gan":
        raise ConfigError("model gan: base must be a recommender, not 'gan' itself")
    _check_gan_args(modality=modality, base_args=base_args, hide_fraction=hide_fraction, hide_seed=hide_seed,
                    seed=seed, sources=sources, id_embedding_dim=id_embedding_dim, gan=gan)
    if hide_fraction:
        dataset, _ = hide_modality_rows(dataset, modality, hide_fraction, seed=hide_seed)
    if fill == "gan":
        dataset, _ = fill_missing_with_gan(dataset, modality, jax.random.PRNGKey(seed), sources=sources,
                                           id_embedding_dim=id_embedding_dim, **(gan or {}))
    elif fill == "mean":
        dataset = fill_missing_with_mean(dataset, modality)
    return _registry.build(base, dataset, **(base_args or {}))
