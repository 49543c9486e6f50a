# medaug: from a small set of medical images to a validated synthetic data set.
# Stages: ingest -> preprocess -> autoencoder -> diffusion -> generate -> evaluate / classify -> report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# common.smk removes the entries a --configfile sets to null and validates the config against the schema.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/autoencoder.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/trajectory.smk"
include: "workflow/rules/interpolation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
