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
