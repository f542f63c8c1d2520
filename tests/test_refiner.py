"""The box refiner: geometry, the committed model on project-rendered scenes, bad models."""

import cv2
import numpy as np
import pytest

from edge.vision.refiner import BoxRefiner, apply_shifts, context_crop, context_matrix
from edge.vision.session import ModelError

from .conftest import DATA, MODELS

REFINER = MODELS / "plate_refiner.onnx"


def test_apply_shifts_moves_edges_in_box_units_within_the_limit():
    boxes = np.array([[100, 50, 200, 70]], np.float32)  # 100 x 20
    out = apply_shifts(boxes, np.array([[0.1, -0.5, -0.2, 0.25]]), limit=0.5)
    assert out.tolist() == [[110, 40, 180, 75]]
    out = apply_shifts(boxes, np.array([[-2.0, 0, 0, 0]]), limit=0.5)  # clipped to half a width
    assert out[0, 0] == 50
    inside_out = apply_shifts(boxes, np.array([[0.5, 0, -0.5, 0]]), limit=0.5)  # would leave no width: unchanged
    assert inside_out.tolist() == boxes.tolist()


def test_context_crop_puts_the_box_where_the_network_expects_it():
    img = np.zeros((200, 400, 3), np.uint8)
    img[80:100, 150:250] = 255  # the "plate": 100 x 20 at (150, 80)
    crop = context_crop(img, (150, 80, 250, 100), 0.25, 0.5, 192, 64)
    cols = np.where(crop[:, :, 0].max(0) > 128)[0]
    rows = np.where(crop[:, :, 0].max(1) > 128)[0]
    # grown by a quarter of the width each side (1.5 widths -> 192 px) and half the height (2 heights -> 64 px)
    assert abs(cols[0] - 32) <= 1 and abs(cols[-1] - 159) <= 1
    assert abs(rows[0] - 16) <= 1 and abs(rows[-1] - 47) <= 1
    m = context_matrix((150, 80, 250, 100), 0.25, 0.5, 192, 64)
    assert m @ np.array([150, 80, 1.0]) == pytest.approx([32, 16])


def test_committed_refiner_moves_rough_boxes_onto_rendered_plates():
    from edge.evaluate import load_truth
    from edge.tracking import iou

    ref = BoxRefiner(REFINER)
    assert ref.model.meta["kind"] == "plate-refiner" and "training_commit" in ref.model.meta
    before, after = [], []
    for t in load_truth(DATA / "scenes"):
        img = cv2.imread(str(t.image))
        x1, y1, x2, y2 = t.box
        w, h = x2 - x1, y2 - y1
        rough = np.array([[x1 - 0.15 * w, y1 - 0.3 * h, x2 + 0.15 * w, y2 + 0.3 * h],  # loose
                          [x1 + 0.08 * w, y1 - 0.1 * h, x2 + 0.05 * w, y2 + 0.1 * h]], np.float32)  # cut into the left end
        new = ref.refine(img, rough)
        before += [iou(b, t.box) for b in rough]
        after += [iou(b, t.box) for b in new]
    print(f"rendered scenes: IoU with the plate {np.mean(before):.3f} -> {np.mean(after):.3f}")
    assert np.mean(after) >= np.mean(before) + 0.1


def test_refiner_wrong_kind_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not a plate-refiner"):
        BoxRefiner(MODELS / "plate_reader.onnx")
    with pytest.raises(ModelError, match="not found"):
        BoxRefiner(tmp_path / "nope.onnx")


def test_the_stage_reads_without_a_refiner_when_off_or_absent(tmp_path):
    from edge.config import PipelineSection
    from edge.runtime.assembly import build_stage

    from .conftest import make_stage

    assert make_stage().refiner is not None
    assert make_stage(refine=False).refiner is None
    for f in ("plate_detector.onnx", "plate_reader.onnx"):
        (tmp_path / f).symlink_to(MODELS / f)
    rec = build_stage(PipelineSection(model_dir=tmp_path))
    boxes = np.array([[10, 10, 50, 20]], np.float32)
    assert rec.refiner is None and rec.refine(np.zeros((40, 80, 3), np.uint8), boxes) is boxes
