if "interpolation" in config:

    rule interpolation:
        input:
            unpack(interpolation_inputs),
            generated=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
            images=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images",
            code=code("interpolation"),
        output:
            images=directory(f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/images"),
            manifest=f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
            sets=f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/sets.parquet",
            variance=f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/semantic_variance.parquet",
            figure=f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/interpolation.png",
            pca=f"{R}/interpolation/{{variant}}/{{setting}}/seed{{seed}}/pca.png",
        params:
            cfg=params_of(PLAN.interpolation_params, "variant", "setting", "seed"),
        threads: 1
        resources:
            gpu=1,
        conda:
            "../../envs/medaug.yaml"
        log:
            f"{LOGS}/interpolation/{{variant}}/{{setting}}/seed{{seed}}.log",
        benchmark:
            f"{LOGS}/interpolation/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
        script:
            "../scripts/interpolation.py"
