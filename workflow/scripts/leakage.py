from pipeline_lib.harness import stage_log
from pipeline_lib.leakage import check_data

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    check_data(inp.raw, inp.manifest, out.table, out.hashes)
