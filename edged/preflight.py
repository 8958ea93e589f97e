"""What ``edged run`` would fail on at start, found without starting anything, so that
``edged config check`` catches it and ``edged run`` says it in one line and exits 78 rather
than failing half-started."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edged.settings import Settings

if TYPE_CHECKING:
    from edged.models.installed import ModelChoice


def start_problems(settings: Settings, package_sizes: bool = True) -> list[str]:
    """One line per thing the daemon could not start with: the bus's key files and
    allow-list folder, and the model package ``[model] path`` chooses (present, and with
    ``package_sizes`` each file of the size its manifest says)."""
    return check_start(settings, package_sizes)[0]


def check_start(settings: Settings, package_sizes: bool = True) -> tuple[list[str], ModelChoice | None]:
    """start_problems, and the model package chosen (None when none could be): the one place
    ``[model] path`` is resolved, so the daemon runs what it checked."""
    from edged.bus.security import read_allowed_keys, server_keypair
    from edged.models.installed import ModelSelectionError, choose_model
    from edged.models.integrity import PackageDamaged, check_package

    problems = []
    bus = settings.bus
    if bus.curve_secret_key is not None:
        try:
            server_keypair(bus.curve_secret_key)
        except OSError as error:
            problems.append(str(error))
    if bus.curve_allow is not None:
        try:
            read_allowed_keys(bus.curve_allow)
        except OSError as error:
            problems.append(str(error))
    try:
        model = choose_model(settings.model)
    except ModelSelectionError as error:
        return [*problems, str(error)], None
    if package_sizes:
        try:
            check_package(model.path, None, hashes=False)
        except PackageDamaged as error:
            problems.append(f"[model] path: the package {model.path} is damaged: {error}")
    return problems, model
