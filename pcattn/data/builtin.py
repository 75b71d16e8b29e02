r"""Real data for the pixel and graph modalities that ships with the installed libraries, so
nothing is downloaded: scikit-learn's 8x8 handwritten digits and networkx's Zachary karate
club, as PyG :class:`~torch_geometric.data.Data` in the same form as the point-cloud readers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch_geometric.data import Data

__all__ = ["Digits", "KarateClub"]


class Digits(torch.utils.data.Dataset):
    r"""The UCI optical handwritten digits as scikit-learn bundles them
    (:func:`sklearn.datasets.load_digits`): 1,797 grey images of 8x8 pixels with values
    0..16, digits 0-9.

    Each image is a set of 64 pixel nodes in row-major order (node ``r * 8 + c``, the order of
    :func:`pcattn.graphs.image_to_nodes`): ``Data(x (64, 1) = intensity / 16 in [0, 1],
    pos (64, 2) = (row, col) as float, y (1,) digit, height=8, width=8)``; build its
    neighbourhoods with :func:`pcattn.graphs.grid_graph` ``(height, width, ...)``.

    Split (deterministic, stratified): for each digit, a permutation of its images drawn from
    ``numpy.random.default_rng(seed)`` (digits in order 0..9); the first
    ``floor(test_fraction * n_digit + 0.5)`` go to ``"test"``, the rest to ``"train"``. Within
    a split, items keep the order of ``load_digits``; :attr:`indices` gives each item's row
    there. With the defaults: 1,438 train and 359 test images.

    Args:
        split: ``"train"`` (default) or ``"test"``.
        test_fraction: share of each digit's images in the test split, in ``(0, 1)``
            (default: ``0.2``).
        seed: seed of the split (default: ``0``).
        transform: a callable applied to each item on access (default: ``None``).
    """

    height: int = 8
    width: int = 8
    num_classes: int = 10

    def __init__(
        self,
        split: str = "train",
        *,
        test_fraction: float = 0.2,
        seed: int = 0,
        transform: Callable[[Data], Data] | None = None,
    ) -> None:
        super().__init__()
        if split not in ("train", "test"):
            raise ValueError(f"Digits: split must be 'train' or 'test', got {split!r}")
        if (
            isinstance(test_fraction, bool)
            or not isinstance(test_fraction, (int, float))
            or not 0 < test_fraction < 1
        ):
            raise ValueError(f"Digits: test_fraction must be in (0, 1), got {test_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Digits: seed must be a non-negative int, got {seed!r}")
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
        target = np.asarray(bunch.target, dtype=np.int64)  # (1797,)
        rng = np.random.default_rng(seed)
        is_test = np.zeros(len(target), dtype=bool)
        for digit in range(self.num_classes):
            rows = np.flatnonzero(target == digit)
            k = math.floor(test_fraction * len(rows) + 0.5)
            is_test[rows[rng.permutation(len(rows))[:k]]] = True
        self.split = split
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.transform = transform
        #: each item's row in ``load_digits()``, ascending
        self.indices = np.flatnonzero(is_test if split == "test" else ~is_test)
        n, h, w = len(self.indices), self.height, self.width
        pixels = images[self.indices].reshape(n, h * w, 1) / 16.0  # (n, 64, 1)
        self._x = torch.from_numpy(pixels.astype(np.float32))
        self._y = torch.from_numpy(target[self.indices])
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self._pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1).float()  # (64, 2)

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """The digit of every item, ``(len(self),)``."""
        return self._y.numpy().copy()

    def __getitem__(self, idx: int) -> Data:
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"Digits: index must be an int, got {type(idx).__name__}")
        if not -len(self) <= idx < len(self):
            raise IndexError(f"Digits: index {idx} out of range for {len(self)} items")
        data = Data(
            x=self._x[idx].clone(),
            pos=self._pos.clone(),
            y=self._y[idx].view(1).clone(),
            height=self.height,
            width=self.width,
        )
        return self.transform(data) if self.transform is not None else data

    def __repr__(self) -> str:
        return f"Digits({len(self)}, split={self.split!r})"


class KarateClub(torch.utils.data.Dataset):
    r"""Zachary's karate club (W. W. Zachary, 1977) as networkx ships it
    (:func:`networkx.karate_club_graph`): 34 members, 78 friendships, and the club each member
    joined after the split (``'Mr. Hi'`` -> 0, ``'Officer'`` -> 1).

    One ``Data`` (this dataset has length 1): ``x (34, 34)`` one-hot identity features,
    ``edge_index (2, 156)`` with both directions of every friendship in PyG's convention
    (row 0 source, row 1 target), sorted by target then source, ``y (34,)`` club, and the
    classic semi-supervised masks: ``train_mask`` marks the two leaders (node 0, Mr. Hi, and
    node 33, the officer), ``test_mask`` every other member. (PyG's own ``KarateClub`` has the
    same graph but 4 community labels from modularity clustering.)

    Args:
        transform: a callable applied to the item on access (default: ``None``).
    """

    num_nodes: int = 34
    num_classes: int = 2

    def __init__(self, *, transform: Callable[[Data], Data] | None = None) -> None:
        super().__init__()
        import networkx as nx

        g = nx.karate_club_graph()
        n = g.number_of_nodes()
        clubs = {"Mr. Hi": 0, "Officer": 1}
        y = torch.tensor([clubs[g.nodes[i]["club"]] for i in range(n)], dtype=torch.long)
        pairs = torch.tensor(list(g.edges()), dtype=torch.long).view(-1, 2)  # (78, 2)
        src = torch.cat([pairs[:, 0], pairs[:, 1]])
        dst = torch.cat([pairs[:, 1], pairs[:, 0]])
        order = torch.argsort(dst * n + src)  # target-major, then source
        train_mask = torch.zeros(n, dtype=torch.bool)
        train_mask[[0, n - 1]] = True
        self.transform = transform
        self._data = Data(
            x=torch.eye(n),
            edge_index=torch.stack([src[order], dst[order]]),
            y=y,
            train_mask=train_mask,
            test_mask=~train_mask,
            num_nodes=n,
        )

    def __len__(self) -> int:
        return 1

    def __getitem__(self, idx: int) -> Data:
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"KarateClub: index must be an int, got {type(idx).__name__}")
        if idx not in (0, -1):
            raise IndexError(f"KarateClub: index {idx} out of range for 1 item")
        data = self._data.clone()
        return self.transform(data) if self.transform is not None else data

    def __repr__(self) -> str:
        return "KarateClub(34 nodes, 156 directed edges)"
