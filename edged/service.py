"""The daemon's lifecycle, in the order it happens: load, start, serve, reload, stop.

Signals are not handled where they land: each one is written to a pipe
(``signal.set_wakeup_fd``) and the main loop reads them in order and calls one small
``handle_<signal>`` method. The loop also pings systemd's watchdog, but only while every
part keeps reporting progress, so a stuck capture or inference thread gets us restarted.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from functools import partial
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from edged import __version__
from edged.config import EX_CONFIG, ConfigError, LoadedConfig, Override, changed_keys, needs_restart
from edged.logs import configure_logging
from edged.models.installed import ModelChoice
from edged.notify import SystemdNotifier, watchdog_interval
from edged.parts import Part, PartsFactory, ProgressMonitor, StartRefused
from edged.settings import CameraConfig, Settings, load_config
from edged.preflight import check_start

if TYPE_CHECKING:
    from edged.bus.bus_part import BusPart

log = structlog.get_logger()

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
STOP_BUDGET_S = 20.0
"""Every part stops within this, well inside the unit's TimeoutStopSec=30, after which
systemd kills the daemon and whatever it had not saved is lost."""
STOP_RESERVE_S = 1.0
"""Of the stop budget, what each part keeps for the parts that stop after it (the bus last)."""
STATUS_REFRESH_S = 1.0
"""How often the main loop looks at the parts: status line, dead threads, watchdog."""


EX_SOFTWARE = 70
"""A thread of the daemon died of a bug; systemd restarts the daemon (Restart=on-failure)."""


def build_parts(settings: Settings, monitor: ProgressMonitor, model: ModelChoice) -> list[Part]:
    """The daemon's parts, in start order (they stop in reverse). The bus opens first and
    closes last, so every request gets an answer, ``status`` during a long model load and
    ``unavailable`` while the agent stops, rather than silence until the client gives up."""
    from edged.agent.agent_part import AgentPart
    from edged.bus.bus_part import BusPart
    from edged.capture.capture_part import CapturePart

    capture = CapturePart(settings, monitor)
    agent = AgentPart(settings, monitor, capture, model)
    bus = BusPart(settings, monitor, handler=agent, cameras=capture.statuses, figures=agent.status_figures)
    agent.publish = bus.server.publish
    return [bus, *doors(settings, monitor, bus), capture, agent]


def doors(settings: Settings, monitor: ProgressMonitor, bus: BusPart) -> list[Part]:
    """The doors beyond the ZeroMQ bus that the config enables: views of the same events and
    operations. They start after the bus and before the agent, so they stop after it too and
    can tell their clients of its last answers."""
    enabled: list[Part] = []
    if settings.mqtt.enabled:
        from edged.mqtt.mqtt_part import MqttPart

        mqtt = MqttPart(settings, monitor, bus.local)
        bus.doors[mqtt.name] = mqtt.door_state
        enabled.append(mqtt)
    if settings.http.enabled:
        from edged.http.http_part import HttpPart

        http = HttpPart(settings, monitor, bus.local)
        bus.doors[http.name] = http.door_state
        enabled.append(http)
    return enabled


def with_embedded_demo(loaded: LoadedConfig) -> LoadedConfig:
    """With no config file and no cameras: a synthetic camera with a demo rule, so a first
    `edged run` shows the whole daemon working on the bundled model."""
    if loaded.files or loaded.settings.cameras:
        return loaded
    from edged.bus.schema import RuleConfig

    demo = CameraConfig(source="synthetic", fps=1.0, describe_every_s=15.0, rules=[
        RuleConfig(id="red_square", when="Is there a red square in the picture", on_threshold=0.5, off_threshold=0.4)])
    settings = loaded.settings.model_copy(update={"cameras": {"demo": demo}})
    return replace(loaded, settings=settings)


def serve(
    config: Path | None = None,
    overrides: Sequence[Override] = (),
    parts_factory: PartsFactory = build_parts,
) -> int:
    """Run the daemon until SIGTERM or SIGINT; the exit status for ``edged run``."""
    reload_config = lambda: with_embedded_demo(load_config(config, overrides))  # noqa: E731
    try:
        loaded = reload_config()
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print("edged: not started: the configuration is invalid (exit 78)", file=sys.stderr)
        return EX_CONFIG
    configure_logging(loaded.settings.log)
    log.info("starting", version=__version__, pid=os.getpid(), config=loaded.describe_files())
    # A damaged package is the agent's to refuse (exit 65): here, what the config names.
    problems, model = check_start(loaded.settings, package_sizes=False)
    if problems:
        for problem in problems:
            print(f"edged: not started: {problem}", file=sys.stderr)
        return EX_CONFIG
    log.info("model chosen", path=str(model.path), reason=model.reason)
    status = Service(loaded, reload_config, partial(parts_factory, model=model)).run()
    end_now_if_threads_linger(status)
    return status


def end_now_if_threads_linger(status: int) -> None:
    """End the process at once with ``status`` if a thread of the daemon still runs after the
    stop: one inside a native call that outlived the stop's budget (a decoder piece of a large
    model on a slow board, a camera library's blocking read). Left to the interpreter's
    teardown, a thread that returns from onnxruntime into the finalizing interpreter takes the
    process down with it ("terminate called", signal 6), and systemd records a crash for a
    clean stop."""
    lingering = [thread.name for thread in threading.enumerate() if thread is not threading.main_thread()]
    if not lingering:
        return
    log.warning("threads still running after the stop: the process ends without the interpreter's teardown",
                threads=lingering, exit_status=status)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


class Service:
    """Owns the parts and speaks to systemd; everything here runs on the main thread."""

    def __init__(
        self,
        loaded: LoadedConfig,
        reload_config: Callable[[], LoadedConfig],
        parts_factory: PartsFactory,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.loaded = loaded
        self._reload_config = reload_config
        self.notifier = notifier or SystemdNotifier()
        self._watchdog_timeout = watchdog_interval()
        self.monitor = ProgressMonitor(beat_every=min(1.0, (self._watchdog_timeout or 4.0) / 4))
        self.parts = parts_factory(loaded.settings, self.monitor)
        self._started: list[Part] = []
        self._stopping = False
        self._reload_problem: str | None = None
        self._last_status = ""
        self._next_ping = time.monotonic()
        self._stall_reported: list[str] = []
        self._exit_status = 0

    # -- the order things happen in ---------------------------------------------------

    def run(self) -> int:
        wakeup = self._install_signal_handlers()
        try:
            self.notifier.status(self._set_status("starting"))  # what `edged status` says while the model loads
            if not self.start():
                return self._exit_status or 1
            status = self._set_status(self.status_text())
            self.notifier.ready(status)
            log.info("ready", status=status, watchdog_s=self._watchdog_timeout)
            while not self._stopping:
                for signum in self._wait_for_signals(wakeup):
                    self._dispatch(signum)
                self._tick()
        finally:
            self.stop()
        return self._exit_status

    def start(self) -> bool:
        """Start each part in order; on a failure stop those started and report it."""
        if not self.parts:
            log.info("no parts to start yet: running the lifecycle alone")
        for part in self.parts:
            log.info("starting part", part=part.name)
            try:
                part.start()
            except StartRefused as error:
                log.error("not started", part=part.name, reason=str(error), exit_status=error.exit_status)
                self.notifier.status(self._set_status(f"not started: {error}"))
                self._exit_status = error.exit_status
                return False
            except Exception as error:  # noqa: BLE001 - any failure to start is reported, then we stop
                log.exception("part failed to start", part=part.name)
                self.notifier.status(self._set_status(f"failed to start {part.name}: {error}"))
                return False
            self._started.append(part)
        return True

    def handle_sighup(self) -> None:
        """Re-read and apply the config; an invalid one is logged and the old one kept."""
        self.notifier.reloading()
        log.info("reloading config", config=self.loaded.describe_files())
        try:
            new = self._reload_config()
        except ConfigError as error:
            for problem in error.problems:
                log.error("config reload rejected", problem=problem)
            more = f" (+{len(error.problems) - 1} more)" if len(error.problems) > 1 else ""
            self._reload_problem = (
                f"reload at {time.strftime('%H:%M:%S')} rejected, previous config kept: "
                f"{error.problems[0]}{more}"
            )
        else:
            changed = changed_keys(self.loaded.settings, new.settings)
            pending = [key for key in changed if needs_restart(Settings, key)]
            if pending:
                log.warning("these settings take effect at the next restart", keys=pending)
            configure_logging(new.settings.log)
            for part in self._started:
                part.apply(new.settings)
            self.loaded = new
            self._reload_problem = None
            log.info("config reloaded", changed=changed, config=new.describe_files())
        self.notifier.ready(self._set_status(self.status_text()))

    def handle_sigterm(self) -> None:
        log.info("stop requested")
        self._stopping = True

    handle_sigint = handle_sigterm

    def stop(self) -> None:
        """Stop the started parts in reverse order, all within STOP_BUDGET_S; one part's
        failure does not stop the rest."""
        self.notifier.stopping()
        deadline = time.monotonic() + STOP_BUDGET_S
        parts = list(reversed(self._started))
        for index, part in enumerate(parts):
            log.info("stopping part", part=part.name)
            try:
                part.stop(deadline - STOP_RESERVE_S * (len(parts) - 1 - index))
            except Exception:  # noqa: BLE001 - logged; the other parts must still stop
                log.exception("part failed to stop cleanly", part=part.name)
        self._started.clear()
        self.notifier.close()
        log.info("stopped", exit_status=self._exit_status)

    # -- status and watchdog ----------------------------------------------------------

    def status_text(self) -> str:
        words = "; ".join(p.describe() for p in self._started) or "running with no parts"
        return f"{words}; {self._reload_problem}" if self._reload_problem else words

    def _set_status(self, status: str) -> str:
        """Remember ``status`` as the line systemd and ``edged status`` show."""
        self._last_status = self.monitor.detail = status
        return status

    def _tick(self) -> None:
        deaths = self.monitor.deaths()
        if deaths:
            words = "; ".join(f"{name} thread died ({why})" for name, why in deaths.items())
            log.error("stopping: a thread of the daemon died", deaths=deaths, exit_status=EX_SOFTWARE)
            self.notifier.status(self._set_status(f"stopping: {words}"))
            self._exit_status = EX_SOFTWARE
            self._stopping = True
            return
        status = self.status_text()
        if status != self._last_status:
            self.notifier.status(self._set_status(status))
        if self._watchdog_timeout is None or time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + self._watchdog_timeout / 2
        stalled = self.monitor.stalled(longer_than=self._watchdog_timeout)
        if stalled:
            if stalled != self._stall_reported:
                log.warning("watchdog ping withheld: parts made no progress", parts=stalled)
            self._stall_reported = stalled
            return
        self._stall_reported = []
        self.notifier.watchdog()

    def _next_wait(self) -> float:
        wait = STATUS_REFRESH_S
        if self._watchdog_timeout is not None:
            wait = min(wait, max(0.0, self._next_ping - time.monotonic()))
        return wait

    # -- signals ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> int:
        """Route the handled signals into a pipe that the main loop reads."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            # A Python-level handler must exist for the wakeup byte to be written.
            signal.signal(signum, lambda *_: None)
        return read_end

    def _wait_for_signals(self, wakeup: int) -> list[int]:
        readable, _, _ = select.select([wakeup], [], [], self._next_wait())
        if not readable:
            return []
        try:
            return list(os.read(wakeup, 64))
        except BlockingIOError:
            return []

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name.lower()
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler()
