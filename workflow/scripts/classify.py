from pipeline_lib.classify import classify
from pipeline_lib.io import stage_log

with stage_log(snakemake.log[0]):
    inp, out = snakemake.input, snakemake.output
    classify(inp.manifest, inp.generated, out.table, out.train_log, snakemake.params.cfg, threads=snakemake.threads)
