"""The daemon end to end: a camera, the bundled tiny model, a real bus subscriber and client."""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from conftest import REPO, NotifySocket, edged, wait_until, write_config

from edged.capture.sources.synthetic import synthetic_frame
from edged.agent.tasks import DETECTION_SCHEMA, objects_in_pixels
from edged.bus.schema import Detection, RuleState, Snapshot
from edged.client import AnswerStream, BusError, Client, Subscriber


def one_picture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "door.png"), cv2.cvtColor(synthetic_frame(40, 160, 120), cv2.COLOR_RGB2BGR))
    return folder


def wait_for_frame(client: Client, camera: str, timeout: float = 20) -> Snapshot:
    """The camera's first frame as the agent has it (snapshot says not_found until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.snapshot(camera)
        except BusError as error:
            assert error.code == "not_found" and time.monotonic() < deadline, error
            time.sleep(0.05)


def test_rule_events_arrive_valid_with_provenance(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    config = write_config(tmp_path / "edged.toml", """
[agent]
frames_kept = 64
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 8
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Subscriber(daemon.events, ["edged.rule.front"]) as events:  # before the 8th frame's evaluation
        received = events.receive(timeout=30)
    schema = json.loads(edged("schema").stdout)
    assert received is not None, daemon.log()[-2000:]
    event = received.event
    jsonschema.validate(json.loads(event.model_dump_json()), schema["event"])
    assert event.data.rule == "anything" and event.data.phase == "begin"
    assert event.data.provenance.frame_seq is not None and event.data.provenance.frame_hash
    assert event.data.provenance.model and event.data.provenance.prompt_version == event.data.version
    seq = event.data.provenance.frame_seq
    with Client(daemon.control, timeout=30) as client:  # a question about the very frame the event was about
        answer = client.ask("Who is it?", camera="front", frame_seq=seq, max_tokens=4)
        "".join(answer)
        assert answer.final.provenance.frame_seq == seq and answer.final.provenance.frame_hash == event.data.provenance.frame_hash
        with pytest.raises(BusError, match="not_found: frame 999999 of camera front is not among the frames kept"):
            "".join(client.ask("Who is it?", camera="front", frame_seq=999999))
        with pytest.raises(BusError, match="bad_request.*give camera too"):
            "".join(client.ask("Who is it?", frame_seq=seq))
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_follow_up_continues_the_session_without_reading_the_picture_again(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    pictures = one_picture(tmp_path / "pictures")
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.door]
source = "file:{pictures}"
loop = false
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_for_frame(client, "door")
        assert client.status().images_encoded == 0  # no rule needs the frame: not read until asked
        first = client.ask("What is in the picture?", camera="door", session="s1", max_tokens=8)
        assert "".join(first) and first.final.session == "s1"
        follow_up = client.ask("And what colour is it?", session="s1", max_tokens=8)
        assert "".join(follow_up)
        status = client.status()
        assert status.images_encoded == 1  # one picture read once, for both questions
        assert status.sessions == 1
        with pytest.raises(BusError, match="not_found"):
            "".join(client.ask("Hello?", camera="nowhere"))
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    assert list((tmp_path / "run0/state/sessions").glob("*.safetensors"))  # saved at stop


def test_a_flood_of_asks_gets_busy_replies_while_rules_keep_running(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", """
[bus]
queue_limit = 2
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "flip"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 8
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    import zmq

    events = Subscriber(daemon.events, ["edged.rule.front"])
    time.sleep(0.2)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(daemon.control)
    for n in range(10):
        socket.send(json.dumps({"v": 1, "id": f"q{n}", "op": "ask", "question": "Describe everything.",
                                "max_tokens": 64}).encode())
    codes = []
    deadline = time.monotonic() + 60
    while len(codes) < 10 and time.monotonic() < deadline:
        if socket.poll(1000):
            reply = json.loads(socket.recv())
            if not reply["partial"]:
                codes.append("ok" if reply["ok"] else reply["error"]["code"])
    socket.close(linger=0)
    assert codes.count("busy") >= 5 and "ok" in codes
    assert events.receive(timeout=30) is not None  # the rule was still evaluated, frame after frame
    events.close()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_detect_returns_objects_with_boxes_in_frame_pixels(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    pictures = one_picture(tmp_path / "pictures")
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.door]
source = "file:{pictures}"
loop = false
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=60) as client:
        wait_for_frame(client, "door")
        detection = Detection.model_validate(client.call("detect", camera="door"))
    for found in detection.objects:  # the random tiny model may well see nothing
        assert all(0 <= v <= 160 for v in found.box[::2]) and all(0 <= v <= 120 for v in found.box[1::2])
    assert detection.provenance.frame_hash
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_boxes_in_qwen_coordinates_become_frame_pixels() -> None:
    document = '{"objects":[{"label":"person","count":1,"box":[100,250,500,1000]}]}'
    jsonschema.validate(json.loads(document), DETECTION_SCHEMA)
    [person] = objects_in_pixels(document, 640, 480)
    assert (person.label, person.count, person.box) == ("person", 1, [64, 120, 320, 480])


