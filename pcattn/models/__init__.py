r"""Models built from :mod:`pcattn.nn` layers and :mod:`pcattn.graphs` neighbourhoods.

:data:`MODELS` maps a config name to its class (a plain dict, nothing registers itself on
import). Every model takes a PyG ``Batch`` and returns logits: ``(B, classes)`` for
classification, ``(N, classes)`` per point for segmentation and per node for node
classification; its ``task`` attribute says which.
"""

from .attention_net import (
    AttentionNetCls,
    AttentionNetSeg,
    PointTransformerCls,
    PointTransformerSeg,
)
from .dgcnn import DGCNNCls, DGCNNSeg, EdgeConv
from .graph import GraphNodeClassifier
from .operators import OPERATORS, AttentionBlock, OperatorOptions
from .pointnet2 import PointNet2Cls, PointNet2Seg

#: config name -> model class
MODELS: dict[str, type] = {
    "point_transformer_cls": PointTransformerCls,
    "point_transformer_seg": PointTransformerSeg,
    "attention_net_cls": AttentionNetCls,
    "attention_net_seg": AttentionNetSeg,
    "dgcnn_cls": DGCNNCls,
    "dgcnn_seg": DGCNNSeg,
    "pointnet2_cls": PointNet2Cls,
    "pointnet2_seg": PointNet2Seg,
    "graph_node_classifier": GraphNodeClassifier,
}

__all__ = [
    "MODELS",
    "OPERATORS",
    "AttentionBlock",
    "OperatorOptions",
    "AttentionNetCls",
    "AttentionNetSeg",
    "PointTransformerCls",
    "PointTransformerSeg",
    "GraphNodeClassifier",
    "DGCNNCls",
    "DGCNNSeg",
    "EdgeConv",
    "PointNet2Cls",
    "PointNet2Seg",
]
