"""jaxrec.data: the dataset type, readers and writers, splits, sampling, graphs, synthetic data."""

from jaxrec.data._dataset import SPLIT_NAMES as SPLIT_NAMES
from jaxrec.data._dataset import TEST as TEST
from jaxrec.data._dataset import TRAIN as TRAIN
from jaxrec.data._dataset import VALID as VALID
from jaxrec.data._dataset import Interactions as Interactions
from jaxrec.data._dataset import Modality as Modality
from jaxrec.data._dataset import MultimodalDataset as MultimodalDataset
from jaxrec.data._splits import ColdStartItems as ColdStartItems
from jaxrec.data._splits import cold_items as cold_items
from jaxrec.data._splits import cold_start_item_split as cold_start_item_split
from jaxrec.data._splits import keep_given_split as keep_given_split
from jaxrec.data._splits import leave_one_out_split as leave_one_out_split
from jaxrec.data._splits import ratio_split as ratio_split
from jaxrec.data._splits import split_dataset as split_dataset
from jaxrec.data._filters import compact_ids as compact_ids
from jaxrec.data._filters import filter_interactions as filter_interactions
from jaxrec.data._filters import k_core as k_core
from jaxrec.data._negatives import PositiveSets as PositiveSets
from jaxrec.data._negatives import sample_negatives as sample_negatives
from jaxrec.data._negatives import NEGATIVE_ITEMS as NEGATIVE_ITEMS
from jaxrec.data._negatives import trained_item_pool as trained_item_pool
from jaxrec.data._feature_transform import FEATURE_TRANSFORMS as FEATURE_TRANSFORMS
from jaxrec.data._feature_transform import transform_features as transform_features
from jaxrec.data._negatives_device import DevicePositives as DevicePositives
from jaxrec.data._negatives_device import sample_negatives_jax as sample_negatives_jax
from jaxrec.data._negatives_device import popularity_masses as popularity_masses
from jaxrec.data._negatives_device import sample_popularity_negatives_jax as sample_popularity_negatives_jax
from jaxrec.data._train_batches import TrainBatches as TrainBatches
from jaxrec.data._keyed_batches import KeyedTrainBatches as KeyedTrainBatches
from jaxrec.data._device_batches import DeviceEpochArrays as DeviceEpochArrays
from jaxrec.data._device_batches import DeviceTrainBatches as DeviceTrainBatches
# --- readers and writers (raw files -> MultimodalDataset) ---
from jaxrec.data._io import DataWarning as DataWarning
from jaxrec.data._load import FORMATS as FORMATS
from jaxrec.data._load import detect_format as detect_format
from jaxrec.data._load import load as load
from jaxrec.data._readers_mmrec import read_mmrec as read_mmrec
from jaxrec.data._readers_mmrec import save_mmrec as save_mmrec
from jaxrec.data._readers_movielens import read_movielens as read_movielens
from jaxrec.data._readers_recbole import read_recbole as read_recbole
from jaxrec.data._text import align_item_text as align_item_text
from jaxrec.data._text import read_item_text as read_item_text
# --- synthetic data and TFDS storage ---
from jaxrec.data._synthetic import SyntheticTruth as SyntheticTruth
from jaxrec.data._synthetic import default_dataset as default_dataset
from jaxrec.data._synthetic import make_synthetic as make_synthetic
from jaxrec.data._tfds import load_prepared as load_prepared
from jaxrec.data._tfds import load_prepared_side as load_prepared_side
from jaxrec.data._tfds import prepare_tfds as prepare_tfds
from jaxrec.data._tfds import prepared_versions as prepared_versions
from jaxrec.data._tfds import read_train_shard as read_train_shard
from jaxrec.data._tfds import tfds_builder_class as tfds_builder_class

# Users and items of valid/test never seen in train (warned about by `jaxrec data info` and training).
from jaxrec.data._split_coverage import unseen_in_train as unseen_in_train
from jaxrec.data._split_coverage import unseen_messages as unseen_messages
from jaxrec.data._split_coverage import warn_unseen_in_train as warn_unseen_in_train
