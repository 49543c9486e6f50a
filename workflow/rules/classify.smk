rule classify:
    input:
        manifest=rules.preprocess.output.manifest,
        generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
        images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
        code=code("classify"),
    output:
        table=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/scores.parquet",
        train_log=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/train_log.parquet",
    params:
        cfg=classify_params,
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}.log",
    benchmark:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}.benchmark.tsv"
    script:
        "../scripts/classify.py"
