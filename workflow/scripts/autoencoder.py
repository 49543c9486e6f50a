from pipeline_lib.autoencoder import train_autoencoder
from pipeline_lib.io import stage_log

with stage_log(snakemake.log[0]):
    out = snakemake.output
    train_autoencoder(snakemake.input.manifest, out.model, out.train_log, out.recon, snakemake.params.cfg,
                      threads=snakemake.threads)
