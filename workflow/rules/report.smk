rule report:
    input:
        recon=recon_tables(),
        classify=classify_tables(),
        evaluate=evaluate_tables(),
        cluster_quality=cluster_quality_tables(),
        manifest=rules.preprocess.output.manifest,
        generated=generated("manifest.parquet"),
        images=generated("images"),
        code=code("report"),
    output:
        **report_outputs(flagged=True),
    params:
        cfg={"classes": CLASSES, "seed": config["seed"]},
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
