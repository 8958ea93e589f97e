"""Model packages: the catalog, the manifest, and the recipe that builds packages.

This folder is the ``edged.models`` package (pyproject.toml maps it), so a checkout keeps
the catalog, the recipe and the bundled tiny model together at the top level.
"""
