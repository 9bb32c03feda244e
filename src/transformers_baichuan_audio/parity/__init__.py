"""The parity checker: runs every stage of a recorded reference fixture (the ORIGINAL implementation's outputs on a
small model in the original checkpoint layout) through this package and compares.

* :mod:`.checker`: :func:`run_parity` (``baichuan-audio check-parity FIXTURE_DIR``), the stages and tolerances;
* :mod:`.fixture`: :class:`ReferenceFixture`, the reader of the fixture format, and the fixture lookup.
"""

from .checker import TOLERANCES, ParityContext, ParityReport, StageResult, run_parity
from .fixture import FIXTURE_ENV, SHARED_FIXTURE, ReferenceFixture, checkout_fixture_dir, default_fixture_dir

__all__ = [
    "FIXTURE_ENV",
    "SHARED_FIXTURE",
    "TOLERANCES",
    "ParityContext",
    "ParityReport",
    "ReferenceFixture",
    "StageResult",
    "checkout_fixture_dir",
    "default_fixture_dir",
    "run_parity",
]
