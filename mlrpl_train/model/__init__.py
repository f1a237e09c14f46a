"""Models: the backbone, the partial-BCE baseline, and DSRB (Section 4 of the paper)."""

from .backbone import build_backbone  # noqa: F401
from .factory import build_model  # noqa: F401
