# The report: the summary tables, the figures and CSV copies of the main tables; `snakemake --report` shows the
# items of REPORT_ITEMS by category with their captions (workflow/report/).
from pipeline_lib.config import ROC_POINT  # noqa: E402


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
    "semantic_variance": ("Interpolation", "semantic_variance.rst"),
}
REPORT_TABLES = ("autoencoder_comparison", "evaluate_summary", "classify_tables", "cluster_generation",
                 "trajectory_summary", "semantic_variance")


def report_outputs(flagged=False):
    """The report's files: the class-based tables and figures when class-conditioned variants are generated, the
    cluster-generation table when cluster-conditioned ones are, CSV copies of the main tables. ``flagged``: the
    REPORT_ITEMS marked for `--report` with their category and caption."""
    o = {"autoencoder_comparison": f"{R}/report/autoencoder_comparison.parquet"}
    if any(v not in CLUSTER_VARIANTS for v, _ in GRID):
        o |= {"classify_summary": f"{R}/report/classify_summary.parquet",
              "classify_tables": f"{R}/report/classify_tables.parquet",
              "classify_per_class": f"{R}/report/classify_per_class.parquet",
              "evaluate_summary": f"{R}/report/evaluate_summary.parquet",
              "f1_plot": f"{R}/report/figures/f1_vs_ratio.png",
              "grids": [f"{R}/report/figures/grid_{c}.png" for c in CLASSES],
              "pca": [f"{R}/report/figures/pca_{v}_{s}.png" for v, s in GRID if v not in CLUSTER_VARIANTS]}
        if config["classify"]["scales"]:
            o["f1_scale_plot"] = f"{R}/report/figures/f1_vs_scale.png"
        if ROC_POINT in PLAN.points:
            o["roc_plot"] = f"{R}/report/figures/roc_{ROC_POINT}.png"
    if any(v in CLUSTER_VARIANTS for v, _ in GRID):
        o["cluster_generation"] = f"{R}/report/cluster_generation.parquet"
    if trajectory_tables():
        o["trajectory_summary"] = f"{R}/report/trajectory_summary.parquet"
    if interpolation_tables():
        o["semantic_variance"] = f"{R}/report/semantic_variance.parquet"
    o |= {f"{key}_csv": f"{R}/report/tables/{key}.csv" for key in REPORT_TABLES if key in o}
    if not flagged:
        return o

    def mark(key, path):
        category, caption = REPORT_ITEMS[key]
        return report(path, caption=f"../report/{caption}", category=category)

    out = {}
    for key, value in o.items():
        item = key[:-4] if key.endswith("_csv") else key
        if item in REPORT_ITEMS and (key.endswith("_csv") or item not in REPORT_TABLES):
            value = [mark(item, v) for v in value] if isinstance(value, list) else mark(item, value)
        out[key] = value
    return out


def final_outputs():
    return [*cluster_outputs(), *(p for v in report_outputs().values() for p in ([v] if isinstance(v, str) else v))]


rule report:
    input:
        recon=recon_tables(),
        classify=classify_tables(),
        evaluate=evaluate_tables(),
        cluster_quality=cluster_quality_tables(),
        trajectory=trajectory_tables(),
        interpolation=interpolation_tables(),
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
