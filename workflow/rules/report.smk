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
        cfg={"classes": CLASSES, "seed": config["seed"], "pca": pca_inputs(), "roc_point": ROC_POINT},
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/report.log",
    script:
        "../scripts/report.py"
