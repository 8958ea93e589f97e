"""Cameras through GStreamer: V4L2 USB cameras, Jetson CSI cameras, RTSP, any pipeline.

Frames leave the pipeline at an appsink as RGB; the sink keeps one buffer and drops older
ones, so a slow reader always gets the newest frame. Debian's python3-gi provides the
bindings (the venv sees system packages).
"""

from __future__ import annotations

import numpy as np

from edged.capture.sources import SourceEnded, SourceError

SINK = "appsink name=edged max-buffers=1 drop=true sync=false emit-signals=false"
TO_RGB = "videoconvert ! video/x-raw,format=RGB"


def pipeline_for(source: str, width: int | None, height: int | None) -> str:
    """The GStreamer pipeline for a camera's ``source`` string."""
    size = f",width={width},height={height}" if width and height else ""
    if source.startswith("v4l2:"):
        return f"v4l2src device={source[5:]} ! videoconvert ! videoscale ! video/x-raw,format=RGB{size} ! {SINK}"
    if source.startswith("csi:"):
        # Jetson: the ISP delivers NVMM buffers; nvvidconv copies them to system memory.
        return (f"nvarguscamerasrc sensor-id={source[4:]} ! video/x-raw(memory:NVMM){size} ! nvvidconv ! "
                f"video/x-raw,format=BGRx ! {TO_RGB} ! {SINK}")
    if source.startswith(("rtsp://", "rtsps://")):
        return f"rtspsrc location={source} latency=200 ! decodebin ! {TO_RGB} ! {SINK}"
    if source.startswith("gst:"):
        pipeline = source[4:].strip()
        return pipeline if "appsink" in pipeline else f"{pipeline} ! {TO_RGB} ! {SINK}"
    raise SourceError(f"unknown source {source!r}")


class GStreamerSource:
    def __init__(self, pipeline: str, label: str) -> None:
        self.pipeline_text, self.label = pipeline, label
        self._pipeline = None
        self._sink = None

    def open(self) -> None:
        Gst = _gst()
        try:
            self._pipeline = Gst.parse_launch(self.pipeline_text)
        except Exception as error:  # GLib.Error: a pipeline that does not parse
            raise SourceError(f"{self.label}: bad pipeline: {error}") from None
        self._sink = self._pipeline.get_by_name("edged") or _first_appsink(self._pipeline)
        if self._sink is None:
            raise SourceError(f"{self.label}: the pipeline has no appsink")
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self._raise_bus_error(f"{self.label}: cannot start")

    def read(self, timeout: float) -> np.ndarray | None:
        Gst = _gst()
        sample = self._sink.try_pull_sample(int(timeout * Gst.SECOND))  # type: ignore[union-attr]
        if sample is None:
            if self._sink.is_eos():  # type: ignore[union-attr]
                raise SourceEnded(self.label)
            self._raise_bus_error(None)
            return None
        caps = sample.get_caps().get_structure(0)
        width, height = caps.get_value("width"), caps.get_value("height")
        buffer = sample.get_buffer()
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.label}: cannot map a buffer")
        try:
            stride = len(mapped.data) // height  # rows may be padded to 4 bytes
            rows = np.frombuffer(mapped.data, dtype=np.uint8).reshape(height, stride)
            return rows[:, : width * 3].reshape(height, width, 3).copy()
        finally:
            buffer.unmap(mapped)

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.set_state(_gst().State.NULL)
            self._pipeline = None

    def _raise_bus_error(self, fallback: str | None) -> None:
        Gst = _gst()
        message = self._pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR) if self._pipeline else None  # type: ignore[union-attr]
        if message is not None:
            error, _debug = message.parse_error()
            raise SourceError(f"{self.label}: {error.message}")
        if fallback:
            raise SourceError(fallback)


def _first_appsink(pipeline):
    iterator = pipeline.iterate_sinks()
    while True:
        result, element = iterator.next()
        if result.value_nick != "ok":
            return None
        if element.get_factory().get_name() == "appsink":
            return element


_GST = None


def _gst():
    global _GST
    if _GST is None:
        try:
            import gi

            gi.require_version("Gst", "1.0")
            gi.require_version("GstApp", "1.0")  # gives appsink its try_pull_sample
            from gi.repository import Gst, GstApp  # noqa: F401
        except (ImportError, ValueError) as error:
            raise SourceError(
                f"GStreamer is not available ({error}): apt install python3-gi gir1.2-gstreamer-1.0 "
                "gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good, and use "
                "a venv made with --system-site-packages"
            ) from None
        Gst.init(None)
        _GST = Gst
    return _GST
