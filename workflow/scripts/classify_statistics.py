from pipeline_lib.harness import stage_log
from pipeline_lib.stats import statistics

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    statistics(inp.predictions, out.intervals, out.differences, out.delong, snakemake.params.cfg)
