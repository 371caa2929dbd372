"""What both widgets share: the binary array codec (:mod:`.codec`, the Python half of
``js/common/codec.ts``), the check of their keyword options (:mod:`.options`) and ``STATIC``,
the folder of their bundled JavaScript."""

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent.parent / "static"
