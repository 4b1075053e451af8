"""jaxrec.features."""
from jaxrec.features._preprocess import L2Normalizer as L2Normalizer
from jaxrec.features._preprocess import MeanFiller as MeanFiller
from jaxrec.features._preprocess import PCAProjection as PCAProjection
from jaxrec.features._preprocess import Standardizer as Standardizer
from jaxrec.features._preprocess import apply_transform as apply_transform
from jaxrec.features._preprocess import as_dict as as_dict
from jaxrec.features._preprocess import fit_items as fit_items
from jaxrec.features._preprocess import fit_mean_fill as fit_mean_fill
from jaxrec.features._preprocess import fit_pca as fit_pca
from jaxrec.features._preprocess import fit_rows as fit_rows
from jaxrec.features._preprocess import fit_standardizer as fit_standardizer
from jaxrec.features._preprocess import l2_normalize as l2_normalize
from jaxrec.features._preprocess import mean_fill as mean_fill
from jaxrec.features._preprocess import pca as pca
from jaxrec.features._preprocess import standardize as standardize
from jaxrec.features._preprocess import transform_from_dict as transform_from_dict

# --- text encoder (raw item text -> a text modality) ---
from jaxrec.features._text_encoder import DEFAULT_TEXT_MODEL as DEFAULT_TEXT_MODEL
from jaxrec.features._text_encoder import SentenceTransformerEncoder as SentenceTransformerEncoder
from jaxrec.features._text_encoder import TextEncoder as TextEncoder
from jaxrec.features._text_encoder import add_text_modality as add_text_modality
from jaxrec.features._text_encoder import encode_texts as encode_texts
from jaxrec.features._text_encoder import text_modality as text_modality

# --- raw media -> item features (jaxrec features extract) ---
from jaxrec.features._encoders import ClassicAudioEncoder as ClassicAudioEncoder
from jaxrec.features._encoders import ClassicImageEncoder as ClassicImageEncoder
from jaxrec.features._encoders import ModalityPipeline as ModalityPipeline
from jaxrec.features._extract import ExtractionResult as ExtractionResult
from jaxrec.features._extract import extract_features as extract_features
from jaxrec.features._extract import check_output as check_output
from jaxrec.features._extract import output_paths as output_paths
from jaxrec.features._feature_files import add_features as add_features
from jaxrec.features._feature_files import load_features as load_features
from jaxrec.features._media_io import FrameSampling as FrameSampling
from jaxrec.features._media_io import MediaError as MediaError
from jaxrec.features._media_list import MediaList as MediaList
from jaxrec.features._media_list import MediaWarning as MediaWarning
from jaxrec.features._media_list import read_media_list as read_media_list
from jaxrec.features._pretrained import ENCODERS as ENCODERS
from jaxrec.features._pretrained import ClipImageEncoder as ClipImageEncoder
from jaxrec.features._pretrained import TimmImageEncoder as TimmImageEncoder
from jaxrec.features._pretrained import make_encoder as make_encoder
