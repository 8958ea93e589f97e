"""Cameras through GStreamer: V4L2 USB cameras, Jetson CSI cameras, RTSP, any pipeline.

Frames leave the pipeline at an appsink as RGB; the sink keeps one buffer and drops older
ones, so a slow reader always gets the newest frame. Debian's python3-gi provides the
bindings (the venv sees system packages).
"""

from __future__ import annotations

import numpy as np

from edged.capture.sources.base import SourceEnded, SourceError
from edged.capture.sources.grammar import parse_source

SINK = "appsink name=edged max-buffers=1 drop=true sync=false emit-signals=false"
H264_PACKAGES = ("gstreamer1.0-plugins-bad", "gstreamer1.0-libav")
PACKAGE_OF_ELEMENT = {
    "h264parse": "gstreamer1.0-plugins-bad", "h265parse": "gstreamer1.0-plugins-bad",
    "avdec_h264": "gstreamer1.0-libav", "avdec_h265": "gstreamer1.0-libav", "x264enc": "gstreamer1.0-plugins-ugly",
    "rtspsrc": "gstreamer1.0-plugins-good", "rtph264depay": "gstreamer1.0-plugins-good",
    "v4l2src": "gstreamer1.0-plugins-good", "jpegdec": "gstreamer1.0-plugins-good",
    "nvarguscamerasrc": "nvidia-l4t-gstreamer", "nvvidconv": "nvidia-l4t-gstreamer",
}
"""Debian's package for the elements edged's pipelines use, for an error that names one missing."""
TO_RGB = "videoconvert ! video/x-raw,format=RGB"


def pipeline_for(source: str, width: int | None, height: int | None) -> str:
    """The GStreamer pipeline for a camera's ``source`` string of a GStreamer kind."""
    kind, argument = parse_source(source)
    size = f",width={width},height={height}" if width and height else ""
    if kind == "v4l2":
        return f"v4l2src device={argument} ! videoconvert ! videoscale ! video/x-raw,format=RGB{size} ! {SINK}"
    if kind == "csi":
        # Jetson: the ISP delivers NVMM buffers; nvvidconv copies them to system memory.
        return (f"nvarguscamerasrc sensor-id={argument} ! video/x-raw(memory:NVMM){size} ! nvvidconv ! "
                f"video/x-raw,format=BGRx ! {TO_RGB} ! {SINK}")
    if kind == "rtsp":
        return f"rtspsrc location={argument} latency=200 ! decodebin ! {TO_RGB} ! {SINK}"
    if kind == "gst":
        pipeline = argument.strip()
        return pipeline if "appsink" in pipeline else f"{pipeline} ! {TO_RGB} ! {SINK}"
    raise SourceError(f"{source!r} is not a GStreamer source")


class GStreamerSource:
    def __init__(self, pipeline: str, label: str, live: bool = False) -> None:
        """``live``: a camera (V4L2, CSI, RTSP), whose end of stream means it went away and is
        reopened; otherwise (a ``gst:`` pipeline) the end of stream ends the source, as a file's."""
        self.pipeline_text, self.label, self.live = pipeline, label, live
        self._pipeline = None
        self._sink = None

    def open(self) -> None:
        Gst = _gst()  # first: without GStreamer's bindings it says what to install
        from gi.repository import GLib

        try:
            self._pipeline = Gst.parse_launch(self.pipeline_text)
        except GLib.Error as error:  # a pipeline that does not parse, or names an element not installed
            raise SourceError(f"{self.label}: bad pipeline: {error}{_install_hint(str(error))}") from None
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
                if self.live:
                    raise SourceError(f"{self.label}: the stream ended (the camera closed it or went away)")
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
        """Raise SourceError with the pipeline's error, naming any plug-in it found missing."""
        from gi.repository import GstPbutils

        Gst = _gst()
        missing = []
        bus = self._pipeline.get_bus() if self._pipeline else None  # type: ignore[union-attr]
        while bus is not None and (message := bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.ELEMENT)):
            if message.type == Gst.MessageType.ELEMENT:
                if GstPbutils.is_missing_plugin_message(message):
                    missing.append(GstPbutils.missing_plugin_message_get_description(message))
                continue
            error, _debug = message.parse_error()
            needs = f"; missing: {', '.join(missing)}{_install_hint(' '.join(missing))}" if missing else ""
            raise SourceError(f"{self.label}: {error.message}{needs}")
        if fallback:
            raise SourceError(fallback)


def _install_hint(text: str) -> str:
    """Where to get what ``text`` says is missing, on Debian (Raspberry Pi OS, JetPack)."""
    packages = sorted({package for element, package in PACKAGE_OF_ELEMENT.items() if f'"{element}"' in text})
    if "H.264" in text or "H.265" in text:
        packages = sorted({*packages, *H264_PACKAGES})
    return f" (apt install {' '.join(packages)})" if packages else ""


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
            gi.require_version("GstPbutils", "1.0")  # names a plug-in that is missing
            from gi.repository import Gst, GstApp, GstPbutils  # noqa: F401
        except (ImportError, ValueError) as error:
            raise SourceError(
                f"GStreamer is not available ({error}): apt install python3-gi gir1.2-gstreamer-1.0 "
                "gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good, and use "
                "a venv made with --system-site-packages"
            ) from None
        Gst.init(None)
        GstPbutils.pb_utils_init()
        _GST = Gst
    return _GST
