from pipeline_lib.interpolation import interpolate
from pipeline_lib.io import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    interpolate(inp.generated, inp.autoencoder, inp.get("feature_net"), out.images, out.manifest, out.sets,
                out.variance, out.figure, out.pca, snakemake.params.cfg, threads=snakemake.threads)
