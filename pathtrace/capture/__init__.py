"""Capture input: stream pcap/pcapng files into link-layer-parsed Frames."""
from pathtrace.capture.frame import Frame
from pathtrace.capture.reader import FrameReader, count_frames, read_frames
from pathtrace.capture.reorder import OrderedFrames, time_ordered

__all__ = ["Frame", "FrameReader", "OrderedFrames", "count_frames", "read_frames", "time_ordered"]
