rule report:
    input:
        recon=recon_tables(),
        classify=classify_tables(),
        evaluate=evaluate_tables(),
        manifest=rules.preprocess.output.manifest,
        generated=generated("manifest.parquet"),
        images=generated("images"),
        code=code("report"),
    output:
        autoencoder_comparison=report_outputs()["autoencoder_comparison"],
        classify_summary=report_outputs()["classify_summary"],
        evaluate_summary=report_outputs()["evaluate_summary"],
        f1_plot=report(report_outputs()["f1_plot"], caption="../report/f1_vs_ratio.rst", category="Classification"),
        grids=report_outputs()["grids"],
    params:
        cfg={"classes": CLASSES, "seed": config["seed"]},
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
