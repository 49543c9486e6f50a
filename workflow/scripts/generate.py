from pipeline_lib.generate import generate
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    generate(inp.manifest, inp.autoencoder, inp.model, out.images, out.manifest, snakemake.params.cfg,
             threads=snakemake.threads)
