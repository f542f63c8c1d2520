"""Frame sources: video files (replay), OpenCV devices and URLs, the Pi camera (picamera2)."""

from edge.capture.base import CaptureError, Frame, FrameSource
from edge.capture.sources import OpenCVSource, PiCameraSource, VideoFileSource, open_source

__all__ = ["CaptureError", "Frame", "FrameSource", "OpenCVSource", "PiCameraSource", "VideoFileSource", "open_source"]
