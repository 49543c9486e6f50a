from pipeline_lib.harness import stage_log
from pipeline_lib.interpolation import interpolate

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    interpolate(inp.generated, inp.autoencoder, inp.get("feature_net"), out.images, out.manifest, out.sets,
                out.variance, out.figure, out.pca, snakemake.params.cfg, threads=snakemake.threads)
