r"""Datasets: readers for ModelNet and ShapeNetPart in their published formats, built-in data
that needs no download, and point-cloud transforms. Items are PyG ``Data`` objects, so PyG's
``DataLoader`` batches them.

``pcattn.data.check`` (``python -m pcattn.data.check ROOT``) reports what a folder holds.
"""

from .base import CachedDataset, DatasetError, Entry, default_cache_root, index_only
from .builtin import Digits, KarateClub
from .modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES, ModelNet, parse_resampled_txt
from .off import parse_off, sample_surface
from .shapenet import (
    CATEGORIES,
    CATEGORY_PARTS,
    NUM_CATEGORIES,
    NUM_PARTS,
    PART_TO_CATEGORY,
    SYNSETS,
    ShapeNetPart,
    category_part_mask,
    part_to_category,
)
from .synthetic import SYNTHETIC_PARTS, SyntheticParts
from .transforms import (
    Compose,
    Jitter,
    NormalizeSphere,
    PointDropout,
    RandomRotate,
    RandomScale,
    Resample,
    Shuffle,
)

__all__ = [
    # readers and their base
    "CachedDataset",
    "DatasetError",
    "Entry",
    "default_cache_root",
    "index_only",
    "ModelNet",
    "MODELNET40_CLASSES",
    "MODELNET10_CLASSES",
    "ShapeNetPart",
    "CATEGORIES",
    "CATEGORY_PARTS",
    "NUM_CATEGORIES",
    "NUM_PARTS",
    "PART_TO_CATEGORY",
    "SYNSETS",
    "category_part_mask",
    "part_to_category",
    # parsers
    "parse_off",
    "sample_surface",
    "parse_resampled_txt",
    # built-in data
    "SyntheticParts",
    "SYNTHETIC_PARTS",
    "Digits",
    "KarateClub",
    # transforms
    "Compose",
    "NormalizeSphere",
    "RandomScale",
    "Jitter",
    "RandomRotate",
    "PointDropout",
    "Resample",
    "Shuffle",
]
