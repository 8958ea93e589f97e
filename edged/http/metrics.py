"""``GET /metrics``: the daemon's figures in Prometheus' exposition format, through
prometheus-client. Everything but one histogram is read from the status at scrape time; the
capture-to-event latency is observed from each event as the bus publishes it (its envelope's
``ts`` less its provenance's ``frame_ts``), so it is the latency a subscriber sees."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.registry import Collector

from edged.bus.schema import Status

CAMERA_STATES = ("online", "reconnecting", "offline", "ended")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)


class StatusCollector(Collector):
    """Metrics made from the newest status, at each scrape."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        info = InfoMetricFamily("edged_model", "The model package in use and what runs it")
        info.add_metric([], {"model": status.model or "", "execution_provider": status.execution_provider or ""})
        yield info
        yield GaugeMetricFamily("edged_uptime_seconds", "Seconds since the daemon started", value=status.uptime_s)
        yield _gauge("edged_tokens_per_second", "Decode speed of the last answer", status.tokens_per_s)
        yield _gauge("edged_time_to_first_token_seconds", "Time to first token of the last answer",
                     None if status.ttft_ms is None else status.ttft_ms / 1000)
        yield GaugeMetricFamily("edged_queue_depth", "Inference jobs waiting", value=status.queue_depth)
        yield CounterMetricFamily("edged_images_encoded", "Pictures the vision encoder has read",
                                  value=status.images_encoded or 0)
        yield GaugeMetricFamily("edged_sessions", "Conversations held in memory", value=status.sessions or 0)
        yield CounterMetricFamily("edged_requests_busy", "Requests refused as busy", value=status.requests_busy)
        dropped = CounterMetricFamily("edged_jobs_dropped", "Inference jobs dropped as stale, by kind", labels=["kind"])
        for kind, count in sorted(status.jobs_dropped.items()):
            dropped.add_metric([kind], count)
        yield dropped
        inference = CounterMetricFamily("edged_inference_seconds", "Inference time since start, by kind of work",
                                        labels=["kind"])
        for kind, seconds in sorted(status.inference_s.items()):
            inference.add_metric([kind], seconds)
        yield inference
        frames = CounterMetricFamily("edged_frames", "Frames sent on to the model, by camera", labels=["camera"])
        drops = CounterMetricFamily("edged_frames_dropped", "Frames replaced before the model took them",
                                    labels=["camera"])
        fps = GaugeMetricFamily("edged_camera_fps", "Frames per second from the source", labels=["camera"])
        states = StateSetMetricFamily("edged_camera_state", "Each camera's state", labels=["camera"])
        for camera, report in sorted(status.cameras.items()):
            frames.add_metric([camera], report.frames)
            drops.add_metric([camera], report.drops)
            fps.add_metric([camera], report.fps)
            states.add_metric([camera], {state: state == report.state for state in CAMERA_STATES})
        yield from (frames, drops, fps, states)
        probability = GaugeMetricFamily("edged_rule_probability", "P(yes) at the rule's last evaluation",
                                        labels=["camera", "rule"])
        active = GaugeMetricFamily("edged_rule_active", "1 between a rule's begin and end events",
                                   labels=["camera", "rule"])
        for camera, rules in sorted(status.rules.items()):
            for rule in rules:
                if rule.probability is not None:
                    probability.add_metric([camera, rule.id], rule.probability)
                active.add_metric([camera, rule.id], 1.0 if rule.active else 0.0)
        yield from (probability, active)
        doors = StateSetMetricFamily("edged_door_state", "Each door's state (mqtt, http)", labels=["door"])
        for name, door in sorted(status.doors.items()):
            doors.add_metric([name], {door.state: True})
        yield doors


class ProcessFigures(Collector):
    """The process's own figures under Prometheus' standard names. prometheus-client's
    ProcessCollector needs /proc/stat for the boot time, which the unit's ProcSubset=pid hides,
    and then reports nothing at all; these come from /proc/self (which stays visible) and
    getrusage."""

    def __init__(self) -> None:
        self._started = _start_time()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        try:
            with open("/proc/self/statm", "rb") as statm:
                size, resident = (int(field) for field in statm.read().split()[:2])
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                    value=resident * self._page)
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                    value=size * self._page)
        except OSError:
            pass  # not Linux
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield GaugeMetricFamily("process_peak_resident_memory_bytes", "Most resident memory since start, in bytes.",
                                value=usage.ru_maxrss * 1024)
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                  value=usage.ru_utime + usage.ru_stime)
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                                value=self._started)
        try:
            yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                    value=len(os.listdir("/proc/self/fd")))
        except OSError:
            pass


def _start_time() -> float:
    """When this process started, Unix seconds: /proc/self/stat's start (clock ticks after
    boot) read against the boot clock."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge with no sample until there is a value (nothing measured is not zero)."""
    gauge = GaugeMetricFamily(name, documentation)
    if value is not None:
        gauge.add_metric([], value)
    return gauge


class DaemonMetrics:
    """The registry /metrics serves: the status's figures, event latency, and the process's own
    (resident memory, CPU, open files)."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatusCollector(status))
        self.registry.register(ProcessFigures())
        self._latency = Histogram("edged_capture_to_event_seconds", "From a frame's capture to the publication of "
                                  "an event about it, by kind", ["kind"], buckets=LATENCY_BUCKETS,
                                  registry=self.registry)

    def observe_event(self, kind: str, envelope: str) -> None:
        """An event as the bus published it; those about a frame add to the latency histogram."""
        if kind not in ("rule", "detection", "description", "answer"):
            return
        event = json.loads(envelope)
        frame_ts = event["data"].get("provenance", {}).get("frame_ts")
        if frame_ts is not None:
            self._latency.labels(kind).observe(max(0.0, event["ts"] - frame_ts))
