"""Model arguments of the wrong type or range: a ConfigError naming ``model.args.<name>`` and what
was expected, never a raw TypeError from deep inside a builder (found by an audit of the zoo)."""

import numpy as np
import pytest
from _model_testing import tiny_multimodal_dataset

from jaxrec import models
from jaxrec.errors import ConfigError


@pytest.fixture(scope="module")
def dataset():
    presence = np.ones((8, 2), bool)
    presence[1, 0] = presence[2, 1] = False
    return tiny_multimodal_dataset(presence, [("image", 3), ("text", 1)])


# Models whose ``modalities`` argument picks the item features; the extra arguments make them
# buildable on the tiny dataset.
MODALITY_MODELS = [
    ("sidemf", {}), ("vbpr", {}), ("fusion_mf", {}), ("kernel", {}), ("mmgcn", {}), ("bm3", {}),
    ("mgcn", {"knn_k": 2, "graph_cache": "none"}), ("lgmrec", {"embedding_size": 4, "feat_embed_dim": 4}),
    ("freedom", {"embedding_size": 4, "feat_embed_dim": 4, "knn_k": 2, "graph_cache": "none"}),
]


@pytest.mark.parametrize("name,extra", MODALITY_MODELS, ids=[m for m, _ in MODALITY_MODELS])
@pytest.mark.parametrize("bad", [3, 1.5, True, "image", ["image", 2]], ids=["int", "float", "bool", "str", "mixed"])
def test_modalities_that_are_not_a_list_of_names_are_a_config_error(dataset, name, extra, bad):
    # A number was a raw "TypeError: 'int' object is not iterable"; a bare string was read
    # letter by letter ("no modality 'i' in the dataset").
    with pytest.raises(ConfigError, match=r"model.args.modalities must be a list of modality names \(the dataset "
                                          r"has image, text\); found"):
        models.build(name, dataset, **extra, modalities=bad)


def test_lists_and_tuples_of_names_and_a_single_contrastive_name_still_build(dataset):
    for modalities in (["text"], ("image", "text")):
        models.build("sidemf", dataset, modalities=modalities)
    models.build("contrastive", dataset, modality="text")


@pytest.mark.parametrize("bad", [3, [1], True])
def test_contrastive_modality_of_the_wrong_type_is_a_config_error(dataset, bad):
    with pytest.raises(ConfigError, match="model.args.modality must be a list of modality names"):
        models.build("contrastive", dataset, modality=bad)


@pytest.mark.parametrize("args,message", [
    ({"embedding_size": 0}, r"^model bprmf: model.args.embedding_size must be a positive integer; found 0$"),
    ({"embedding_size": 7.5}, r"^model bprmf: model.args.embedding_size must be a positive integer; found 7.5$"),
])
def test_range_errors_name_the_config_key(dataset, args, message):
    with pytest.raises(ConfigError, match=message):
        models.build("bprmf", dataset, **args)


@pytest.mark.parametrize("name,args,message", [
    ("lightgcn", {"n_layers": -1}, r"model.args.n_layers must be a non-negative integer; found -1"),
    ("bm3", {"dropout": 1.0}, r"model.args.dropout must be a number in \[0, 1\); found 1.0"),
    ("fusion_mf", {"id_dropout": "x"}, r"model.args.id_dropout must be a number in \[0, 1\); found 'x'"),
    ("sidemf", {"feature_scaling": "zscore"}, r"model.args.feature_scaling must be one of"),
    ("mmgcn", {"concat": "yes"}, r"model.args.concat must be true or false; found 'yes'"),
    ("subspace", {"agreement": -1}, r"model.args.agreement must be a number >= 0; found -1"),
])
def test_other_argument_errors_name_the_config_key(dataset, name, args, message):
    with pytest.raises(ConfigError, match=message):
        models.build(name, dataset, **args)


# ---- gan: its own arguments were checked only on the path that used them --------------------

GAN = {"modality": "image", "fill": "mean", "id_embedding_dim": 2}


@pytest.mark.parametrize("args,message", [
    ({"modality": ["image"]}, r"model.args.modality must be a modality name; found \['image'\]"),  # was a TypeError
    ({"hide_fraction": "x"}, r"model.args.hide_fraction must be a number in \[0, 1\]; found 'x'"),  # was a TypeError
    ({"hide_fraction": [0.5]}, r"model.args.hide_fraction must be a number in \[0, 1\]"),  # was a TypeError
    ({"base_args": 3}, r"model.args.base_args must be a mapping of options; found 3"),  # was a TypeError
    ({"base_args": "embedding_size=8"}, r"model.args.base_args must be a mapping"),
    ({"gan": [1]}, r"model.args.gan must be a mapping of options"),  # ignored with fill: mean
    ({"seed": "x"}, r"model.args.seed must be a non-negative integer; found 'x'"),  # ignored with fill: mean
    ({"hide_seed": 1.5}, r"model.args.hide_seed must be a non-negative integer; found 1.5"),
    ({"id_embedding_dim": -3}, r"model.args.id_embedding_dim must be a non-negative integer; found -3"),
    ({"sources": "text"}, r"model.args.sources must be a list of modality names; found 'text'"),
    ({"gan": {"stepz": 10}}, r"model.args.gan has no option 'stepz'; its options are holdout, noise_dim"),
    ({"gan": {"holdout": "x"}}, r"model.args.gan.holdout must be a number in \[0, 1\)"),
    ({"gan": {"hidden_dims": 16}}, r"model.args.gan.hidden_dims must be a list of positive integers; found 16"),
])
def test_gan_arguments_are_checked_whatever_the_fill(dataset, args, message):
    with pytest.raises(ConfigError, match=message):
        models.build("gan", dataset, **{**GAN, **args})


