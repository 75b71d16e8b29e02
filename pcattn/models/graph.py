r"""Node classification on a given graph (a citation network, a social graph): a stack of
graph-attention operators over ``data.edge_index``, no positions."""

from __future__ import annotations

from torch import Tensor, nn

from ..nn import GATLayer, GCNLayer

__all__ = ["GraphNodeClassifier"]


class GraphNodeClassifier(nn.Module):
    r"""``layers`` graph layers of one kind over the graph's own edges, ReLU and dropout
    between them; the last layer outputs the class logits of every node (Kipf & Welling's
    two-layer GCN, `arXiv:1609.02907 <https://arxiv.org/abs/1609.02907>`_, and the GAT of
    Veličković et al., `arXiv:1710.10903 <https://arxiv.org/abs/1710.10903>`_).

    Args:
        in_channels: width of ``data.x``.
        num_classes: number of classes.
        operator: ``"gcn"``, ``"gat"`` or ``"gatv2"`` (default: ``"gcn"``).
        hidden: width of the hidden layers (default: ``16``).
        layers: number of graph layers, at least 1 (default: ``2``).
        heads: heads of the hidden GAT layers (the output layer averages ``1`` head)
            (default: ``4``).
        dropout: dropout on the features before each layer (default: ``0.5``).

    Shapes:
        ``data.x (N, in_channels)``, ``data.edge_index (2, E)`` -> logits ``(N, num_classes)``
    """

    task = "node"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        operator: str = "gcn",
        hidden: int = 16,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if operator not in ("gcn", "gat", "gatv2"):
            raise ValueError(f"operator must be 'gcn', 'gat' or 'gatv2', got {operator!r}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        widths = [in_channels] + [hidden] * (layers - 1) + [num_classes]
        self.layers = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if operator == "gcn":
                self.layers.append(GCNLayer(c_in, c_out))
            else:
                last = i == layers - 1
                h = 1 if last else heads
                self.layers.append(GATLayer(c_in, c_out, heads=h, v2=operator == "gatv2"))
        self.dropout = nn.Dropout(dropout)

    def forward(self, data) -> Tensor:
        x = data.x  # (N, C_in)
        for i, layer in enumerate(self.layers):
            x = layer(self.dropout(x), data.edge_index)  # (N, C_i)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x  # (N, num_classes)
