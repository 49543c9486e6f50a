rule ingest:
    input:
        code=code("ingest"),
    output:
        manifest=f"{R}/data/manifest.parquet",
        images=directory(f"{R}/data/images"),
    params:
        cfg=PLAN.data_params(),
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/ingest.log",
    script:
        "../scripts/ingest.py"
