r"""Layers: the :class:`NodeAttention` message-passing layer, its plug-ins and the named
operators built on it."""

from .attention import NodeAttention
from .base import Edges, Normalizer, Similarity, ValueTransform, share_channels
from .normalize import DoubleNormalize, Mean, NoNormalize, Softmax, SymmetricDegree
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
    "NodeAttention",
    "Edges",
    "Similarity",
    "Normalizer",
    "ValueTransform",
    "share_channels",
    "Softmax",
    "SymmetricDegree",
    "Mean",
    "DoubleNormalize",
    "NoNormalize",
    "EdgeWeight",
    "DotProduct",
    "Concatenation",
    "GATScore",
    "GATv2Score",
    "VectorRelation",
    "RelativeQuadratic",
    "MemoryKeys",
    "LinearValue",
    "IdentityValue",
    "OffsetValue",
    "AdditivePositionalValue",
    "SlotValue",
]
