import numpy as np
import pytest

from edge.vision.detector import decode_heads
from edge.vision.geometry import expand_box, iou_matrix, letterbox, letterbox_params, nms, order_corners, warp_quad


def test_letterbox_params_wide_frame():
    lb = letterbox_params(1280, 720, 512, 32)
    assert lb.scale == pytest.approx(0.4)
    assert (lb.new_w, lb.new_h) == (512, 288)
    assert (lb.pad_w, lb.pad_h) == (512, 288)


def test_letterbox_pads_to_multiple_and_maps_back():
    img = np.full((480, 640, 3), 200, np.uint8)
    out, lb = letterbox(img, 500, 32)
    assert out.shape == (384, 512, 3)  # 640x480 -> 500x375, padded to 512x384
    assert (lb.new_w, lb.new_h) == (500, 375)
    assert out[:375, :500].min() == 200 and out[375:].max() == 0 and out[:, 500:].max() == 0
    back = lb.to_source(np.array([[0, 0, 250, 187.5]]))
    np.testing.assert_allclose(back, [[0, 0, 320, 240]], atol=1e-3)


def test_letterbox_to_source_clips():
    lb = letterbox_params(100, 50, 200, 32)
    np.testing.assert_allclose(lb.to_source(np.array([[-10, -10, 400, 400]])), [[0, 0, 100, 50]])


def test_letterbox_rejects_empty():
    with pytest.raises(ValueError):
        letterbox_params(0, 10, 100)


def test_iou_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0])


def test_nms_keeps_best_of_overlaps_and_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.3])
    keep = nms(boxes, scores, 0.4)
    assert keep.tolist() == [1, 2]


def test_nms_cover_drops_a_shifted_box_on_the_same_plate_only_when_asked():
    # a plate and a box shifted half a plate up (IoU 0.27, but over half of it inside the plate's box)
    plate = [162, 590, 329, 642]
    shifted = [147, 552, 342, 617]
    other = [600, 590, 760, 640]  # a plate beside it
    boxes = np.array([plate, shifted, other], np.float32)
    scores = np.array([0.44, 0.31, 0.5])
    assert iou_matrix(boxes[:1], boxes[1:2])[0, 0] < 0.3
    assert sorted(nms(boxes, scores, 0.3).tolist()) == [0, 1, 2]
    assert sorted(nms(boxes, scores, 0.3, cover_threshold=0.4).tolist()) == [0, 2]
    # the kept one is whichever scored higher
    assert sorted(nms(boxes, np.array([0.3, 0.6, 0.5]), 0.3, cover_threshold=0.4).tolist()) == [1, 2]
    # boxes that only touch are both kept
    touching = np.array([[0, 0, 100, 30], [0, 29, 100, 60]], np.float32)
    assert sorted(nms(touching, np.array([0.9, 0.8]), 0.3, cover_threshold=0.4).tolist()) == [0, 1]


def test_nms_empty():
    assert nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def test_expand_box_clips_to_image():
    assert expand_box((10, 10, 110, 40), 100, 100, 0.1, 0.5) == (0, 0, 100, 55)


def test_order_corners_and_warp():
    pts = np.array([[90, 10], [10, 12], [12, 50], [92, 48]], np.float32)
    o = order_corners(pts)
    np.testing.assert_allclose(o, [[10, 12], [90, 10], [92, 48], [12, 50]])
    img = np.zeros((60, 100, 3), np.uint8)
    img[10:50, 10:92] = 255
    out = warp_quad(img, pts, 80, 40)
    assert out.shape == (40, 80, 3) and out[5:35, 5:75].mean() > 240


def test_decode_heads_single_peak():
    heads = np.zeros((5, 20, 30), np.float32)
    heads[0, 10, 15] = 0.9
    heads[0, 10, 16] = 0.5  # neighbour, not a local maximum
    heads[1, 10, 15] = np.log(40 / 4)  # width 40 px
    heads[2, 10, 15] = np.log(10 / 4)  # height 10 px
    heads[3, 10, 15] = 0.5
    heads[4, 10, 15] = 0.25
    lb = letterbox_params(240, 160, 120, 8)  # scale 0.5
    rows = decode_heads(heads, 4, 0.3, lb)
    assert rows.shape == (1, 5)
    cx, cy = (15.5 * 4) / 0.5, (10.25 * 4) / 0.5
    np.testing.assert_allclose(rows[0, :4], [cx - 40, cy - 10, cx + 40, cy + 10], atol=1e-3)
    assert rows[0, 4] == pytest.approx(0.9)


def test_decode_heads_below_threshold_is_empty():
    heads = np.zeros((5, 8, 8), np.float32)
    heads[0, 3, 3] = 0.2
    assert decode_heads(heads, 4, 0.3, letterbox_params(32, 32, 32, 32)).shape == (0, 5)
