# medaug: from a small set of medical images to a validated synthetic data set.
# Stages: ingest -> preprocess -> autoencoder -> diffusion -> generate -> evaluate / classify -> report.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


def drop_nulls(cfg):
    """A file given with --configfile is merged into config/config.yaml; setting an entry to null there removes
    what config/config.yaml gives: an optional section (cluster, trajectory, interpolation) or a named entry
    (autoencoder, diffusion variant, generation setting, classifier count set)."""
    for section in ("cluster", "trajectory", "interpolation"):
        if section in cfg and cfg[section] is None:
            del cfg[section]
    for path in (("autoencoder",), ("diffusion", "variants"), ("generate", "settings"), ("classify", "count_sets")):
        node = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            for name in [n for n, v in node.items() if v is None]:
                del node[name]


drop_nulls(config)
validate(config, "workflow/schemas/config.schema.yaml")


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
