from pipeline_lib.classify import classify
from pipeline_lib.harness import stage_log

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    classify(inp.manifest, inp.generated, out.table, out.train_log, out.training_set, snakemake.params.cfg,
             hashes=inp.hashes, threads=snakemake.threads, predictions_out=out.predictions,
             copies=inp.get("copies"))
