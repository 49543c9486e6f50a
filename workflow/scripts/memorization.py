from pipeline_lib.harness import stage_log
from pipeline_lib.memorization import memorization

with stage_log(snakemake.log[0], snakemake):
    inp, out = snakemake.input, snakemake.output
    memorization(inp.manifest, inp.generated, inp.real_features, inp.gen_features, out.images, out.summary,
                 out.figure, snakemake.params.cfg)
