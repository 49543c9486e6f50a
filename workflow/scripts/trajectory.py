from pipeline_lib.harness import stage_log
from pipeline_lib.trajectory import traverse

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    traverse(inp.autoencoder, inp.model, inp.classifier, out.table, out.per_image, out.figure, snakemake.params.cfg,
             threads=snakemake.threads, latents_out=out.latents)
