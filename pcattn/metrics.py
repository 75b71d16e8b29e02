r"""Evaluation metrics: OA / mAcc for classification, instance and class mIoU for part segmentation.

Everything here takes label tensors (any device) and returns Python floats or CPU tensors; no
model or dataset is imported.

**Classification.** From the confusion matrix :math:`M` (rows = truth, columns = prediction):

.. math::
    \mathrm{OA} = \frac{\operatorname{tr} M}{\sum_{ij} M_{ij}}, \qquad
    \mathrm{mAcc} = \frac{1}{|K'|} \sum_{k \in K'} \frac{M_{kk}}{\sum_j M_{kj}}

where :math:`K'` is the set of classes with at least one true sample (a class absent from the
truth has no recall and is left out, instead of counting as 0 or 1).

**Part segmentation** (the ShapeNetPart protocol of the PointNet, PointNet++ and DGCNN
evaluation code). Part ids are global (every category owns its own ids). For one shape of
category :math:`c` with parts :math:`P_c`:

.. math::
    \mathrm{IoU}_{\text{shape}} = \frac{1}{|P_c|} \sum_{p \in P_c}
    \begin{cases}
    \dfrac{|\hat y = p \wedge y = p|}{|\hat y = p \vee y = p|} & \text{if the union is non-empty} \\
    1 & \text{if } p \text{ is in neither prediction nor truth}
    \end{cases}

A point predicted as a part outside :math:`P_c` is simply wrong: it is in the union of its true
part and in no intersection. *Instance mIoU* averages the shape IoUs over all shapes; *class
mIoU* first averages over the shapes of each category, then over the categories present.
:func:`constrain_to_category` is the usual evaluation step that restricts a shape's prediction to
its category's parts before the argmax.

**Distributed evaluation.** Both meters keep only sums (confusion counts; per-category IoU sums
and shape counts, correct and total points), so merging ranks is a sum: call
:meth:`ClassificationMeter.all_reduce` / :meth:`SegmentationMeter.all_reduce` once on every rank
after the last ``update`` and before ``compute``. Without an initialised ``torch.distributed``
process group it does nothing. ``state()`` / ``merge()`` do the same by hand (e.g. to combine
meters filled in separate processes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .distributed import all_reduce_sum

__all__ = [
    "confusion_matrix",
    "overall_accuracy",
    "mean_class_accuracy",
    "shape_part_iou",
    "batch_part_iou",
    "constrain_to_category",
    "ClassificationMeter",
    "SegmentationMeter",
]


# ---------------------------------------------------------------------------------------------
# validation


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_int_vector(t: object, name: str) -> Tensor:
    """``t`` must be a 1-D integer (not bool) tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N,), got {_shape(t)}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,), got {_shape(t)}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer labels (int64), got {t.dtype}")
    return t


def _check_range(t: Tensor, name: str, high: int, what: str = "label") -> None:
    """Every value of ``t`` must lie in ``[0, high)``; names the first offending extreme."""
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(f"{name} has {what} {lo} outside [0, {high})")
    if hi >= high:
        raise ValueError(f"{name} has {what} {hi} outside [0, {high})")


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {_shape(a)} and {_shape(b)}"
        )


def _check_confusion(confusion: object) -> Tensor:
    if not isinstance(confusion, Tensor):
        raise ValueError(f"confusion must be a torch.Tensor (K, K), got {_shape(confusion)}")
    if confusion.dim() != 2 or confusion.size(0) != confusion.size(1):
        raise ValueError(f"confusion must be square of shape (K, K), got {_shape(confusion)}")
    return confusion.detach().to("cpu", torch.float64)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# classification


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    r"""Count matrix ``M[t, p]`` = number of samples with truth ``t`` predicted as ``p``.

    Args:
        pred (Tensor): predicted labels.
        target (Tensor): true labels.
        num_classes (int): number of classes ``K``; labels must lie in ``[0, K)``.

    Shapes:
        pred, target: ``(N,)`` integer; returns ``(K, K)`` ``int64`` on the CPU, rows = truth,
        columns = prediction.

    Raises:
        ValueError: naming the argument, for a non-tensor, a non-1-D or non-integer input,
            different shapes, or a label outside ``[0, K)``.
    """
    K = _positive_int(num_classes, "num_classes")
    pred = _check_int_vector(pred, "pred")
    target = _check_int_vector(target, "target")
    _check_same_shape(pred, target, "pred", "target")
    _check_range(pred, "pred", K)
    _check_range(target, "target", K)
    key = target.long() * K + pred.long().to(target.device)  # (N,)
    counts = torch.bincount(key, minlength=K * K)  # (K * K,)
    return counts.view(K, K).to("cpu", torch.int64)  # (K, K)


