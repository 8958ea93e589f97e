"""A package's vision encoder against a float32 one, on a set of varied pictures.

Both packages come from one checkpoint (``edged models build`` with and without
``--vision-precision fp32``), so their decoders are the same and every difference is the
encoder's: the per-token cosine of the image features, the change in each rule's P(yes), the
encoder's time, and a frame's whole read (encoder, then the image tokens through the decoder)
as the daemon makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.capture.sources.synthetic import synthetic_frame
from edged.engine.prompt_format import ANSWER, rule_question

SIZE = 448


def pictures(size: int = SIZE) -> dict[str, np.ndarray]:
    """size x size RGB pictures of every kind a camera or a client may send: the synthetic
    camera's frames, smooth gradients, noise, and drawn scenes with soft edges and grain."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    radial = np.hypot(x - size / 2, y - size / 2) / (size / 2) * 255
    found = {
        "synthetic frame, object": _fit(synthetic_frame(1, 640, 480), size),
        "synthetic frame, empty": _fit(synthetic_frame(0, 640, 480), size),
        "horizontal gradient": np.stack([np.broadcast_to(ramp, (size, size))] * 3, axis=-1),
        "colour gradient": np.stack([np.broadcast_to(ramp, (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                                     255 - np.broadcast_to(ramp, (size, size))], axis=-1),
        "radial gradient": np.stack([radial, 255 - radial, radial / 2], axis=-1),
        "uniform noise": rng.random((size, size, 3)) * 255,
        "grey noise, dim": np.repeat(rng.normal(60, 20, (size, size, 1)), 3, axis=-1),
        "black": np.zeros((size, size, 3)),
    }
    for seed in range(4):
        found[f"drawn scene {seed}"] = _scene(size, np.random.default_rng(100 + seed))
    return {name: np.clip(picture, 0, 255).astype(np.uint8) for name, picture in found.items()}


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def _scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like picture: sky and ground, a house, a car, a person, blurred and grainy."""
    import cv2

    horizon = int(size * rng.uniform(0.35, 0.6))
    picture = np.zeros((size, size, 3), np.float32)
    picture[:horizon] = np.linspace(rng.uniform(120, 220, 3), rng.uniform(180, 255, 3), horizon)[:, None, :]
    picture[horizon:] = rng.uniform(40, 120, 3)
    house = (int(rng.uniform(0.05, 0.4) * size), horizon - int(rng.uniform(0.2, 0.3) * size))
    cv2.rectangle(picture, house, (house[0] + size // 3, horizon), rng.uniform(80, 200, 3).tolist(), -1)
    cv2.rectangle(picture, (house[0] + 20, house[1] + 20), (house[0] + 50, house[1] + 50), (250, 240, 160), -1)
    car = (int(rng.uniform(0.45, 0.7) * size), horizon + int(0.1 * size))
    cv2.rectangle(picture, car, (car[0] + size // 5, car[1] + size // 12), rng.uniform(0, 255, 3).tolist(), -1)
    for wheel in (car[0] + 12, car[0] + size // 5 - 12):
        cv2.circle(picture, (wheel, car[1] + size // 12), 9, (20, 20, 20), -1)
    person = (int(rng.uniform(0.1, 0.9) * size), horizon + int(0.25 * size))
    cv2.circle(picture, (person[0], person[1] - 60), 10, (200, 160, 130), -1)
    cv2.line(picture, (person[0], person[1] - 50), (person[0], person[1] - 15), (30, 30, 90), 6)
    cv2.line(picture, (person[0], person[1] - 15), (person[0] - 10, person[1]), (30, 30, 90), 5)
    cv2.line(picture, (person[0], person[1] - 15), (person[0] + 10, person[1]), (30, 30, 90), 5)
    picture = cv2.GaussianBlur(picture, (5, 5), 1.2)
    return picture + rng.normal(0, 6, picture.shape)


@dataclass
class VisionSide:
    """What one encoder gives and costs."""

    features: dict[str, np.ndarray]
    probabilities: dict[str, list[float]]
    encode_s: float
    frame_read_s: float


def measure(package: Path, threads: int, repeats: int, rules: list[str], spin: bool | None = None) -> VisionSide:
    """Image features of every picture, P(yes) of ``rules`` on each, and the best encode and
    frame-read times of ``repeats`` on the first drawn scene, from a freshly loaded engine."""
    from edged.agent.tasks import FrameTasks
    from edged.bench.timing import best
    from edged.engine.engine import Engine

    engine = Engine(package, threads=threads, max_length=1024, spin=spin)
    tasks = FrameTasks(engine, "You watch a camera.")
    grid = engine._patch_grid
    assert grid is not None, f"{package} has no vision encoder this bench knows"
    features, probabilities = {}, {}
    tails = [engine.encode(rule_question(rule) + ANSWER) for rule in rules]
    every = pictures()
    for name, picture in every.items():
        pixels, thw = grid.patches(picture)
        features[name] = engine._encode_images(pixels, thw)
        state = tasks.read_picture(picture)
        probabilities[name] = [tasks.probability_of_yes(logits) for logits in engine.fork_logits(state, tails)]
    scene = every["drawn scene 0"]
    pixels, thw = grid.patches(scene)
    encode_s = best(lambda: engine._encode_images(pixels, thw), repeats)
    frame_read_s = best(lambda: tasks.read_picture(scene), repeats)
    return VisionSide(features, probabilities, encode_s, frame_read_s)


def cosines(ours: VisionSide, reference: VisionSide) -> np.ndarray:
    """Per image token, over every picture: the cosine of our features to the reference's."""
    values = []
    for name, features in ours.features.items():
        other = reference.features[name]
        dot = (features * other).sum(axis=1)
        values.append(dot / (np.linalg.norm(features, axis=1) * np.linalg.norm(other, axis=1) + 1e-12))
    return np.concatenate(values)


def probability_changes(ours: VisionSide, reference: VisionSide) -> np.ndarray:
    """Each rule's change in P(yes) on each picture."""
    return np.asarray([abs(a - b) for name in ours.probabilities
                       for a, b in zip(ours.probabilities[name], reference.probabilities[name], strict=True)])

