from pipeline_lib.data import ingest
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    ingest(snakemake.output.manifest, snakemake.output.images, snakemake.params.cfg)
