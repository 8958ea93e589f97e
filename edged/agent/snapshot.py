"""What the daemon sees, for an operator: the frame the model read, with the last
detection's boxes and each rule's state drawn on it."""

from __future__ import annotations

import base64

import numpy as np

from edged.bus.schema import DetectedObject, RuleState, Snapshot
from edged.capture.frame import Frame

ACTIVE, INACTIVE, BOX = (0, 200, 0), (200, 200, 200), (255, 160, 0)  # RGB


def draw(rgb: np.ndarray, objects: list[DetectedObject], rules: list[RuleState]) -> np.ndarray:
    """A copy of the frame with boxes and labels, and one line per rule at the top left."""
    import cv2

    image = np.ascontiguousarray(rgb.copy())
    scale = max(0.35, min(image.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for found in objects:
        if found.box is None:
            continue
        x1, y1, x2, y2 = found.box
        cv2.rectangle(image, (x1, y1), (x2, y2), BOX, thickness)
        label = found.label if found.count == 1 else f"{found.label} x{found.count}"
        cv2.putText(image, label, (x1 + 2, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, scale, BOX, thickness)
    line = round(28 * scale) + 4
    for row, rule in enumerate(rules, start=1):
        p = "-" if rule.probability is None else f"{rule.probability:.2f}"
        text = f"{rule.id}: {'ACTIVE' if rule.active else 'inactive'} p={p}"
        colour = ACTIVE if rule.active else INACTIVE
        origin = (6, row * line)
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        # A dark band behind each line keeps it readable on any scene.
        cv2.rectangle(image, (2, origin[1] - height - 3), (origin[0] + width + 4, origin[1] + baseline + 1), (0, 0, 0), -1)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness)
    return image


def snapshot(frame: Frame, objects: list[DetectedObject], rules: list[RuleState], image_format: str = "jpeg") -> Snapshot:
    import cv2

    drawn = draw(frame.rgb, objects, rules)
    ok, encoded = cv2.imencode(".jpg" if image_format == "jpeg" else ".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode the snapshot as {image_format}")
    height, width = drawn.shape[:2]
    return Snapshot(camera=frame.camera, frame_seq=frame.seq, frame_ts=round(frame.wall, 3), width=width, height=height,
                    media_type="image/jpeg" if image_format == "jpeg" else "image/png",
                    image=base64.b64encode(encoded.tobytes()).decode(), objects=objects, rules=rules)
