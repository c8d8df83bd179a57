from nodes import primitives  # noqa: F401