def test_a_gan_option_typo_is_not_reported_as_an_unknown_model_argument(dataset):
    # The typo reached train_gan(**options), whose "unexpected keyword argument" TypeError the
    # registry turned into "model 'gan' has no argument 'stepz'" -- a model.args key the user never wrote.
    with pytest.raises(ConfigError) as caught:
        models.build("gan", dataset, **{**GAN, "fill": "gan", "gan": {"stepz": 10}})
    assert "model.args.gan has no option 'stepz'" in str(caught.value)
    assert "has no argument" not in str(caught.value)


# ---- kernel: its kernels list -----------------------------------------------------------------

@pytest.mark.parametrize("kernels,message", [
    ([1, 2], r"a kernel \(model.args.kernels\) is a kind name or a mapping"),  # was "TypeError: 'int' object ..."
    ({"kind": "polynomial", "coef0": "x"}, r"^model kernel: model.args.kernels: "),  # was a TypeError from '<'
    ({"kind": "rbf", "gamma": "x"}, r"^model kernel: model.args.kernels: "),  # was a TypeError from '>'
    ("bogus", r"^model kernel: model.args.kernels: unknown kernel kind 'bogus'"),  # did not name the model or key
])
def test_kernel_specs_of_the_wrong_type_are_a_config_error(dataset, kernels, message):
    with pytest.raises(ConfigError, match=message):
        models.build("kernel", dataset, kernels=kernels)


# ---- cke: margin, kg_normalize and tag_kg's options -------------------------------------------

@pytest.fixture(scope="module")
def tag_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("tags") / "tags.tsv"
    path.write_text("artistID\ttext\n" + "".join(f"{i}\trock,t{i % 3}\n" for i in range(8)))
    return str(path)


def test_cke_builds_with_the_tag_table(dataset, tag_table):
    built = models.build("cke", dataset, embedding_size=4, kg_embedding_size=3, tag_kg={"path": tag_table,
                                                                                        "min_count": 1})
    assert len(built.ctx["kg_triples"]) == 16  # two tags per item


@pytest.mark.parametrize("args,message", [
    ({"margin": "x"}, r"model.args.margin must be a number in \[0, inf\]; found 'x'"),  # was a ValueError
    ({"margin": float("nan")}, r"model.args.margin must be a number"),  # was accepted: a NaN KG loss
    ({"margin": -1.0}, r"model.args.margin must be a number"),
    ({"kg_normalize": "no"}, r"model.args.kg_normalize must be true or false; found 'no'"),  # was accepted (truthy)
    ({"tag_kg": "TAGS"}, r"model.args.tag_kg has no option 'min_cnt'; its options are path, min_count"),
])
def test_cke_arguments_are_checked(dataset, tag_table, args, message):
    tag_kg = {"path": tag_table, "min_count": 1}
    if args.get("tag_kg") == "TAGS":  # a typo in the table's options was "model 'cke' has no argument 'min_cnt'"
        args = {"tag_kg": {"path": tag_table, "min_cnt": 1}}
    with pytest.raises(ConfigError, match=message):
        models.build("cke", dataset, embedding_size=4, kg_embedding_size=3, kg_loss="margin",
                     **{"tag_kg": tag_kg, **args})


@pytest.mark.parametrize("name,extra", [("freedom", {"embedding_size": 4, "feat_embed_dim": 4}), ("mgcn", {}),
                                        ("lattice", {"embedding_size": 4, "feat_embed_dim": 4})],
                         ids=["freedom", "mgcn", "lattice"])
def test_more_knn_neighbours_than_items_is_refused_alike_by_every_knn_model(dataset, name, extra):
    """8 items: knn_k 9 would link every item to every item (freedom and mgcn built it silently
    while lattice refused); 8 builds."""
    with pytest.raises(ConfigError, match=rf"^model {name}: model.args.knn_k must be at most the number of items "
                                          r"\(8\); found 9$"):
        models.build(name, dataset, knn_k=9, graph_cache="none", **extra)
    models.build(name, dataset, knn_k=8, graph_cache="none", **extra)
