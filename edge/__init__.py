"""Edge licence-plate reader. `from edge import Reader` reads still images (edge.api)."""

__version__ = "0.5.1"  # the one place the version is written (pyproject.toml reads it)


def __getattr__(name: str):
    # imported on first use, so `edge --version` and the CLI's help stay light
    if name in ("Reader", "ImageError"):
        from edge import api

        return getattr(api, name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
