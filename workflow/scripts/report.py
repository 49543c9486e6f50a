from pipeline_lib.io import stage_log
from pipeline_lib.report import report

with stage_log(snakemake.log[0]):
    inp, out = snakemake.input, snakemake.output
    outputs = {"autoencoder_comparison": out.autoencoder_comparison, "classify_summary": out.classify_summary, "evaluate_summary": out.evaluate_summary,
               "f1_plot": out.f1_plot, "grids": list(out.grids)}
    report(inp.recon, inp.classify, inp.evaluate, inp.manifest, inp.generated, outputs, snakemake.params.cfg)
