"""A real RTSP server on loopback streaming H.264, as an IP camera would: GstRtspServer from
Debian's gir1.2-gst-rtsp-server-1.0, x264enc from gstreamer1.0-plugins-ugly.

Run as ``python rtsp_server.py PORT``; it serves rtsp://127.0.0.1:PORT/camera until killed,
and prints "serving" once it listens.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 "
                       "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/camera", factory)
    server.attach(None)
    print("serving", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
