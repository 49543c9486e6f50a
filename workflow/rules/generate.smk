rule generate:
    input:
        manifest=rules.preprocess.output.manifest,
        autoencoder=variant_autoencoder_model,
        model=f"{R}/diffusion/{{variant}}/model",
        code=code("generate"),
    output:
        images=directory(f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/images"),
        manifest=f"{R}/generate/{{variant}}/{{setting}}/seed{{seed}}/manifest.parquet",
    params:
        cfg=params_of(PLAN.generate_params, "variant", "setting", "seed"),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/generate/{{variant}}/{{setting}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/generate/{{variant}}/{{setting}}/seed{{seed}}.benchmark.tsv"
    script:
        "../scripts/generate.py"
