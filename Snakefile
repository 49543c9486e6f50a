# medaug: from a small set of medical images to a validated synthetic data set.
# Stages, in the order they run: ingest -> preprocess (+ leakage checks) -> feature_net (the domain network) ->
# autoencoder -> cluster -> diffusion -> generate -> evaluate (-> memorization), classify, cluster_quality,
# trajectory, interpolation -> report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# common.smk checks the config (pipeline_lib/config.py) and holds the paths and input functions.
include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/feature_net.smk"
include: "workflow/rules/autoencoder.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/memorization.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/trajectory.smk"
include: "workflow/rules/style_sweep.smk"
include: "workflow/rules/interpolation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