def rules_of(client: Client, camera: str) -> dict[str, object]:
    return {rule.id: rule for rule in client.status().rules.get(camera, [])}


def test_sighup_adds_a_rule_and_a_new_prompt_without_reloading_the_model(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    camera = """
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
"""
    config = write_config(tmp_path / "edged.toml", camera)
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client, Subscriber(daemon.events, ["edged.rule.front"]) as events:
        before = client.status()
        assert before.engine_loads == 1 and before.rules == {"front": []}
        write_config(config, '[agent]\nsystem_prompt = "You guard a front door."\n' + camera + """
[[cameras.front.rules]]
id = "added"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
consecutive = 1
""")
        daemon.send(signal.SIGHUP)
        notify_socket.wait_for("RELOADING", "1")
        notify_socket.wait_for("READY", "1")
        received = events.receive(timeout=30)
        assert received is not None, daemon.log()[-2000:]
        assert received.event.data.rule == "added" and received.event.data.phase == "begin"
        after = client.status()
    assert after.engine_loads == 1  # the same model, never loaded again
    assert after.prompt_version != before.prompt_version  # the new system prompt is in force
    assert [rule.id for rule in after.rules["front"]] == ["added"] and after.rules["front"][0].evaluations >= 1
    assert "take effect at the next restart" not in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sigterm_during_an_answer_exits_at_once_and_sessions_come_back_after_a_restart(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    pictures = one_picture(tmp_path / "pictures")
    config = write_config(tmp_path / "edged.toml", f"""
[agent]
answer_max_tokens = 4096
[cameras.door]
source = "file:{pictures}"
loop = false
""")
    state = str(tmp_path / "state")
    daemon = start_daemon("--config", str(config), EDGED_STATE__DIR=state)
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_for_frame(client, "door")
        first = client.ask("What is in the picture?", camera="door", session="s1", max_tokens=8)
        assert "".join(first)
        long_answer = iter(client.ask("Tell me everything you see, in detail.", session="s1", max_tokens=4096))
        next(long_answer)  # the answer is streaming
        daemon.send(signal.SIGTERM)
        stopping = time.monotonic()
        with pytest.raises(BusError, match="unavailable"):  # cut off, and told why
            "".join(long_answer)
        assert daemon.wait(timeout=5) == 0
    assert time.monotonic() - stopping < 5
    assert "sessions saved" in daemon.log()

    restarted = start_daemon("--config", str(config), EDGED_STATE__DIR=state)
    notify_socket.wait_for("READY", "1")
    with Client(restarted.control, timeout=30) as client:
        follow_up = client.ask("And what colour is it?", session="s1", max_tokens=8)
        assert "".join(follow_up) and follow_up.final.session == "s1"
        assert client.status().images_encoded == 0  # the session's state came back, picture included
    restarted.send(signal.SIGTERM)
    assert restarted.wait() == 0


def test_a_camera_fault_shows_in_status_and_rules_run_again_after_it_recovers(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    pictures = one_picture(tmp_path / "pictures")
    cv2.imwrite(str(pictures / "yard.png"), cv2.cvtColor(synthetic_frame(90, 160, 120), cv2.COLOR_RGB2BGR))
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.door]
source = "file:{pictures}"
fps = 5.0
gate_threshold = 0.0
reconnect_max_s = 1.0
[[cameras.door.rules]]
id = "anything"
when = "Is there anything in the picture"
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: rules_of(client, "door")["anything"].evaluations > 0, what="a first evaluation")
        pictures.rename(tmp_path / "away")  # the camera's files vanish mid-stream
        wait_until(lambda: client.status().cameras["door"].state == "reconnecting", what="reconnecting")
        status = client.status().cameras["door"]
        assert str(pictures) in status.last_error  # says which source failed
        (tmp_path / "away").rename(pictures)
        wait_until(lambda: client.status().cameras["door"].state == "online", what="back online")
        evaluated = rules_of(client, "door")["anything"].evaluations
        wait_until(lambda: rules_of(client, "door")["anything"].evaluations > evaluated + 2, what="rules to run again")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_rules_set_replaces_a_camera_rules_and_snapshot_draws_them(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    pictures = one_picture(tmp_path / "pictures")  # the same picture over and over
    config = write_config(tmp_path / "edged.toml", f"""
[cameras.front]
source = "file:{pictures}"
fps = 5.0
gate_threshold = 0.0
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client, Subscriber(daemon.events, ["edged.rule.front"]) as events:
        wait_for_frame(client, "front")
        plain = client.snapshot("front", "png")  # lossless, to compare pixels
        assert not plain.rules and not plain.objects
        rule = {"id": "set_live", "when": "Is there anything in the picture", "on_threshold": 0.0,
                "off_threshold": 0.0, "consecutive": 1}
        in_force = client.call("rules.set", camera="front", rules=[rule])
        assert [r["id"] for r in in_force["front"]] == ["set_live"]
        received = events.receive(timeout=30)
        assert received is not None and received.event.data.rule == "set_live"
        with pytest.raises(BusError, match="bad_request.*off_threshold"):
            client.call("rules.set", camera="front", rules=[{"id": "x", "when": "y", "on_threshold": 0.2}])
        with pytest.raises(BusError, match="not_found"):
            client.call("rules.set", camera="back", rules=[])
        assert list(client.call("rules.list", camera="front")["front"][0]) == list(RuleState.model_fields)

        with pytest.raises(BusError, match="not_found: no camera back; cameras: front"):
            client.snapshot("back")
        drawn = client.snapshot("front", "png")
        assert [r.id for r in drawn.rules] == ["set_live"] and drawn.rules[0].active

    def pixels(snapshot: Snapshot) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(base64.b64decode(snapshot.image), np.uint8), cv2.IMREAD_COLOR).astype(int)

    raw = cv2.imread(str(pictures / "door.png")).astype(int)
    assert np.array_equal(pixels(plain), raw)  # nothing to draw: the frame as the model saw it
    changed = np.abs(pixels(drawn) - raw).sum(axis=2) > 0
    assert drawn.frame_seq > plain.frame_seq and changed[:20].mean() > 0.05 and not changed[20:].any()  # the rule's line

    out = tmp_path / "front.jpg"
    cli = edged("snapshot", "--camera", "front", str(out), env={"EDGED_BUS__CONTROL": daemon.control})
    assert cli.returncode == 0, cli.stderr
    assert "wrote" in cli.stdout and cv2.imread(str(out)) is not None
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_replay_prints_the_same_events_for_the_same_clip_every_time(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for n in range(40):
        writer.write(cv2.cvtColor(synthetic_frame(n * 7, 160, 120), cv2.COLOR_RGB2BGR))
    writer.release()
    config = write_config(tmp_path / "rules.toml", """
[cameras.door]
source = "file:/dev/video-not-used"
fps = 2.0
gate_threshold = 0.0
describe_every_s = 1.5
[[cameras.door.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.5
off_threshold = 0.45
consecutive = 1
cooldown_s = 0.5
""")
    runs = [edged("replay", str(clip), "--config", str(config), "--json", timeout=120) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    events = [[json.loads(line) for line in run.stdout.splitlines()] for run in runs]
    for event in events[0] + events[1]:
        event.pop("inference_ms")  # the only field that depends on the machine
    assert events[0] == events[1]
    kinds = [event["kind"] for event in events[0]]
    assert "rule" in kinds and "description" in kinds
    assert all(event["clip_s"] * 2 == int(event["clip_s"] * 2) for event in events[0])  # the 2 fps cap, in clip time
    phases = [event["data"]["phase"] for event in events[0] if event["kind"] == "rule"]
    assert phases[0] == "begin" and all(a != b for a, b in zip(phases, phases[1:]))  # begin, end, begin ...
    assert "frames to the model" in runs[0].stderr

    human = edged("replay", str(clip), "--config", str(config), timeout=120)
    assert human.returncode == 0 and "rule anything begin" in human.stdout
    wrong = edged("replay", str(clip), "--config", str(config), "--camera", "back")
    assert wrong.returncode == 2 and "no camera 'back'" in wrong.stderr


def test_frame_work_past_its_deadline_is_dropped_and_counted(start_daemon, notify_socket: NotifySocket,
                                                             tmp_path: Path) -> None:
    config = write_config(tmp_path / "edged.toml", """
[agent]
stale_after_s = 0.000001
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "never_in_time"
when = "Is there anything in the picture"
""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: client.status().jobs_dropped.get("rules", 0) >= 3, what="dropped rule jobs")
        status = client.status()
    assert status.drops >= 3 and status.rules["front"][0].evaluations == 0
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_frame_whose_rules_started_in_time_has_every_rule_run_on_it(start_daemon, notify_socket: NotifySocket,
                                                                     tmp_path: Path) -> None:
    """The deadline is for starting a frame's work. Once the read is made, every rule runs on
    it even when that takes the frame past stale_after_s: a large model on a small board
    reads a frame for longer than the deadline, and dropping the rules after the first left
    it with no frame whose rules all ran. So too when they run as batches (5, 5, 5, then 1)."""
    rules = "".join(f'[[cameras.front.rules]]\nid = "rule{n}"\nwhen = "Is there a thing number {n}"\n'
                    for n in range(16))
    stale_after_s = 0.04
    config = write_config(tmp_path / "edged.toml", f"""
[model]
rules_per_batch = 5
[agent]
stale_after_s = {stale_after_s}
[cameras.front]
source = "synthetic"
fps = 2.0
gate_threshold = 0.0
{rules}""")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client:
        wait_until(lambda: client.status().rules["front"][-1].evaluations >= 3, what="three frames with every rule")
        status = client.status()
    evaluations = {rule.evaluations for rule in status.rules["front"]}
    assert len(evaluations) == 1, status.rules["front"]  # each frame: all of its rules, or none
    assert status.frame_to_rules_ms > stale_after_s * 1000  # the last rules ran past the deadline, as they should
    assert "rules_per_batch=5" in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_questions_asked_during_a_long_read_each_get_in_at_its_next_piece(start_daemon, notify_socket: NotifySocket,
                                                                          tmp_path: Path) -> None:
    """Every read takes 3 s here, in pieces of 0.3 s (slow_read_daemon.py), one after another.
    A question gets in between two pieces while questions are within their share of time
    against the rules; the read's time must count as it goes, or after the first question
    the questions look over their share and wait for the rest of the read."""
    config = write_config(tmp_path / "edged.toml", """
[cameras.front]
source = "synthetic"
fps = 5.0
gate_threshold = 0.0
[[cameras.front.rules]]
id = "anything"
when = "Is there anything in the picture"
""")
    daemon = start_daemon(argv=[sys.executable, str(REPO / "tests" / "slow_read_daemon.py"), str(config)])
    notify_socket.wait_for("READY", "1")
    round_trips = []
    with Client(daemon.control, timeout=30) as client:
        time.sleep(0.5)  # inside the first frame's read
        for _ in range(6):
            sent = time.monotonic()
            "".join(AnswerStream(client.request("ask", question="Hello?", without_picture=True, max_tokens=2)))
            round_trips.append(time.monotonic() - sent)
            time.sleep(0.4 - min(round_trips[-1], 0.4))
    assert max(round_trips) < 1.0, round_trips  # a piece is 0.3 s; the rest of a read, up to 3 s
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


# -- the scheduler on its own -----------------------------------------------------------------


def test_jobs_run_by_priority_then_arrival_and_late_ones_are_dropped_and_counted() -> None:
    from edged.agent.scheduler import ASK, DESCRIBE, RULES, JobQueue

    now = [0.0]
    queue, ran, expired = JobQueue(clock=lambda: now[0]), [], []
    queue.put(DESCRIBE, lambda: ran.append("describe"), deadline=10)
    queue.put(RULES, lambda: ran.append("rule 1"), deadline=10)
    queue.put(RULES, lambda: ran.append("rule 2"), deadline=1, expire=lambda: expired.append("rule 2"))
    queue.put(ASK, lambda: ran.append("ask"))
    assert queue.take().priority == ASK
    now[0] = 5.0  # rule 2's frame has gone stale
    queue.take().run()
    assert queue.waiting(RULES) == 0  # only the description is left
    queue.take().run()
    assert ran == ["rule 1", "describe"] and expired == ["rule 2"]
    assert dict(queue.dropped) == {"rules": 1} and len(queue) == 0


def test_a_read_lets_questions_in_only_within_their_share_against_the_rules() -> None:
    from edged.agent.scheduler import ASK, RULES, JobQueue

    queue = JobQueue()
    queue.put(RULES, lambda: None)  # the frame's other rules, waiting behind the read
    for _ in range(5):
        queue.put(ASK, lambda: None)
    first = queue.take_waiting((ASK,), running=RULES)
    assert first is not None and first.priority == ASK
    queue.charge(first, 1.0)  # a question's time: now ahead of the rules, which the read has not charged yet
    assert queue.take_waiting((ASK,), running=RULES) is None and queue.waiting(ASK) == 4
    queue.charge(queue.take(), 1.0)  # the rules job ends and is charged (1 s / 0.3 share)
    assert queue.take_waiting((ASK,), running=RULES) is not None
    assert queue.take_waiting((RULES,), running=ASK) is None  # nothing of that kind waits


def test_a_description_lets_no_question_in_while_a_frame_s_rules_have_the_better_claim() -> None:
    from edged.agent.scheduler import ASK, DESCRIBE, RULES, JobQueue

    frame_read = [False]
    queue = JobQueue()
    queue.put(DESCRIBE, lambda: None)
    describing = queue.take()
    queue.charge(describing, 0.3)  # its read and first tokens: 3 s against its 0.1 share
    queue.put(ASK, lambda: None)
    queue.put(RULES, lambda: None, nestable=lambda: frame_read[0])  # a frame that came in meanwhile, level with the asks
    asked = queue.take_waiting((ASK, RULES), running=DESCRIBE, yield_to=(RULES,))
    assert asked is not None and asked.priority == ASK  # equal claims: the question first, as take() would pick it
    queue.charge(asked, 0.2)  # 0.4 s against 0.5: the rules (0 s) now have the better claim
    queue.finish(asked)
    queue.charge(describing, 0.1)  # the description goes on
    queue.put(ASK, lambda: None)
    assert queue.take_waiting((ASK, RULES), running=DESCRIBE, yield_to=(RULES,)) is None  # their frame is not read
    asked = queue.take_waiting((ASK,), running=DESCRIBE)  # without yield_to, as in a read
    assert asked is not None and asked.priority == ASK
    queue.finish(asked)
    queue.put(ASK, lambda: None)
    frame_read[0] = True  # the description's read was of the rules' frame: they may run between its tokens
    rules = queue.take_waiting((ASK, RULES), running=DESCRIBE, yield_to=(RULES,))
    assert rules is not None and rules.priority == RULES
    queue.charge(rules, 0.3)  # 1 s against 0.3: the question is next
    queue.finish(rules)
    assert queue.take_waiting((ASK, RULES), running=DESCRIBE, yield_to=(RULES,)).priority == ASK
    assert dict(queue.seconds) == pytest.approx({"describe": 0.4, "ask": 0.2, "rules": 0.3})


def test_a_question_after_a_quiet_spell_gets_into_a_running_job_even_behind_a_waiting_description() -> None:
    """A kind that was idle comes back level with the lowest busy claim, the running job's
    included. Leveled with a waiting description's alone (a tenth share, so the highest claim),
    a question that came while a frame's rules ran looked over its share against them and
    waited for their whole job (bench agent's slowest answers, traced)."""
    from edged.agent.scheduler import ASK, DESCRIBE, RULES, JobQueue

    queue = JobQueue()
    for kind, seconds in ((DESCRIBE, 2.0), (RULES, 3.0)):  # the story so far: no questions
        queue.put(kind, lambda: None)
        job = queue.take()
        queue.charge(job, seconds)
        queue.finish(job)
    queue.put(RULES, lambda: None)  # a frame comes in, and calls for a description too
    queue.put(DESCRIBE, lambda: None)  # which waits: its claim is the highest
    rules = queue.take()
    assert rules.priority == RULES
    queue.charge(rules, 0.3)  # the frame's read has begun
    queue.put(ASK, lambda: None)
    asked = queue.take_waiting((ASK,), running=RULES)
    assert asked is not None  # in at the read's next piece
    queue.charge(asked, 2.0)
    queue.finish(asked)
    queue.put(ASK, lambda: None)  # a flood is still held to its share: the next one waits
    assert queue.take_waiting((ASK,), running=RULES) is None


def test_a_flood_of_asks_leaves_rules_and_descriptions_their_share_of_inference_time() -> None:
    from edged.agent.scheduler import ASK, DESCRIBE, RULES, SHARES, JobQueue

    queue, used = JobQueue(), {ASK: 0.0, RULES: 0.0, DESCRIBE: 0.0}
    for _ in range(400):  # every kind always has work waiting; an ask costs twice a rule
        for kind in (ASK, RULES, DESCRIBE):
            if not queue.waiting(kind):
                queue.put(kind, lambda: None)
        job = queue.take()
        seconds = 1.0 if job.priority == ASK else 0.5
        used[job.priority] += seconds
        queue.charge(job, seconds)
        queue.finish(job)
    total = sum(used.values())
    claims = sum(SHARES[kind] for kind in used)
    for kind, seconds in used.items():
        assert seconds / total == pytest.approx(SHARES[kind] / claims, abs=0.02)


def test_stale_jobs_of_every_kind_are_counted_even_while_others_keep_the_queue_busy() -> None:
    from edged.agent.scheduler import ASK, DESCRIBE, JobQueue

    now = [0.0]
    queue = JobQueue(clock=lambda: now[0])
    queue.put(DESCRIBE, lambda: None, deadline=1)
    queue.put(ASK, lambda: None)
    queue.put(ASK, lambda: None)
    now[0] = 2.0
    assert queue.take().priority == ASK
    assert dict(queue.dropped) == {"describe": 1} and len(queue) == 1


def test_cameras_take_turns() -> None:
    from edged.agent.scheduler import RoundRobin

    turns: RoundRobin[str] = RoundRobin()
    always = ["front", "back", "side"]
    served = [turns.first(always, lambda name: f"{name} frame")[0] for _ in range(6)]
    assert served == ["front", "back", "side", "front", "back", "side"]
    only_side = [turns.first(always, lambda name: "frame" if name == "side" else None)[0] for _ in range(2)]
    assert only_side == ["side", "side"] and turns.first(always, lambda name: None) is None


def test_answers_and_failed_work_reach_subscribers_as_events(start_daemon, notify_socket: NotifySocket,
                                                            tmp_path: Path) -> None:
    config = write_config(tmp_path / "edged.toml", """
[cameras.front]
source = "synthetic"
fps = 2.0
[[cameras.front.rules]]
id = "anyone"
when = "Is there a person"
""")
    # room for the system prompt, not for a frame: every rule job fails, and no client waits on it
    daemon = start_daemon("--config", str(config), "--set", "model.max_length=48")
    notify_socket.wait_for("READY", "1")
    with Subscriber(daemon.events, ["edged.error"]) as errors:
        failed = errors.receive(timeout=30)
    assert failed is not None and failed.topic == "edged.error", daemon.log()[-2000:]
    assert failed.event.data.code == "internal" and "max_length 48" in failed.event.data.message
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0

    config.write_text(config.read_text().split("[[cameras")[0])
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    with Client(daemon.control, timeout=30) as client, Subscriber(daemon.events, ["edged.answer."]) as answers:
        wait_for_frame(client, "front")  # time enough for the subscription to reach the daemon
        answer = client.ask("What is it?", camera="front", max_tokens=4)
        "".join(answer)
        received = answers.receive(timeout=30)
    assert received is not None and received.topic == "edged.answer.front"
    assert received.event.data == answer.final


def test_an_answer_is_remembered_as_its_text_reads_so_that_a_conversation_sent_back_continues_it() -> None:
    from conftest import TINY

    from edged.agent.requests import reads_back_the_same
    from edged.engine.engine import Engine, GenerationOptions
    from edged.engine.generation import Generation
    from edged.engine.prompt_format import END_OF_TURN

    engine = Engine(TINY / "text-fp32")
    end = engine.encode(END_OF_TURN)

    def generated(tokens: list[int], finish: str = "eos") -> Generation:
        return Generation(engine, engine.new_state(), GenerationOptions(), tokens=tokens, finish_reason=finish)

    text = "The gate is open."
    assert reads_back_the_same(engine, generated(engine.encode(text) + end), text)
    split = [token for piece in ("The ga", "te is open.") for token in engine.encode(piece)]
    assert engine.decode(split) == text and split != engine.encode(text)  # the same text, other tokens
    assert not reads_back_the_same(engine, generated(split + end), text)
    assert not reads_back_the_same(engine, generated(engine.encode(text), "length"), text)  # no end of turn read


def test_a_periodic_description_or_detection_lets_questions_in_after_each_token_and_ends_as_without_them() -> None:
    """A description's or detection's generation runs the waiting questions after each of its
    tokens (the daemon's periodic ones do), each on its own state: the questions answer as
    they do alone, and the description and the schema-held detection are the uninterrupted ones."""
    from conftest import TINY

    from edged.agent.tasks import FrameTasks
    from edged.capture.frame import Frame
    from edged.engine.engine import Engine

    engine = Engine(TINY / "vl-int4")
    tasks = FrameTasks(engine, "You watch the door.")
    rgb = (np.random.default_rng(9).random((64, 64, 3)) * 255).astype(np.uint8)
    frame = Frame(rgb, "door", 1, time.monotonic(), time.time())
    read = tasks.read(frame)

    def ask() -> str:
        return tasks.generate(tasks.after_system_prompt(), "Who is at the door?", 6)

    alone_answer = ask()
    description, detection = tasks.describe(read), tasks.detect(read)
    answers: list[str] = []
    interrupted_description = tasks.describe(read, between=lambda: answers.append(ask()))
    generated = len(answers)
    interrupted_detection = tasks.detect(read, between=lambda: answers.append(ask()))
    assert generated >= 2 and len(answers) > generated
    assert all(answer == alone_answer for answer in answers)
    assert interrupted_description.text == description.text
    assert interrupted_detection.objects == detection.objects


def test_a_question_between_the_pieces_of_a_frames_read_uses_the_cameras_last_finished_read() -> None:
    """The inference thread answers waiting questions between the pieces of a frame's read.
    A question about that camera then gets the frame read before (its provenance says which),
    instead of waiting for the read or reading the frame a second time; and the read ends as
    one that nothing interrupted."""
    from conftest import TINY

    from edged.agent.memory import AgentMemory
    from edged.agent.tasks import FrameTasks
    from edged.capture.frame import Frame
    from edged.engine.engine import Engine

    engine = Engine(TINY / "vl-int4", prefill_chunk=3)
    tasks = FrameTasks(engine, "You watch the door.")
    memory = AgentMemory({})
    rng = np.random.default_rng(5)
    first, second = (Frame((rng.random((64, 64, 3)) * 255).astype(np.uint8), "door", seq, time.monotonic(), time.time())
                     for seq in (1, 2))
    memory.remember(first, keep=4)
    earlier = memory.read(first, tasks)
    memory.remember(second, keep=4)
    assert memory.is_read(first) and not memory.is_read(second)  # what a frame's rules job asks to run between tokens
    seen = []
    encoded = engine.counters.images_encoded
    read = memory.read(second, tasks, between=lambda: seen.append(memory.newest_read("door", tasks)))
    assert len(seen) >= 2 and all(found is earlier for found in seen)
    assert engine.counters.images_encoded == encoded + 1  # the frame was read once
    assert memory.newest_read("door", tasks) is read and read.provenance.frame_seq == 2
    assert memory.is_read(second) and not memory.is_read(first)
    alone = tasks.read(second)
    np.testing.assert_array_equal(read.state.logits, alone.state.logits)
    # A question about the camera's newest frame takes the last finished read while that is
    # recent enough ([agent] reuse_read_within_s), and reads the newest frame otherwise.
    third = Frame((rng.random((64, 64, 3)) * 255).astype(np.uint8), "door", 3, second.monotonic + 1.0, time.time())
    memory.remember(third, keep=4)
    encoded = engine.counters.images_encoded
    assert memory.newest_read("door", tasks, reuse_within_s=1.5) is read
    assert engine.counters.images_encoded == encoded
    assert memory.newest_read("door", tasks, reuse_within_s=0.5).provenance.frame_seq == 3
    assert engine.counters.images_encoded == encoded + 1


def test_a_frames_rules_in_batches_feed_each_tracker_what_one_rule_at_a_time_does() -> None:
    """``[model] rules_per_batch``: a frame's rules go through the decoder that many to a call,
    as the rows of a batch. Each rule's P(yes), and so its events, are those of one rule at a
    time to the last bits of a float; waiting questions get in before each call; and a batch
    that fails leaves the rules one at a time from then on, the frame's rules all still run."""
    import structlog

    from conftest import BUNDLED

    from edged.agent.rules import RuleTracker
    from edged.agent.tasks import FrameTasks, load_engine
    from edged.bus.schema import RuleConfig
    from edged.capture.frame import Frame
    from edged.engine.engine import Engine
    from edged.models.model_settings import ModelConfig

    engine = load_engine(BUNDLED / "vl-fp32", ModelConfig(rules_per_batch=3))
    assert engine.rows
    whens = ["Is a person at the door", "Is it dark", "Is a red car parked in the driveway next to the gate",
             "Is a dog in the yard", "Rain"]
    rules = [RuleConfig(id=f"rule{n}", when=when, on_threshold=0.0, off_threshold=0.0, consecutive=1)
             for n, when in enumerate(whens)]
    rgb = (np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)
    frame = Frame(rgb, "door", 1, time.monotonic(), time.time())

    def run(tasks: FrameTasks) -> tuple[list, list[float], int, int]:
        read = tasks.read(frame)
        trackers = [RuleTracker(rule) for rule in rules]
        calls_before, between = engine.counters.decoder_runs, []
        events = list(tasks.evaluate_rules(read, trackers, between=lambda: between.append(1)))
        return events, [tracker.probability for tracker in trackers], engine.counters.decoder_runs - calls_before, len(between)

    one_events, one_probabilities, one_calls, one_between = run(FrameTasks(engine, "You watch the door."))
    batched = FrameTasks(engine, "You watch the door.", rules_per_batch=3)
    events, probabilities, calls, between = run(batched)
    assert (one_calls, one_between) == (5, 5) and (calls, between) == (2, 2)  # 3 rules, then 2, to a call
    np.testing.assert_allclose(probabilities, one_probabilities, atol=1e-5, rtol=0)
    assert [(e.rule, e.phase) for e in events] == [(e.rule, e.phase) for e in one_events] == \
        [(rule.id, "begin") for rule in rules]
    assert len(set(one_probabilities)) == len(rules)  # five rules, five answers: the rows were not mixed up

    def failing_batch(state, continuations):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Attention node")

    engine._run_rows = failing_batch
    with structlog.testing.capture_logs() as logs:
        events, probabilities, calls, between = run(batched)
    assert batched.rules_per_batch == 1 and (calls, between) == (5, 2)  # the failed batch, then one rule at a time
    np.testing.assert_array_equal(probabilities, one_probabilities)
    assert [e.rule for e in events] == [rule.id for rule in rules]
    assert any("run one after another" in log["event"] and "Attention node" in log["reason"] for log in logs)

    plain = FrameTasks(Engine(BUNDLED / "vl-fp32"), "You watch the door.", rules_per_batch=3)
    assert plain.rules_per_batch == 1  # an engine not loaded for rows runs the rules one at a time


def test_a_decoder_that_cannot_take_batches_loads_as_it_is_and_the_rules_run_one_at_a_time(tmp_path: Path) -> None:
    """A decoder the rows rewrite does not know (here one whose attention keeps a local
    window) loads as the package gives it when rules_per_batch asks for batches: the engine
    the daemon starts with runs, the log says why, and the rules run one after another."""
    import shutil

    import onnx
    import structlog

    from conftest import BUNDLED

    from edged.agent.tasks import FrameTasks, load_engine
    from edged.models.model_settings import ModelConfig

    package = tmp_path / "vl-fp32"
    shutil.copytree(BUNDLED / "vl-fp32", package)
    decoder = onnx.load(str(package / "decoder" / "model.onnx"), load_external_data=False)
    for node in decoder.graph.node:
        if node.op_type == "GroupQueryAttention":
            next(a for a in node.attribute if a.name == "local_window_size").i = 64
    onnx.save(decoder, str(package / "decoder" / "model.onnx"))
    with structlog.testing.capture_logs() as logs:
        engine = load_engine(package, ModelConfig(rules_per_batch=4))
    assert not engine.rows
    assert FrameTasks(engine, "You watch the door.", rules_per_batch=4).rules_per_batch == 1
    warning = next(log for log in logs if "did not load for batches" in log["event"])
    assert "local window" in warning["reason"]
