"""medaug: the code behind the Snakemake rules. Every rule calls one entry point of one module here."""
import os

# The pipeline never downloads: weights are local paths in the config or trained from scratch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
