"""Print edged's runtime requirements from pyproject.toml, one per line, with those of the
extras named after --extras, leaving out the distributions named after --without (install.sh
puts GPU builds in their place on a Jetson).

    python3 deploy/requirements.py pyproject.toml --without onnxruntime onnxruntime-genai --extras bindings
"""

from __future__ import annotations

import argparse
import re
import tomllib


def distribution(requirement: str) -> str:
    """The distribution a requirement names, normalised (PEP 503)."""
    name = re.match(r"\s*([A-Za-z0-9._-]+)", requirement)
    return re.sub(r"[-_.]+", "-", name.group(1)).lower() if name else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--without", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--extras", nargs="*", default=[], metavar="EXTRA")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    requirements = list(project["dependencies"])
    for extra in args.extras:
        requirements += project["optional-dependencies"][extra]
    left_out = {distribution(name) for name in args.without}
    for requirement in requirements:
        if distribution(requirement) not in left_out:
            print(requirement)


if __name__ == "__main__":
    main()
