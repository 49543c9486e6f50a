rule style_sweep:
    input:
        autoencoder=variant_autoencoder_model,
        model=f"{R}/diffusion/{{variant}}/model",
        code=code("style_sweep"),
    output:
        figure=f"{R}/style_sweep/{{variant}}/sweep.png",
        table=f"{R}/style_sweep/{{variant}}/sweep.parquet",
    params:
        cfg=lambda wildcards: PLAN.style_sweep_params(wildcards.variant),
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/medaug.yaml"
    log:
        f"{LOGS}/style_sweep/{{variant}}.log",
    benchmark:
        f"{LOGS}/style_sweep/{{variant}}.benchmark.tsv"
    script:
        "../scripts/style_sweep.py"
