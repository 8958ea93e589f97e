"""Capture: real GStreamer, real video files, the synthetic camera, picamera2 through a
stand-in with its API, gating, masks, the one-slot mailbox and reconnection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, NotifySocket, edged, wait_until

from edged.bus.schema import CameraStatus
from edged.client import Client

from edged.capture.camera import CameraCapture
from edged.settings import CameraConfig
from edged.capture.frame import Frame
from edged.capture.sampler import FrameMailbox, FramePipeline, fit_to_budget
from edged.capture.sources import SourceEnded, SourceError, open_source, redact
from edged.capture.sources.file import FileSource
from edged.capture.sources.gstreamer import GStreamerSource, pipeline_for
from edged.capture.sources.picamera import Picamera2Source
from edged.capture.sources.synthetic import SyntheticSource, object_visible, synthetic_frame


def read_all(source, limit: int = 1000) -> list[np.ndarray]:
    frames = []
    source.open()
    try:
        while len(frames) < limit:
            frame = source.read(timeout=5)
            if frame is not None:
                frames.append(frame)
    except SourceEnded:
        pass
    finally:
        source.close()
    return frames


# -- sources ------------------------------------------------------------------------------


def test_gstreamer_videotestsrc_through_the_real_appsink() -> None:
    # 322 pixels wide: RGB rows of 966 bytes are padded to 968, which the reader must undo.
    pipeline = pipeline_for("gst:videotestsrc is-live=true num-buffers=12 pattern=smpte ! "
                            "video/x-raw,width=322,height=240,framerate=30/1", None, None)
    frames = read_all(GStreamerSource(pipeline, "test"))
    assert len(frames) == 12
    assert all(f.shape == (240, 322, 3) and f.dtype == np.uint8 for f in frames)
    top_left = frames[0][10, 10]
    assert top_left[0] > 150 and top_left[1] > 150  # SMPTE bars start with light grey/white


def test_gstreamer_reports_a_bad_pipeline_as_a_source_error() -> None:
    with pytest.raises(SourceError, match="bad pipeline|no element"):
        GStreamerSource(pipeline_for("gst:nosuchelement", None, None), "bad").open()


def test_source_strings_become_the_right_pipelines() -> None:
    assert pipeline_for("v4l2:/dev/video2", 640, 480).startswith("v4l2src device=/dev/video2 ")
    assert "width=640,height=480" in pipeline_for("v4l2:/dev/video2", 640, 480)
    assert pipeline_for("csi:1", None, None).startswith("nvarguscamerasrc sensor-id=1 ")
    assert pipeline_for("rtsp://cam.local/s", None, None).startswith("rtspsrc location=rtsp://cam.local/s ")
    assert redact("rtsp://admin:hunter2@192.0.2.7/stream") == "rtsp://***@192.0.2.7/stream"


def test_a_real_video_file_is_read_back_at_its_size(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    written = [synthetic_frame(i, 320, 240) for i in range(20)]
    for frame in written:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    frames = read_all(FileSource(str(path), realtime=False, loop=False))
    assert len(frames) == 20
    assert frames[5].shape == (240, 320, 3)
    assert np.abs(frames[5].astype(int) - written[5]).mean() < 8  # MJPEG is lossy, and RGB stays RGB


def test_a_folder_of_images_loops_unless_told_not_to(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), cv2.cvtColor(synthetic_frame(i, 64, 48), cv2.COLOR_RGB2BGR))
    assert len(read_all(FileSource(str(tmp_path), realtime=False, loop=False))) == 3
    looping = read_all(FileSource(str(tmp_path), realtime=False, loop=True), limit=7)
    np.testing.assert_array_equal(looping[3], looping[0])


def test_the_synthetic_camera_is_deterministic_and_shows_a_scheduled_object() -> None:
    first = read_all(SyntheticSource(160, 120, realtime=False), limit=40)
    again = read_all(SyntheticSource(160, 120, realtime=False), limit=40)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], first[2])  # the counter and the pattern move
    red = lambda f: int(((f[..., 0] > 200) & (f[..., 1] < 40)).sum())  # noqa: E731
    assert object_visible(35) and not object_visible(10)
    assert red(first[35]) > 100 and red(first[10]) == 0


class FakePicamera2:
    """Stand-in with picamera2's API: configure, start, capture_array, stop, close."""

    formats: list[str] = []

    def __init__(self, camera: int = 0) -> None:
        self.started = False

    def create_video_configuration(self, main: dict, lores: dict | None = None) -> dict:
        return {"main": main, "lores": lores}

    def configure(self, config: dict) -> None:
        self.config = config
        FakePicamera2.formats.append(config["main"]["format"])

    def start(self) -> None:
        self.started = True

    def capture_arrays(self, names: list[str]) -> tuple[list[np.ndarray], dict]:
        assert names == ["main", "lores"] and self.config["lores"]["format"] == "YUV420"
        width, height = self.config["lores"]["size"]
        lores = np.full((height * 3 // 2, width), self.lores_level, np.uint8)
        return [self.capture_array("main"), lores], {}

    lores_level = 100

    def capture_array(self, stream: str = "main") -> np.ndarray:
        assert self.started and stream == "main"
        width, height = self.config["main"]["size"]
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[..., 0] = 200  # a red scene
        rgb[..., 1] = 30
        rgb[..., 2] = 40
        fmt = self.config["main"]["format"]
        if fmt == "RGB888":
            return rgb[..., ::-1].copy()  # picamera2's RGB888 is B, G, R in memory
        if fmt == "XRGB8888":
            return np.dstack([rgb[..., ::-1], np.full((height, width), 255, np.uint8)])
        raise AssertionError(fmt)

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        pass


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module


@pytest.mark.parametrize("pixel_format", ["RGB888", "XRGB8888"])
def test_picamera2_frames_come_out_rgb_whatever_the_sensor_format(fake_picamera2, pixel_format: str) -> None:
    source = Picamera2Source(64, 48, pixel_format=pixel_format)
    source.open()
    frame = source.read(timeout=1)
    source.close()
    assert frame.shape == (48, 64, 3)
    assert tuple(frame[0, 0]) == (200, 30, 40)


def test_picamera2_yuv_frames_are_converted(fake_picamera2, monkeypatch: pytest.MonkeyPatch) -> None:
    source = Picamera2Source(64, 48, pixel_format="YUV420")
    monkeypatch.setattr(FakePicamera2, "capture_array", lambda self, stream="main": cv2.cvtColor(
        np.full((48, 64, 3), (200, 30, 40), np.uint8), cv2.COLOR_RGB2YUV_I420))
    source.open()
    frame = source.read(timeout=1)
    assert np.abs(frame[10, 10].astype(int) - (200, 30, 40)).max() < 12


def test_a_missing_picamera2_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        open_source("picamera2").open()


# -- sampling -----------------------------------------------------------------------------


def still(value: int = 90) -> np.ndarray:
    return np.full((120, 160, 3), value, np.uint8)


def test_a_static_scene_passes_no_frames_after_the_first_and_a_change_passes_one() -> None:
    pipeline = FramePipeline(CameraConfig(source="synthetic", fps=1000, gate_threshold=0.02))
    passed = [pipeline.process(still(), now=i) is not None for i in range(10)]
    assert passed == [True] + [False] * 9
    changed = still()
    changed[20:100, 40:120] = 250
    assert pipeline.process(changed, now=11) is not None
    assert pipeline.process(changed, now=12) is None


def test_masks_black_out_the_frame_before_the_gate_sees_it() -> None:
    config = CameraConfig(source="synthetic", fps=1000, masks=[[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]])
    pipeline = FramePipeline(config)
    first = pipeline.process(still(), now=0)
    assert first is not None and first[:, :80].max() == 0 and first[:, 82:].min() == 90  # edge pixels are masked
    moving_in_mask = still()
    moving_in_mask[:, :70] = 255  # everything that changed is inside the mask
    assert pipeline.process(moving_in_mask, now=1) is None


def test_the_fps_cap_and_the_image_budget() -> None:
    pipeline = FramePipeline(CameraConfig(source="synthetic", fps=2, gate_threshold=0))
    assert [pipeline.process(still(i), now=i * 0.1) is not None for i in range(10)] == [True] + [False] * 4 + [True] + [False] * 4
    small = fit_to_budget(np.zeros((1080, 1920, 3), np.uint8), 448 * 448)
    assert small.shape[0] * small.shape[1] <= 448 * 448 and abs(small.shape[1] / small.shape[0] - 16 / 9) < 0.02
    assert fit_to_budget(still(), 10**6).shape == still().shape


def test_the_mailbox_holds_one_frame_and_counts_what_it_drops_once_the_model_takes_frames() -> None:
    mailbox = FrameMailbox()
    for seq in range(3):  # the camera runs while the model loads: nothing reads these
        mailbox.put(Frame(still(), "front", seq, float(seq), float(seq)))
        assert len(mailbox) == 1
    assert mailbox.take(0).seq == 2 and mailbox.drops == 0
    for seq in range(3, 8):
        mailbox.put(Frame(still(), "front", seq, float(seq), float(seq)))
        assert len(mailbox) == 1
    assert mailbox.take(0).seq == 7
    assert mailbox.drops == 4 and mailbox.take(0.01) is None


def test_masks_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        CameraConfig(source="synthetic", masks=[[(0, 0), (1, 1)]])
    with pytest.raises(ValueError, match="fractions"):
        CameraConfig(source="synthetic", masks=[[(0, 0), (2, 0), (0, 1)]])


# -- the capture thread -------------------------------------------------------------------


def wait_for(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_source_that_fails_mid_stream_reconnects_and_status_says_so() -> None:
    source = SyntheticSource(64, 48, fps=50)
    source.fail_at = 10
    camera = CameraCapture("front", CameraConfig(source="synthetic", fps=1000, gate_threshold=0), source=source)
    states = []
    camera.start()
    try:
        assert wait_for(lambda: states.append(camera.status().state) or camera.reconnects == 1)
        assert wait_for(lambda: states.append(camera.status().state) or (camera.status().state == "online" and camera.frames_read > 12))
        assert "reconnecting" in states and states[-1] == "online"
        assert camera.status().last_error is None
        assert len(camera.mailbox) <= 1
    finally:
        camera.stop()


def test_a_file_that_ends_says_ended(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), still())
    camera = CameraCapture("clip", CameraConfig(source=f"file:{tmp_path}", loop=False, realtime=False))
    camera.start()
    try:
        assert wait_for(lambda: camera.status().state == "ended")
        assert camera.frames_read == 1
    finally:
        camera.stop()


def test_capture_test_command_reports_in_json() -> None:
    result = edged("capture", "test", "synthetic", "--frames", "15", "--json", "--fps", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"frames", "width", "height", "fps", "drops", "passed_gate"} <= set(report)
    assert report["frames"] >= 15 and (report["width"], report["height"]) == (640, 480)
    assert 1 <= report["passed_gate"] < report["frames"]


def test_picamera2_nv12_frames_are_converted(fake_picamera2, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = np.full((48, 64, 3), (30, 160, 220), np.uint8)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    y, u, v = i420[:48], i420[48:60].reshape(-1), i420[60:72].reshape(-1)
    nv12 = np.vstack([y, np.column_stack([u, v]).reshape(24, 64)])  # NV12: Y, then U and V interleaved
    monkeypatch.setattr(FakePicamera2, "capture_array", lambda self, stream="main": nv12)
    source = Picamera2Source(64, 48, pixel_format="NV12")
    source.open()
    frame = source.read(timeout=1)
    assert np.abs(frame[20, 20].astype(int) - (30, 160, 220)).max() < 12


def test_masked_frames_hash_the_same_whatever_happens_under_the_mask() -> None:
    config = CameraConfig(source="synthetic", fps=1000, gate_threshold=0, masks=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]])
    pipeline = FramePipeline(config)
    busy = still()
    busy[:, :60] = 255
    a = Frame(pipeline.process(still(), now=0), "c", 0, 0.0, 0.0)
    b = Frame(pipeline.process(busy, now=1), "c", 1, 1.0, 1.0)
    assert a.hash == b.hash


def test_picamera2_gates_on_its_low_resolution_stream(fake_picamera2, monkeypatch: pytest.MonkeyPatch) -> None:
    source = Picamera2Source(64, 48, pixel_format="RGB888")
    camera = CameraCapture("pi", CameraConfig(source="picamera2", fps=1000), source=source)
    source.open()
    passed = []
    for level in (100, 100, 100, 200, 200):  # the main stream never changes; lores does
        monkeypatch.setattr(FakePicamera2, "lores_level", level)
        rgb = source.read(timeout=1)
        passed.append(camera.pipeline.process(rgb, now=len(passed), grey=source.gate_luma) is not None)
    source.close()
    assert passed == [True, False, False, True, False]


# -- cameras tell the truth: RTSP, stalls, missing plug-ins ------------------------------------


class RtspCamera:
    """tests/rtsp_server.py as a subprocess: an H.264 IP camera on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/camera"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests/rtsp_server.py"), str(self.port)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "serving"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def rtsp_camera() -> Iterator[RtspCamera]:
    from test_bus import free_ports

    camera = RtspCamera(free_ports(1)[0])
    camera.start()
    yield camera
    camera.stop()


def test_capture_test_reads_h264_from_a_real_rtsp_camera(rtsp_camera: RtspCamera) -> None:
    result = edged("capture", "test", rtsp_camera.url, "--frames", "10", "--json", timeout=60)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert report["frames"] >= 10 and (report["width"], report["height"]) == (320, 240) and report["state"] == "online"


def test_the_daemon_follows_an_rtsp_camera_that_goes_away_and_comes_back(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path, rtsp_camera: RtspCamera
) -> None:
    config = tmp_path / "edged.toml"
    config.write_text(f'[cameras.gate]\nsource = "{rtsp_camera.url}"\nfps = 2.0\nstall_s = 3.0\nreconnect_max_s = 1.0\n')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1", timeout=60)
    with Client(daemon.control, timeout=10) as client:
        def camera() -> CameraStatus:
            return client.status().cameras["gate"]

        wait_until(lambda: camera().state == "online", what="online")
        assert camera().last_frame_age_s < 2
        rtsp_camera.stop()
        wait_until(lambda: camera().state == "reconnecting", what="reconnecting", timeout=30)
        assert rtsp_camera.url in camera().last_error
        rtsp_camera.start()
        wait_until(lambda: camera().state == "online", what="back online", timeout=30)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_source_that_opens_but_gives_no_frames_is_not_online(start_daemon, notify_socket: NotifySocket,
                                                                 tmp_path: Path) -> None:
    result = edged("capture", "test", "gst:videotestsrc is-live=true ! valve drop=true", "--frames", "3", "--json",
                   timeout=60)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["frames"] == 0 and report["state"] != "online"
    assert "no frame for 10 s (opened, but silent" in report["last_error"]

    config = tmp_path / "edged.toml"
    config.write_text('[cameras.stuck]\nsource = "gst:videotestsrc is-live=true ! valve drop=true"\nstall_s = 1.0\n')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=10) as client:
        wait_until(lambda: client.status().cameras["stuck"].state == "reconnecting", what="reconnecting")
        stuck = client.status().cameras["stuck"]
        assert "no frame for 1 s" in stuck.last_error and stuck.last_frame_age_s is None
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_stream_that_stalls_mid_way_is_reopened_and_the_backoff_waits_for_a_frame() -> None:
    from edged.capture.camera import CameraCapture

    class Stalling:
        """Three frames, then silence; each open starts it again."""

        def __init__(self) -> None:
            self.opened = 0
            self.left = 0

        def open(self) -> None:
            self.opened += 1
            self.left = 3

        def read(self, timeout: float) -> np.ndarray | None:
            if self.left:
                self.left -= 1
                return np.zeros((48, 64, 3), np.uint8)
            time.sleep(timeout)
            return None

        def close(self) -> None:
            pass

    source = Stalling()
    camera = CameraCapture("cam", CameraConfig(source="synthetic", stall_s=0.3, gate_threshold=0), source=source)
    camera.start()
    deadline = time.monotonic() + 10
    while source.opened < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    camera.stop()
    # Frames came after every open, so the backoff never grew past its first step (0.25-0.5 s).
    assert source.opened >= 4 and camera.frames_read >= 12
    assert "stalled" in camera.last_error


def test_a_missing_gstreamer_element_is_named_with_its_package() -> None:
    result = edged("capture", "test", "gst:videotestsrc ! nvvidconv", "--frames", "1", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert 'no element "nvvidconv"' in report["last_error"] and "apt install nvidia-l4t-gstreamer" in report["last_error"]


@pytest.mark.parametrize(("failure", "words"), [
    (ImportError("numpy.core.multiarray failed to import"), "numpy.core.multiarray failed to import"),
    (ValueError("numpy.dtype size changed, may indicate binary incompatibility"), "dtype size changed"),
    (RuntimeError("libcamera: no cameras available"), "no cameras available"),
])
def test_any_picamera2_failure_at_import_is_the_cameras_reconnecting_state_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, words: str
) -> None:
    class Exploding(types.ModuleType):
        def __getattr__(self, name: str):
            raise failure

    monkeypatch.setitem(sys.modules, "picamera2", Exploding("picamera2"))
    camera = CameraCapture("pi", CameraConfig(source="picamera2", reconnect_max_s=0.2))
    camera.start()
    deadline = time.monotonic() + 5
    while camera.reconnects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    status = camera.status()
    camera.stop()
    assert camera.reconnects >= 2 and camera._thread.is_alive() is False  # retried, and stopped only when told
    assert status.state == "reconnecting" and words in status.last_error
    assert ("numpy" in words or "dtype" in words) == ("Raspberry Pi OS builds picamera2" in status.last_error)
