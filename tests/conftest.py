import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tests.helpers import make_tokenizer_dir

    return make_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))
