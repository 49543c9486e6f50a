from pipeline_lib.harness import stage_log
from pipeline_lib.preprocess import preprocess

with stage_log(snakemake.log[0], snakemake):
    out = snakemake.output
    preprocess(snakemake.input.manifest, out.manifest, out.qc, snakemake.params.cfg, threads=snakemake.threads)
