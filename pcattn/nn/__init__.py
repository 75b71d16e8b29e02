r"""Layers: the :class:`NodeAttention` message-passing layer, its plug-ins and the named
operators built on it.

Every named operator runs through :class:`NodeAttention` (or its plug-ins and
:mod:`pcattn.ops`) on an ``edge_index``, so pixels, points and graph nodes share one code path;
the image-paper operators also take an image ``(B, C, H, W)`` and build their graph inside.
"""

from .attention import NodeAttention
from .base import Edges, Normalizer, Similarity, ValueTransform, share_channels
from .context import (
    ChannelAttention,
    ContextScore,
    DualAttention,
    GlobalContextBlock,
    PositionAttention,
)
from .conv_attention import ConvAttention, GridConv, LocalSelfAttention
from .criss_cross import CrissCrossAttention
from .double_attention import DoubleAttention, SlotScore
from .em_attention import EMAttention, SumNormalize
from .external import ExternalAttention
from .gnn import GATLayer, GCNLayer
from .interlaced import InterlacedSparseAttention, ProjectedDotProduct
from .non_local import NonLocalBlock
from .normalize import DoubleNormalize, Mean, NoNormalize, Softmax, SymmetricDegree
from .offset_attention import OffsetAttention
from .point_transformer import PointTransformerLayer
from .pyramid import PyramidKeyAttention
from .san import PatchRelation, SANPairwise, SANPatchwise
from .self_attention import MultiHeadSelfAttention, StructuredSelfAttention
from .similarity import (
    Concatenation,
    DotProduct,
    EdgeWeight,
    GATScore,
    GATv2Score,
    MemoryKeys,
    RelativeQuadratic,
    VectorRelation,
)
from .value import (
    AdditivePositionalValue,
    IdentityValue,
    LinearValue,
    OffsetValue,
    SlotValue,
)

__all__ = [
    # the layer and its plug-in interfaces
    "NodeAttention",
    "Edges",
    "Similarity",
    "Normalizer",
    "ValueTransform",
    "share_channels",
    # normalisers C
    "Softmax",
    "SymmetricDegree",
    "Mean",
    "DoubleNormalize",
    "NoNormalize",
    "SumNormalize",
    # similarities f
    "EdgeWeight",
    "DotProduct",
    "Concatenation",
    "GATScore",
    "GATv2Score",
    "VectorRelation",
    "RelativeQuadratic",
    "MemoryKeys",
    "PatchRelation",
    "ContextScore",
    "SlotScore",
    "ProjectedDotProduct",
    # values g
    "LinearValue",
    "IdentityValue",
    "OffsetValue",
    "AdditivePositionalValue",
    "SlotValue",
    # named operators
    "GCNLayer",
    "GATLayer",
    "PointTransformerLayer",
    "NonLocalBlock",
    "MultiHeadSelfAttention",
    "StructuredSelfAttention",
    "GridConv",
    "ConvAttention",
    "LocalSelfAttention",
    "SANPairwise",
    "SANPatchwise",
    "OffsetAttention",
    "ExternalAttention",
    "GlobalContextBlock",
    "PositionAttention",
    "ChannelAttention",
    "DualAttention",
    "CrissCrossAttention",
    "DoubleAttention",
    "InterlacedSparseAttention",
    "PyramidKeyAttention",
    "EMAttention",
]
