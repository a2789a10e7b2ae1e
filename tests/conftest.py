import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STREAMLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared corpora not found at {SHARED_DATA}")
    return SHARED_DATA

KENLM_ANCHOR = Path(os.environ.get("STREAMLM_KENLM", REPO.parent / "shared" / "anchors" / "kenlm"))


@pytest.fixture(scope="session")
def kenlm_anchor() -> Path:
    """KenLM's binaries and the PTB KN5 model (../shared/anchors/kenlm), or a skip."""
    if not (KENLM_ANCHOR / "ptb.kn5.arpa.gz").exists():
        pytest.skip(f"the KenLM anchor files are not at {KENLM_ANCHOR}")
    return KENLM_ANCHOR
