"""Tests for pcattn.metrics: hand-worked cases, sklearn / numpy cross-checks, errors, merging."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pcattn.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    batch_part_iou,
    confusion_matrix,
    constrain_to_category,
    mean_class_accuracy,
    overall_accuracy,
    shape_part_iou,
)


def t(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# classification


def test_confusion_matrix_3_classes_by_hand():
    target = t([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = t([0, 1, 0, 1, 2, 2, 2, 0, 2])
    # truth 0 -> predicted 0, 1, 0        : row [2, 1, 0]
    # truth 1 -> predicted 1, 2           : row [0, 1, 1]
    # truth 2 -> predicted 2, 2, 0, 2     : row [1, 0, 3]
    expected = t([[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    m = confusion_matrix(pred, target, 3)
    assert m.dtype == torch.int64
    assert torch.equal(m, expected)
    # OA = (2 + 1 + 3) / 9 ; mAcc = (2/3 + 1/2 + 3/4) / 3 = 23/36
    assert overall_accuracy(m) == pytest.approx(6 / 9, abs=1e-12)
    assert mean_class_accuracy(m) == pytest.approx(23 / 36, abs=1e-12)


def test_mean_class_accuracy_leaves_out_classes_absent_from_truth():
    # 4 classes; class 2 never occurs anywhere, class 3 is only predicted (wrongly, once)
    target = t([0, 0, 1, 1])
    pred = t([0, 3, 1, 1])
    m = confusion_matrix(pred, target, 4)
    # recall(0) = 1/2, recall(1) = 2/2; classes 2 and 3 have no true sample -> left out
    assert mean_class_accuracy(m) == pytest.approx((0.5 + 1.0) / 2, abs=1e-12)
    assert overall_accuracy(m) == pytest.approx(3 / 4, abs=1e-12)


def test_confusion_matrix_matches_sklearn_on_random_labels():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    K = 7
    target = torch.randint(0, K, (500,), generator=g)
    pred = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, K, (500,)))
    ours = confusion_matrix(pred, target, K).numpy()
    ref = sk_metrics.confusion_matrix(target.numpy(), pred.numpy(), labels=list(range(K)))
    np.testing.assert_array_equal(ours, ref)
    assert overall_accuracy(torch.from_numpy(ref)) == pytest.approx(
        sk_metrics.accuracy_score(target.numpy(), pred.numpy()), abs=1e-12
    )
    assert mean_class_accuracy(torch.from_numpy(ref)) == pytest.approx(
        sk_metrics.balanced_accuracy_score(target.numpy(), pred.numpy()), abs=1e-12
    )


def test_classification_meter_accumulates_batches():
    meter = ClassificationMeter(3)
    meter.update(t([0, 1, 0, 1]), t([0, 0, 0, 1]))
    meter.update(t([2, 2, 0, 2, 2]), t([1, 2, 2, 2, 2]))
    # same samples as the 3-class hand example
    assert torch.equal(meter.confusion, t([[2, 1, 0], [0, 1, 1], [1, 0, 3]]))
    out = meter.compute()
    assert out == {"oa": pytest.approx(6 / 9), "macc": pytest.approx(23 / 36)}
    meter.reset()
    with pytest.raises(ValueError, match="no samples"):
        meter.compute()


def test_classification_meter_merge_equals_one_meter():
    a, b, whole = ClassificationMeter(3), ClassificationMeter(3), ClassificationMeter(3)
    a.update(t([0, 1, 2]), t([0, 1, 1]))
    b.update(t([2, 2]), t([2, 0]))
    whole.update(t([0, 1, 2, 2, 2]), t([0, 1, 1, 2, 0]))
    a.merge(b.state())
    assert torch.equal(a.confusion, whole.confusion)
    with pytest.raises(ValueError, match=r"other_state must have shape \(9,\)"):
        a.merge(torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# errors


def test_label_out_of_range_names_argument_and_value():
    with pytest.raises(ValueError, match=r"target has label 7 outside \[0, 5\)"):
        confusion_matrix(t([0, 1]), t([7, 1]), 5)
    with pytest.raises(ValueError, match=r"pred has label -1 outside \[0, 5\)"):
        confusion_matrix(t([-1, 1]), t([0, 1]), 5)


def test_mismatched_shapes_and_bad_dtypes():
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(3,\)"):
        confusion_matrix(t([0, 1, 2]), t([0, 1]), 3)
    with pytest.raises(ValueError, match="pred must hold integer labels"):
        confusion_matrix(torch.tensor([0.0, 1.0]), t([0, 1]), 3)
    with pytest.raises(ValueError, match=r"target must be 1-D"):
        confusion_matrix(t([0, 1]), t([[0, 1]]), 3)
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        shape_part_iou(t([0]), t([0, 0]), [0, 1])


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        overall_accuracy(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        mean_class_accuracy(torch.zeros(3, 3, dtype=torch.int64))
    meter = SegmentationMeter({0: [0, 1]})
    with pytest.raises(ValueError, match="no shapes"):
        meter.compute()


def test_segmentation_errors_name_the_problem():
    meter = SegmentationMeter({0: [0, 1], 1: [2, 3, 4]})
    # true part 2 belongs to category 1, but the shape is of category 0
    with pytest.raises(ValueError, match=r"target has part 2 in shape 0 of category 0"):
        meter.update(t([0, 1]), t([0, 2]), t([0, 0]), t([0]))
    with pytest.raises(ValueError, match=r"pred has part 5 outside \[0, 5\)"):
        meter.update(t([0, 5]), t([0, 1]), t([0, 0]), t([0]))
    with pytest.raises(ValueError, match=r"category has category 2 outside \[0, 2\)"):
        meter.update(t([0, 1]), t([0, 1]), t([0, 0]), t([2]))
    with pytest.raises(ValueError, match="shape 1 of the batch has no point"):
        meter.update(t([0, 1]), t([0, 1]), t([0, 0]), t([0, 1]))
    with pytest.raises(ValueError, match=r"batch has shape index 1 outside \[0, 1\)"):
        meter.update(t([0, 1]), t([0, 1]), t([0, 1]), t([0]))
    with pytest.raises(ValueError, match="not one of the shape's parts"):
        shape_part_iou(t([0, 1]), t([0, 3]), [0, 1])
    with pytest.raises(ValueError, match="keyed by the category indices"):
        SegmentationMeter({0: [0], 2: [1]})
    with pytest.raises(ValueError, match="category_names has 1 names for 2 categories"):
        SegmentationMeter([[0], [1]], category_names=["a"])
    # nothing was accumulated by the failed updates
    with pytest.raises(ValueError, match="no shapes"):
        meter.compute()


# ---------------------------------------------------------------------------------------------
# shape part IoU


def test_shape_part_iou_part_absent_from_both_counts_one():
    # parts {0, 1, 2}; part 2 is in neither prediction nor truth
    # part 0: inter {0} / union {0, 1} = 1/2 ; part 1: inter {2, 3} / union {1, 2, 3} = 2/3
    # part 2: 1  -> mean (1/2 + 2/3 + 1) / 3 = 13/18
    iou = shape_part_iou(t([0, 1, 1, 1]), t([0, 0, 1, 1]), [0, 1, 2])
    assert iou == pytest.approx(13 / 18, abs=1e-12)


def test_shape_part_iou_part_predicted_but_absent_from_truth_counts_zero():
    # part 0: 2/3 ; part 1: predicted once, never true -> 0/1 = 0
    iou = shape_part_iou(t([0, 0, 1]), t([0, 0, 0]), [0, 1])
    assert iou == pytest.approx(1 / 3, abs=1e-12)


def test_shape_part_iou_prediction_from_another_category_is_wrong():
    # point 1 predicted as part 5 (another category's): it stays in part 0's union only
    # part 0: inter {0} / union {0, 1} = 1/2 ; part 1: {2, 3} / {2, 3} = 1 -> mean 3/4
    iou = shape_part_iou(t([0, 5, 1, 1]), t([0, 0, 1, 1]), [0, 1])
    assert iou == pytest.approx(0.75, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# segmentation meter

# two categories: 0 = "Mug" with parts {0, 1}, 1 = "Lamp" with parts {2, 3, 4}
PARTS = {0: [0, 1], 1: [2, 3, 4]}
NAMES = ["Mug", "Lamp"]
# shape A (Mug):  truth [0, 0, 1, 1], pred [0, 0, 1, 1] -> IoU 1
# shape B (Mug):  truth [0, 0, 0, 1], pred [0, 0, 1, 1] -> part 0: 2/3, part 1: 1/2 -> 7/12
# shape C (Lamp): truth [2, 2, 3],    pred [2, 3, 3]    -> part 2: 1/2, part 3: 1/2, part 4
#                 absent from both: 1 -> (1/2 + 1/2 + 1) / 3 = 2/3
# instance mIoU = (1 + 7/12 + 2/3) / 3 = 3/4
# class mIoU    = (Mug (1 + 7/12) / 2 = 19/24  +  Lamp 2/3) / 2 = 35/48
# point accuracy = (4 + 3 + 2) / 11 correct points = 9/11
A = ([0, 0, 1, 1], [0, 0, 1, 1])
B = ([0, 0, 1, 1], [0, 0, 0, 1])
C = ([2, 3, 3], [2, 2, 3])


def _pack(*shapes):
    pred = t([p for s in shapes for p in s[0]])
    target = t([p for s in shapes for p in s[1]])
    batch = t([i for i, s in enumerate(shapes) for _ in s[0]])
    return pred, target, batch


def _check_hand_example(out):
    assert out["instance_miou"] == pytest.approx(3 / 4, abs=1e-12)
    assert out["class_miou"] == pytest.approx(35 / 48, abs=1e-12)
    assert out["per_class"] == {"Mug": pytest.approx(19 / 24), "Lamp": pytest.approx(2 / 3)}
    assert list(out["per_class"]) == ["Mug", "Lamp"]
    assert out["point_accuracy"] == pytest.approx(9 / 11, abs=1e-12)


def test_segmentation_meter_instance_vs_class_miou_by_hand():
    meter = SegmentationMeter(PARTS, category_names=NAMES)
    pred, target, batch = _pack(A, C, B)  # shapes out of category order on purpose
    ious = meter.update(pred, target, batch, t([0, 1, 0]))
    assert ious.dtype == torch.float64 and ious.shape == (3,)
    torch.testing.assert_close(ious, torch.tensor([1.0, 2 / 3, 7 / 12], dtype=torch.float64))
    _check_hand_example(meter.compute())


def test_segmentation_meter_accumulates_across_batches_and_resets():
    meter = SegmentationMeter(PARTS, category_names=NAMES)
    meter.update(*_pack(A, B), t([0, 0]))
    # after the first batch only Mug is present
    first = meter.compute()
    assert first["per_class"] == {"Mug": pytest.approx(19 / 24)}
    assert first["class_miou"] == pytest.approx(19 / 24)
    meter.update(*_pack(C), t([1]))
    _check_hand_example(meter.compute())
    meter.reset()
    with pytest.raises(ValueError, match="no shapes"):
        meter.compute()


def test_segmentation_meter_merge_and_state():
    a = SegmentationMeter(PARTS, category_names=NAMES)
    b = SegmentationMeter(PARTS, category_names=NAMES)
    a.update(*_pack(A, C), t([0, 1]))
    b.update(*_pack(B), t([0]))
    state = b.state()
    assert state.dtype == torch.float64 and state.shape == (2 * 2 + 2,)
    # iou_sum, shape_count, correct points, total points
    torch.testing.assert_close(state, torch.tensor([7 / 12, 0, 1, 0, 3, 4], dtype=torch.float64))
    a.merge(state)
    _check_hand_example(a.compute())


def test_all_reduce_is_a_noop_without_distributed():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    seg = SegmentationMeter(PARTS, category_names=NAMES)
    seg.update(*_pack(A, C, B), t([0, 1, 0]))
    before = seg.state()
    seg.all_reduce()
    assert torch.equal(seg.state(), before)
    _check_hand_example(seg.compute())
    cls = ClassificationMeter(3)
    cls.update(t([0, 1, 2]), t([0, 2, 2]))
    confusion = cls.confusion.clone()
    cls.all_reduce()
    assert torch.equal(cls.confusion, confusion)


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from pcattn.metrics import ClassificationMeter, SegmentationMeter

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    t = lambda v: torch.tensor(v, dtype=torch.int64)
    seg = SegmentationMeter({0: [0, 1], 1: [2, 3, 4]}, category_names=["Mug", "Lamp"])
    cls = ClassificationMeter(3)
    if rank == 0:  # shapes A and C
        seg.update(t([0, 0, 1, 1, 2, 3, 3]), t([0, 0, 1, 1, 2, 2, 3]), t([0, 0, 0, 0, 1, 1, 1]),
                   t([0, 1]))
        cls.update(t([0, 1, 0, 1]), t([0, 0, 0, 1]))
    else:  # shape B
        seg.update(t([0, 0, 1, 1]), t([0, 0, 0, 1]), t([0, 0, 0, 0]), t([0]))
        cls.update(t([2, 2, 0, 2, 2]), t([1, 2, 2, 2, 2]))
    seg.all_reduce()
    cls.all_reduce()
    with open(out + str(rank), "w") as f:
        json.dump({"seg": seg.compute(), "cls": cls.compute(),
                   "confusion": cls.confusion.tolist()}, f)
    dist.destroy_process_group()
    """
)


