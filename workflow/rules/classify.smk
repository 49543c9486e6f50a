rule classify:
    input:
        unpack(classify_copies),  # the memorization audit, with memorization.exclude_copies
        leakage=LEAKAGE,  # the leakage checks pass before any training
        hashes=rules.leakage.output.hashes,
        manifest=rules.preprocess.output.manifest,
        generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
        images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
        code=code("classify"),
    output:
        table=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/scores.parquet",
        train_log=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/train_log.parquet",
        training_set=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/training_set.parquet",
        predictions=f"{R}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}/predictions.parquet",
    params:
        cfg=params_of(PLAN.classify_params, "variant", "setting", "seed", "arch", "point"),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}.log",
    benchmark:
        f"{LOGS}/classify/{{variant}}/{{setting}}/seed{{seed}}/{{arch}}/{{point}}.benchmark.tsv"
    script:
        "../scripts/classify.py"


rule classify_statistics:
    input:
        predictions=classify_tables("predictions.parquet"),
        code=code("statistics"),
    output:
        intervals=f"{R}/classify/statistics/intervals.parquet",
        differences=f"{R}/classify/statistics/differences.parquet",
        delong=f"{R}/classify/statistics/delong.parquet",
    params:
        cfg=PLAN.statistics_params(),
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/classify_statistics.log",
    benchmark:
        f"{LOGS}/classify_statistics.benchmark.tsv"
    script:
        "../scripts/classify_statistics.py"
