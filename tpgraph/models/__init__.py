"""Model builders on top of the generic engine (the unrolled SRN)."""

from .srn import SRN, build_srn, PAPER_INIT

__all__ = ["SRN", "build_srn", "PAPER_INIT"]
