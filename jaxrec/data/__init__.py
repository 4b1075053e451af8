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
from jaxrec.data._sampling import DevicePositives as DevicePositives
from jaxrec.data._sampling import PositiveSets as PositiveSets
from jaxrec.data._sampling import TrainBatches as TrainBatches
from jaxrec.data._sampling import sample_negatives as sample_negatives
from jaxrec.data._sampling import sample_negatives_jax as sample_negatives_jax
