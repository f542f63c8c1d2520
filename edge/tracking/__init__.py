"""Plates across frames: association (edge.tracking.tracker) and what a track adds up to
(edge.tracking.vote)."""

from edge.tracking.tracker import Box, Observation, Pass, Track, Tracker, default_distance, iou
from edge.tracking.vote import Candidate, direction, edit_distance, length_share, text_similarity, vote

__all__ = ["Box", "Candidate", "Observation", "Pass", "Track", "Tracker", "default_distance", "direction", "edit_distance", "iou",
           "length_share", "text_similarity", "vote"]