def overall_accuracy(confusion: Tensor) -> float:
    r"""Overall accuracy: correct samples over all samples, ``trace(M) / sum(M)``.

    Args:
        confusion (Tensor): a confusion matrix ``(K, K)``, rows = truth (see
            :func:`confusion_matrix`).

    Raises:
        ValueError: if the matrix is not square or holds no sample (accuracy is undefined).
    """
    m = _check_confusion(confusion)
    total = float(m.sum())
    if total <= 0:
        raise ValueError("confusion matrix is empty (no samples); accuracy is undefined")
    return float(m.diagonal().sum()) / total


def mean_class_accuracy(confusion: Tensor) -> float:
    r"""Mean over classes of the per-class accuracy (recall), ``M[k, k] / sum_j M[k, j]``.

    Only classes with at least one true sample (a non-zero row) are averaged: a class that never
    occurs in the truth has no defined recall and is left out, so on a subset of a dataset the
    score is not dragged down (or up) by classes that are simply absent. Predictions *of* an
    absent class still lower the recall of the true classes they were taken from.

    Args:
        confusion (Tensor): a confusion matrix ``(K, K)``, rows = truth.

    Raises:
        ValueError: if the matrix is not square or holds no sample.
    """
    m = _check_confusion(confusion)
    support = m.sum(dim=1)  # (K,)
    present = support > 0  # (K,)
    if not bool(present.any()):
        raise ValueError("confusion matrix is empty (no samples); accuracy is undefined")
    recall = m.diagonal()[present] / support[present]  # (K',)
    return float(recall.mean())


# ---------------------------------------------------------------------------------------------
# part segmentation


def shape_part_iou(pred: Tensor, target: Tensor, parts: Sequence[int]) -> float:
    r"""Part IoU of one shape: the mean over the category's parts of the per-part IoU.

    A part in neither the prediction nor the truth counts as IoU 1; a part predicted but absent
    from the truth counts as IoU 0. Points predicted as a part outside ``parts`` lower the IoU of
    their true part (they are in its union, not in its intersection).

    Args:
        pred (Tensor): predicted global part ids of the shape's points (any integers).
        target (Tensor): true global part ids; each must be one of ``parts``.
        parts (Sequence[int]): the global part ids of the shape's category.

    Shapes:
        pred, target: ``(N,)`` integer.

    Raises:
        ValueError: for inputs of the wrong shape or dtype, an empty or repeated ``parts``, or a
            true label that is not one of ``parts``.
    """
    pred = _check_int_vector(pred, "pred")
    target = _check_int_vector(target, "target")
    _check_same_shape(pred, target, "pred", "target")
    part_list = [int(p) for p in parts]
    if not part_list:
        raise ValueError("parts must name at least one part id, got []")
    if len(set(part_list)) != len(part_list):
        raise ValueError(f"parts must not repeat an id, got {part_list}")
    pred = pred.detach().to("cpu", torch.int64)
    target = target.detach().to("cpu", torch.int64)
    known = torch.isin(target, torch.tensor(part_list, dtype=torch.int64))  # (N,)
    if not bool(known.all()):
        bad = int(target[~known][0])
        raise ValueError(
            f"target has part {bad}, which is not one of the shape's parts {part_list}"
        )
    ious = []
    for p in part_list:
        in_pred, in_target = pred == p, target == p  # (N,), (N,)
        union = int((in_pred | in_target).sum())
        inter = int((in_pred & in_target).sum())
        ious.append(1.0 if union == 0 else inter / union)
    return math.fsum(ious) / len(ious)


def _check_category_batch(
    batch: object, category: object, num_points: int, num_categories: int
) -> tuple[Tensor, Tensor]:
    batch = _check_int_vector(batch, "batch")
    category = _check_int_vector(category, "category")
    if batch.numel() != num_points:
        raise ValueError(
            f"batch has {batch.numel()} entries but there are {num_points} points; "
            "they must describe the same points"
        )
    _check_range(batch, "batch", category.numel(), what="shape index")
    _check_range(category, "category", num_categories, what="category")
    return batch.long(), category.long()


