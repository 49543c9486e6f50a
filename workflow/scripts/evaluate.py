from pipeline_lib.evaluate import evaluate_synthetic
from pipeline_lib.io import stage_log

with stage_log(snakemake.log[0]):
    inp = snakemake.input
    evaluate_synthetic(inp.manifest, inp.feature_net, inp.generated, snakemake.output.table, snakemake.params.cfg,
                       threads=snakemake.threads)
