from pipeline_lib.harness import stage_log
from pipeline_lib.style_sweep import style_sweep

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    style_sweep(inp.autoencoder, inp.model, out.figure, out.table, snakemake.params.cfg, threads=snakemake.threads)