def batch_part_iou(
    pred: Tensor, target: Tensor, batch: Tensor, category: Tensor, part_mask: Tensor
) -> Tensor:
    r"""Part IoU (see :func:`shape_part_iou`) of every shape of a packed batch at once.

    Args:
        pred (Tensor): predicted global part ids, in ``[0, P)``.
        target (Tensor): true global part ids; each must belong to its shape's category.
        batch (Tensor): shape index of each point, in ``[0, B)``.
        category (Tensor): category index of each shape, in ``[0, C)``.
        part_mask (Tensor): ``part_mask[c, p]`` is true when part ``p`` belongs to category ``c``.

    Shapes:
        pred, target, batch: ``(N,)`` integer; category: ``(B,)`` integer;
        part_mask: ``(C, P)`` bool; returns ``(B,)`` ``float64`` on the CPU.

    Raises:
        ValueError: for mismatched shapes, labels out of range, a true part outside its shape's
            category, or a shape with no point.
    """
    pred = _check_int_vector(pred, "pred")
    target = _check_int_vector(target, "target")
    _check_same_shape(pred, target, "pred", "target")
    if not isinstance(part_mask, Tensor) or part_mask.dim() != 2 or part_mask.dtype != torch.bool:
        raise ValueError(f"part_mask must be a bool tensor (C, P), got {_shape(part_mask)}")
    C, P = part_mask.shape
    batch, category = _check_category_batch(batch, category, pred.numel(), C)
    _check_range(pred, "pred", P, what="part")
    _check_range(target, "target", P, what="part")
    B = category.numel()
    device = target.device
    pred, batch, category = pred.long().to(device), batch.to(device), category.to(device)
    target = target.long()
    mask = part_mask.to(device)[category]  # (B, P)

    key_t = batch * P + target  # (N,)
    key_p = batch * P + pred  # (N,)
    n_target = torch.bincount(key_t, minlength=B * P).view(B, P)  # (B, P)
    n_pred = torch.bincount(key_p, minlength=B * P).view(B, P)  # (B, P)
    n_inter = torch.bincount(key_t[pred == target], minlength=B * P).view(B, P)  # (B, P)

    empty = n_target.sum(dim=1) == 0  # (B,)
    if bool(empty.any()):
        b = int(torch.nonzero(empty)[0, 0])
        raise ValueError(f"shape {b} of the batch has no point (batch never takes the value {b})")
    foreign = (n_target > 0) & ~mask  # (B, P)
    if bool(foreign.any()):
        b, p = (int(v) for v in torch.nonzero(foreign)[0])
        c = int(category[b])
        parts = torch.nonzero(mask[b]).flatten().tolist()
        raise ValueError(
            f"target has part {p} in shape {b} of category {c}, whose parts are {parts}"
        )

    union = (n_target + n_pred - n_inter).double()  # (B, P)
    iou = torch.where(union > 0, n_inter.double() / union.clamp(min=1), 1.0)  # (B, P)
    per_shape = (iou * mask).sum(dim=1) / mask.sum(dim=1)  # (B,)
    return per_shape.cpu()


