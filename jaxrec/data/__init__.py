"""jaxrec.data: the dataset type, readers and writers, splits, sampling, graphs, synthetic data."""

from jaxrec.data._dataset import SPLIT_NAMES as SPLIT_NAMES
from jaxrec.data._dataset import TEST as TEST
from jaxrec.data._dataset import TRAIN as TRAIN
from jaxrec.data._dataset import VALID as VALID
from jaxrec.data._dataset import Interactions as Interactions
from jaxrec.data._dataset import Modality as Modality
from jaxrec.data._dataset import MultimodalDataset as MultimodalDataset
