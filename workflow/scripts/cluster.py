from pipeline_lib.cluster.fit import cluster_stage
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    cluster_stage(inp.manifest, inp.autoencoder, out.indices, out.selection, out.assignments, snakemake.params.cfg,
                  models_out=out.models, threads=snakemake.threads)