def constrain_to_category(
    logits: Tensor, batch: Tensor, category: Tensor, part_mask: Tensor
) -> Tensor:
    r"""Set the logits of parts outside each point's shape category to ``-inf``.

    The standard ShapeNetPart evaluation step: the category of every test shape is known, so the
    argmax is taken only over that category's parts. Returns a new tensor; ``logits`` is not
    modified.

    Args:
        logits (Tensor): per-point part logits.
        batch (Tensor): shape index of each point, in ``[0, B)``.
        category (Tensor): category index of each shape, in ``[0, C)``.
        part_mask (Tensor): ``part_mask[c, p]`` is true when part ``p`` belongs to category ``c``.

    Shapes:
        logits: ``(N, P)`` floating; batch: ``(N,)``; category: ``(B,)``;
        part_mask: ``(C, P)`` bool; returns ``(N, P)`` like ``logits``.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor (N, P), got {_shape(logits)}")
    if not isinstance(part_mask, Tensor) or part_mask.dim() != 2 or part_mask.dtype != torch.bool:
        raise ValueError(f"part_mask must be a bool tensor (C, P), got {_shape(part_mask)}")
    if part_mask.size(1) != logits.size(1):
        raise ValueError(
            f"part_mask has {part_mask.size(1)} parts but logits has {logits.size(1)} columns"
        )
    batch, category = _check_category_batch(batch, category, logits.size(0), part_mask.size(0))
    device = logits.device
    point_category = category.to(device)[batch.to(device)]  # (N,)
    allowed = part_mask.to(device)[point_category]  # (N, P)
    return logits.masked_fill(~allowed, float("-inf"))  # (N, P)


# ---------------------------------------------------------------------------------------------
# meters


class ClassificationMeter:
    r"""Accumulates a confusion matrix over batches; reports overall and mean class accuracy.

    Args:
        num_classes (int): number of classes ``K``.

    The only state is the ``(K, K)`` ``int64`` confusion matrix on the CPU, so merging ranks is
    a sum (:meth:`all_reduce`, :meth:`merge`).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.confusion.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true labels, both ``(B,)`` integer in ``[0, K)``."""
        self.confusion += confusion_matrix(pred, target, self.num_classes)

    def compute(self) -> dict[str, float]:
        """``{"oa": overall accuracy, "macc": mean class accuracy}`` over everything seen.

        Raises:
            ValueError: if no sample has been added.
        """
        if int(self.confusion.sum()) == 0:
            raise ValueError("ClassificationMeter has no samples; call update() first")
        return {
            "oa": overall_accuracy(self.confusion),
            "macc": mean_class_accuracy(self.confusion),
        }

    def state(self) -> Tensor:
        """The meter's counts as one flat ``int64`` tensor ``(K * K,)``; summing states merges."""
        return self.confusion.flatten().clone()

    def merge(self, other_state: Tensor) -> None:
        """Add another meter's :meth:`state` (e.g. from another process) into this one."""
        expected = (self.num_classes * self.num_classes,)
        if not isinstance(other_state, Tensor) or tuple(other_state.shape) != expected:
            raise ValueError(f"other_state must have shape {expected}, got {_shape(other_state)}")
        self.confusion += other_state.detach().to("cpu", torch.int64).view_as(self.confusion)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks of the initialised process group (no-op without one).

        Call it once on every rank, after the last :meth:`update` and before :meth:`compute`;
        calling it again would count the other ranks' samples twice.
        """
        self.confusion = all_reduce_sum(self.confusion).to(torch.int64)


class SegmentationMeter:
    r"""Accumulates ShapeNetPart-style part IoU over batches of shapes.

    Per shape, the IoU is :func:`shape_part_iou` over the parts of its category; the meter keeps,
    per category, the sum of its shapes' IoUs and their number, plus the counts of correct and of
    all points, all as ``float64`` tensors on the CPU, so merging ranks is a sum.

    Args:
        category_parts (Mapping[int, Sequence[int]] or Sequence[Sequence[int]]): the global part
            ids of every category, keyed (or indexed) by category index ``0 .. C - 1``.
        category_names (list[str], optional): category names for ``per_class``; by default the
            indices as strings. (default: :obj:`None`)
        num_parts (int, optional): number of part classes ``P`` the predictions range over; by
            default one more than the largest part id. (default: :obj:`None`)

    :meth:`compute` returns a dict with

    * ``instance_miou``: mean part IoU over all shapes;
    * ``class_miou``: mean over the categories present of their mean shape IoU;
    * ``per_class``: category name -> mean shape IoU, for the categories present (index order);
    * ``point_accuracy``: fraction of points whose predicted part is the true one.
    """

    def __init__(
        self,
        category_parts: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
        category_names: list[str] | None = None,
        num_parts: int | None = None,
    ) -> None:
        if isinstance(category_parts, Mapping):
            keys = sorted(int(k) for k in category_parts)
            if keys != list(range(len(keys))):
                raise ValueError(
                    f"category_parts must be keyed by the category indices 0 .. C - 1, got {keys}"
                )
            table = [[int(p) for p in category_parts[k]] for k in keys]
        else:
            table = [[int(p) for p in parts] for parts in category_parts]
        if not table:
            raise ValueError("category_parts must describe at least one category")
        for c, parts in enumerate(table):
            if not parts:
                raise ValueError(f"category {c} has no parts in category_parts")
            if min(parts) < 0:
                raise ValueError(f"category {c} has a negative part id: {parts}")
        largest = max(max(parts) for parts in table)
        if num_parts is None:
            num_parts = largest + 1
        num_parts = _positive_int(num_parts, "num_parts")
        if largest >= num_parts:
            raise ValueError(f"category_parts uses part {largest}, but num_parts is {num_parts}")
        C = len(table)
        if category_names is None:
            category_names = [str(c) for c in range(C)]
        if len(category_names) != C:
            raise ValueError(f"category_names has {len(category_names)} names for {C} categories")

        self.category_parts = table
        self.category_names = list(category_names)
        self.num_categories = C
        self.num_parts = num_parts
        mask = torch.zeros(C, num_parts, dtype=torch.bool)
        for c, parts in enumerate(table):
            mask[c, parts] = True
        #: ``(C, P)`` bool, ``part_mask[c, p]`` when part ``p`` belongs to category ``c``
        #: (the mask :func:`constrain_to_category` takes)
        self.part_mask = mask
        self.iou_sum = torch.zeros(C, dtype=torch.float64)
        self.shape_count = torch.zeros(C, dtype=torch.float64)
        self.correct_points = torch.zeros((), dtype=torch.float64)
        self.total_points = torch.zeros((), dtype=torch.float64)

    def reset(self) -> None:
        """Forget every shape seen so far."""
        for t in (self.iou_sum, self.shape_count, self.correct_points, self.total_points):
            t.zero_()

    def update(self, pred: Tensor, target: Tensor, batch: Tensor, category: Tensor) -> Tensor:
        r"""Add a packed batch of shapes.

        Args:
            pred (Tensor): predicted global part ids ``(N,)`` in ``[0, P)`` (see
                :func:`constrain_to_category` for the usual restriction before the argmax).
            target (Tensor): true global part ids ``(N,)``.
            batch (Tensor): shape index of each point ``(N,)``, in ``[0, B)``.
            category (Tensor): category index of each shape ``(B,)``.

        Returns:
            The part IoU of each shape of the batch, ``(B,)`` ``float64`` on the CPU.
        """
        ious = batch_part_iou(pred, target, batch, category, self.part_mask)  # (B,)
        cat = category.detach().to("cpu", torch.int64)  # (B,)
        self.iou_sum.index_add_(0, cat, ious)
        self.shape_count.index_add_(0, cat, torch.ones_like(ious))
        self.correct_points += float((pred.to(target.device) == target).sum())
        self.total_points += target.numel()
        return ious

    def compute(self) -> dict[str, float | dict[str, float]]:
        """``instance_miou``, ``class_miou``, ``per_class`` and ``point_accuracy`` (see class).

        Raises:
            ValueError: if no shape has been added.
        """
        total_shapes = float(self.shape_count.sum())
        if total_shapes == 0:
            raise ValueError("SegmentationMeter has no shapes; call update() first")
        present = self.shape_count > 0  # (C,)
        class_iou = self.iou_sum[present] / self.shape_count[present]  # (C',)
        names = [n for n, p in zip(self.category_names, present.tolist(), strict=True) if p]
        return {
            "instance_miou": float(self.iou_sum.sum()) / total_shapes,
            "class_miou": float(class_iou.mean()),
            "per_class": {n: float(v) for n, v in zip(names, class_iou.tolist(), strict=True)},
            "point_accuracy": float(self.correct_points) / float(self.total_points),
        }

    def state(self) -> Tensor:
        """The meter's sums as one flat ``float64`` tensor ``(2 C + 2,)``: ``iou_sum``,
        ``shape_count``, correct points, total points. Summing states merges meters."""
        return torch.cat(
            [
                self.iou_sum,
                self.shape_count,
                self.correct_points.view(1),
                self.total_points.view(1),
            ]
        )  # (2 C + 2,)

    def merge(self, other_state: Tensor) -> None:
        """Add another meter's :meth:`state` (e.g. from another process) into this one."""
        expected = (2 * self.num_categories + 2,)
        if not isinstance(other_state, Tensor) or tuple(other_state.shape) != expected:
            raise ValueError(f"other_state must have shape {expected}, got {_shape(other_state)}")
        self._load(self.state() + other_state.detach().to("cpu", torch.float64))

    def all_reduce(self) -> None:
        """Sum the meter's sums over all ranks of the initialised process group (no-op without
        one). Call it once on every rank, after the last :meth:`update` and before
        :meth:`compute`; calling it again would count the other ranks' shapes twice."""
        self._load(all_reduce_sum(self.state()))

    def _load(self, state: Tensor) -> None:
        C = self.num_categories
        state = state.to("cpu", torch.float64)
        self.iou_sum = state[:C].clone()
        self.shape_count = state[C : 2 * C].clone()
        self.correct_points = state[2 * C].clone()
        self.total_points = state[2 * C + 1].clone()
