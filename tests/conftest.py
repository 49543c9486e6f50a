"""Shared fixtures: tiny configs and data made on the fly; nothing is downloaded and no GPU is needed."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return yaml.safe_load((ROOT / "tests" / "tiny_config.yaml").read_text())
