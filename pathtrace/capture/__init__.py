"""Capture input: stream pcap/pcapng files into link-layer-parsed Frames."""
from pathtrace.capture.frame import Frame
from pathtrace.capture.reader import FrameReader, count_frames, read_frames

__all__ = ["Frame", "FrameReader", "count_frames", "read_frames"]
