from pipeline_lib.autoencoder import reconstruction_metrics
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    reconstruction_metrics(inp.manifest, inp.model, out.table, out.per_image, snakemake.params.cfg,
                           feature_net=inp.get("feature_net"), threads=snakemake.threads)