def test_all_reduce_sums_over_two_gloo_processes(tmp_path: Path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    store, out = tmp_path / "store", tmp_path / "result"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(store), str(out)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=120)[0].decode() for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    for rank in range(2):  # every rank ends with the totals over both
        result = json.loads(Path(f"{out}{rank}").read_text())
        _check_hand_example(result["seg"])
        assert result["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
        assert result["cls"]["oa"] == pytest.approx(6 / 9)
        assert result["cls"]["macc"] == pytest.approx(23 / 36)


def _numpy_part_ious(pred, target, batch, category, parts_of):
    """Reference: the protocol written out shape by shape, part by part, in numpy."""
    ious = []
    for b, cat in enumerate(category):
        sel = batch == b
        p, y = pred[sel], target[sel]
        per_part = []
        for part in parts_of[cat]:
            union = np.sum((p == part) | (y == part))
            inter = np.sum((p == part) & (y == part))
            per_part.append(1.0 if union == 0 else inter / union)
        ious.append(np.mean(per_part))
    return np.array(ious)


def test_instance_and_class_miou_match_numpy_loop_on_random_shapes():
    rng = np.random.default_rng(3)
    parts_of = {0: [0, 1, 2, 3], 1: [4, 5], 2: [6, 7, 8], 3: [9, 10, 11, 12, 13]}
    P = 14
    meter = SegmentationMeter(parts_of)
    all_ious, all_cats = [], []
    correct = total = 0
    for _ in range(4):  # four batches of shapes
        B = int(rng.integers(1, 6))
        category = rng.integers(0, 4, size=B)
        sizes = rng.integers(1, 40, size=B)
        batch = np.repeat(np.arange(B), sizes)
        # truth uses only some of each category's parts, so some parts are absent
        target = np.concatenate(
            [
                rng.choice(parts_of[c][: 1 + int(rng.integers(len(parts_of[c])))], size=n)
                for c, n in zip(category, sizes, strict=True)
            ]
        )
        # predictions: mostly right, else any part at all (often another category's)
        noise = rng.integers(0, P, size=target.size)
        pred = np.where(rng.random(target.size) < 0.5, target, noise)
        ref = _numpy_part_ious(pred, target, batch, category, parts_of)
        got = meter.update(
            torch.from_numpy(pred),
            torch.from_numpy(target),
            torch.from_numpy(batch),
            torch.from_numpy(category),
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)
        for b in range(B):  # the single-shape function agrees too
            sel = batch == b
            single = shape_part_iou(
                torch.from_numpy(pred[sel]), torch.from_numpy(target[sel]), parts_of[category[b]]
            )
            assert single == pytest.approx(ref[b], abs=1e-12)
        all_ious.extend(ref)
        all_cats.extend(category)
        correct += int(np.sum(pred == target))
        total += target.size
    out = meter.compute()
    all_ious, all_cats = np.array(all_ious), np.array(all_cats)
    assert out["instance_miou"] == pytest.approx(all_ious.mean(), abs=1e-12)
    per_cat = {str(c): all_ious[all_cats == c].mean() for c in sorted(set(all_cats.tolist()))}
    assert out["per_class"] == pytest.approx(per_cat, abs=1e-12)
    assert out["class_miou"] == pytest.approx(np.mean(list(per_cat.values())), abs=1e-12)
    assert out["point_accuracy"] == pytest.approx(correct / total, abs=1e-12)


def test_batch_part_iou_of_hand_example():
    pred, target, batch = _pack(A, B, C)
    mask = SegmentationMeter(PARTS).part_mask
    assert torch.equal(mask, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool))
    ious = batch_part_iou(pred, target, batch, t([0, 0, 1]), mask)
    torch.testing.assert_close(ious, torch.tensor([1.0, 7 / 12, 2 / 3], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# constrain_to_category


def test_constrain_to_category_picks_only_valid_parts():
    mask = SegmentationMeter(PARTS).part_mask  # Mug {0, 1}, Lamp {2, 3, 4}
    # shape 0 is a Lamp (points 0, 1), shape 1 a Mug (point 2)
    batch, category = t([0, 0, 1]), t([1, 0])
    logits = torch.tensor(
        [
            [9.0, 0.0, 1.0, 2.0, 0.5],  # unconstrained argmax 0 (a Mug part) -> Lamp's best: 3
            [0.0, 8.0, 0.1, 0.0, 0.3],  # unconstrained 1 -> Lamp's best: 4
            [0.0, 0.2, 5.0, 7.0, 9.0],  # unconstrained 4 -> Mug's best: 1
        ]
    )
    original = logits.clone()
    out = constrain_to_category(logits, batch, category, mask)
    assert torch.equal(out.argmax(dim=1), t([3, 4, 1]))
    inf = float("-inf")
    expected = torch.tensor(
        [
            [inf, inf, 1.0, 2.0, 0.5],
            [inf, inf, 0.1, 0.0, 0.3],
            [0.0, 0.2, inf, inf, inf],
        ]
    )
    assert torch.equal(out, expected)
    assert torch.equal(logits, original)  # not modified in place
    with pytest.raises(ValueError, match="part_mask has 5 parts but logits has 4 columns"):
        constrain_to_category(logits[:, :4], batch, category, mask)
    with pytest.raises(ValueError, match="batch has 2 entries but there are 3 points"):
        constrain_to_category(logits, batch[:2], category, mask)


def test_constrained_argmax_never_leaves_the_category_on_random_logits():
    g = torch.Generator().manual_seed(1)
    mask = SegmentationMeter({0: [0, 1, 2, 3], 1: [4, 5], 2: [6, 7, 8]}).part_mask
    category = torch.randint(0, 3, (6,), generator=g)
    batch = torch.sort(torch.randint(0, 6, (200,), generator=g)).values
    batch[:6] = torch.arange(6)  # every shape has a point
    batch = torch.sort(batch).values
    logits = torch.randn(200, 9, generator=g)
    pred = constrain_to_category(logits, batch, category, mask).argmax(dim=1)  # (N,)
    assert bool(mask[category[batch], pred].all())
    # and it is the best of the allowed logits
    for i in range(200):
        allowed = torch.nonzero(mask[category[batch[i]]]).flatten()
        assert int(pred[i]) == int(allowed[logits[i, allowed].argmax()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meters_accept_cuda_inputs_and_keep_cpu_state():
    meter = SegmentationMeter(PARTS, category_names=NAMES)
    pred, target, batch = _pack(A, C, B)
    meter.update(pred.cuda(), target.cuda(), batch.cuda(), t([0, 1, 0]).cuda())
    assert meter.iou_sum.device.type == "cpu"
    _check_hand_example(meter.compute())
    cls = ClassificationMeter(3)
    cls.update(t([0, 1]).cuda(), t([0, 0]).cuda())
    assert cls.compute()["oa"] == pytest.approx(0.5)
    logits = torch.randn(pred.numel(), 5, device="cuda")
    out = constrain_to_category(logits, batch.cuda(), t([0, 1, 0]).cuda(), meter.part_mask)
    assert out.device.type == "cuda" and math.isinf(float(out[0, 2]))
