from pipeline_lib.cluster.quality import cluster_quality
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    cluster_quality(inp.manifest, inp.generated, inp.assignments, inp.models, inp.autoencoder, out.table,
                    out.per_image, snakemake.params.cfg, feature_net=inp.get("feature_net"),
                    threads=snakemake.threads, model_dir=inp.model)
