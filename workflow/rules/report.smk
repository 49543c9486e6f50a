# The report: the summary tables, the figures and CSV copies of the main tables (report_outputs in common.smk);
# `snakemake --report` shows the items of REPORT_ITEMS by category with their captions (workflow/report/).

# What `snakemake --report` shows: output key -> (category, caption in workflow/report/). The Parquet tables go
# into the report as CSV copies (report/tables/<key>.csv), which it renders as tables.
REPORT_ITEMS = {
    "autoencoder_comparison": ("Autoencoders", "autoencoder_comparison.rst"),
    "evaluate_summary": ("Image quality", "evaluate_summary.rst"),
    "grids": ("Image quality", "grid.rst"),
    "pca": ("Image quality", "pca.rst"),
    "classify_tables": ("Classification", "classify_tables.rst"),
    "f1_plot": ("Classification", "f1_vs_ratio.rst"),
    "f1_scale_plot": ("Classification", "f1_vs_scale.rst"),
    "roc_plot": ("Classification", "roc.rst"),
    "cluster_generation": ("Clusters", "cluster_generation.rst"),
    "trajectory_summary": ("Trajectory traversal", "trajectory_summary.rst"),
    "trajectory_detail": ("Trajectory traversal", "trajectory_detail.rst"),
    "semantic_variance": ("Interpolation", "semantic_variance.rst"),
    "memorization": ("Memorization", "memorization.rst"),
    "memorization_figures": ("Memorization", "memorization_figures.rst"),
}
REPORT_TABLES = ("autoencoder_comparison", "evaluate_summary", "classify_tables", "cluster_generation",
                 "trajectory_summary", "trajectory_detail", "semantic_variance", "memorization")


rule report:
    input:
        recon=recon_tables(),
        classify=classify_tables(),
        **classify_statistics_tables(),
        evaluate=evaluate_tables(),
        cluster_quality=cluster_quality_tables(),
        trajectory=trajectory_tables(),
        interpolation=interpolation_tables(),
        memorization=memorization_tables(),
        memorization_figures=memorization_figures(),
        manifest=rules.preprocess.output.manifest,
        real_features=real_features_input(),
        gen_features=[f for _, _, f in pca_inputs()],
        generated=generated("manifest.parquet"),
        images=generated("images"),
        code=code("report"),
    output:
        **report_outputs(flagged=True),
    params:
        cfg=PLAN.report_params(pca_inputs()),
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
