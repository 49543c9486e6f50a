rule preprocess:
    input:
        manifest=rules.ingest.output.manifest,
        code=code("preprocess"),
    output:
        manifest=f"{R}/preprocess/manifest.parquet",
        qc=f"{R}/preprocess/qc.parquet",
        images=directory(f"{R}/preprocess/images"),
        masks=directory(f"{R}/preprocess/masks"),
        lesion_crops=directory(f"{R}/preprocess/lesion_crops"),
    params:
        cfg=PLAN.preprocess_params(),
    threads: 2
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/preprocess.log",
    benchmark:
        f"{LOGS}/preprocess.benchmark.tsv"
    script:
        "../scripts/preprocess.py"


rule leakage:
    input:
        raw=rules.ingest.output.manifest,
        manifest=rules.preprocess.output.manifest,
        code=code("leakage"),
    output:
        table=LEAKAGE,
        hashes=f"{R}/preprocess/hashes.parquet",
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/leakage.log",
    benchmark:
        f"{LOGS}/leakage.benchmark.tsv"
    script:
        "../scripts/leakage.py"
