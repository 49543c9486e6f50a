from pipeline_lib.autoencoder import train_autoencoder
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    train_autoencoder(inp.manifest, out.model, out.train_log, snakemake.params.cfg,
                      feature_net=inp.get("feature_net"), threads=snakemake.threads)
