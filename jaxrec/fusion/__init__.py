"""jaxrec.fusion: kernel encoding, subspace learning and the fusion layers of multimodal recommenders.

Fusion levels: feature-level (``EarlyFusion``, ``KernelEncoding``), vector-level (``LateFusion``,
``AttentionFusion``, ``GatedFusion``, ``SubspaceProjection``) and model-level
(``ModelLevelFusion``). Every layer takes per-modality (n,) bool row masks (True = present).
See docs/fusion.md.
"""

# Kernels.
from jaxrec.fusion._kernels import combined_kernel as combined_kernel
from jaxrec.fusion._kernels import cosine_kernel as cosine_kernel
from jaxrec.fusion._kernels import linear_kernel as linear_kernel
from jaxrec.fusion._kernels import polynomial_kernel as polynomial_kernel
from jaxrec.fusion._kernels import rbf_kernel as rbf_kernel

# Explicit feature maps.
from jaxrec.fusion._feature_maps import MAX_POLYNOMIAL_FEATURES as MAX_POLYNOMIAL_FEATURES
from jaxrec.fusion._feature_maps import RandomFourierParams as RandomFourierParams
from jaxrec.fusion._feature_maps import cosine_features as cosine_features
from jaxrec.fusion._feature_maps import direct_sum_features as direct_sum_features
from jaxrec.fusion._feature_maps import init_random_fourier as init_random_fourier
from jaxrec.fusion._feature_maps import linear_features as linear_features
from jaxrec.fusion._feature_maps import polynomial_feature_dim as polynomial_feature_dim
from jaxrec.fusion._feature_maps import polynomial_features as polynomial_features
from jaxrec.fusion._feature_maps import random_fourier_features as random_fourier_features

# Kernel encoding.
from jaxrec.fusion._kernel_encoding import KERNEL_KINDS as KERNEL_KINDS
from jaxrec.fusion._kernel_encoding import KernelEncoding as KernelEncoding
from jaxrec.fusion._kernel_encoding import KernelSpec as KernelSpec

# Subspace learning.
from jaxrec.fusion._subspace import CCAResult as CCAResult
from jaxrec.fusion._subspace import SubspaceFit as SubspaceFit
from jaxrec.fusion._subspace import SubspaceOutput as SubspaceOutput
from jaxrec.fusion._subspace import SubspaceProjection as SubspaceProjection
from jaxrec.fusion._subspace import cca as cca
from jaxrec.fusion._subspace import fit_subspace as fit_subspace
from jaxrec.fusion._subspace import orthonormalize as orthonormalize
from jaxrec.fusion._subspace import principal_angles as principal_angles
from jaxrec.fusion._subspace import subspace_step as subspace_step

# Fusion layers.
from jaxrec.fusion._attention_fusion import AttentionFusion as AttentionFusion
from jaxrec.fusion._attention_fusion import GatedFusion as GatedFusion
from jaxrec.fusion._fusion import EarlyFusion as EarlyFusion
from jaxrec.fusion._fusion import LateFusion as LateFusion
from jaxrec.fusion._layers import MLP as MLP
from jaxrec.fusion._model_fusion import ModelLevelFusion as ModelLevelFusion
from jaxrec.fusion._model_fusion import combine_modality_scores as combine_modality_scores
from jaxrec.fusion._masked_softmax import masked_softmax as masked_softmax

# Temporal pooling of sequence modalities.
from jaxrec.fusion._pooling import AttentionPooling as AttentionPooling
from jaxrec.fusion._pooling import MaskedMeanPooling as MaskedMeanPooling
from jaxrec.fusion._pooling import lengths_to_mask as lengths_to_mask
from jaxrec.fusion._pooling import masked_mean_pool as masked_mean_pool
