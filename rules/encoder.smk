# Stage 2 (mini backbone only): the analogue of BLIP-2's pretraining. A separate synthetic
# corpus (another seed; never the study's images or queries) pretrains the frozen image
# encoder (image-caption contrastive) and then each mini Q-Former (in-batch contrastive),
# so study runs start, like QuRe from BLIP-2, from a model that already ranks.

PRETRAIN = config["pretraining"]
PRETRAIN_SETS = ("fashioniq", "cirr")


if PRETRAIN["enabled"]:

    rule synthesize_pretraining_corpus:
        input:
            code=PLAN.code("workflow_scripts/synthesize.py"),
        output:
            [PLAN.pretraining_manifest(d) for d in PRETRAIN_SETS],
        params:
            out=RULES.output_parent,
            scale=config["data"]["synthetic"]["scale"],
            seed=PRETRAIN["corpus_seed"],
        threads: config["threads"]
        log:
            f"{LOGS}/synthesize_pretraining_corpus.log",
        benchmark:
            f"{BENCH}/synthesize_pretraining_corpus.tsv"
        conda:
            "../envs/qure.yaml"
        shell:
            "python workflow_scripts/synthesize.py --out {params.out} --seed {params.seed} "
            "--scale {params.scale} --benchmarks fashioniq cirr --workers {threads} > {log} 2>&1"


rule pretrain_encoder:
    input:
        PLAN.encoder_inputs(),
        code=PLAN.code("workflow_scripts/pretrain_encoder.py"),
    output:
        PLAN.encoder(),
    params:
        benchmarks=" ".join(f"--benchmark {d}={r}" for d, r in PLAN.encoder_benchmarks().items()),
        enc=config["encoder"],
        seed=config["seed"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/pretrain_encoder.log",
    benchmark:
        f"{BENCH}/pretrain_encoder.tsv"
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/pretrain_encoder.py {params.benchmarks} --out {output} "
        "--image-size {params.enc[image_size]} --epochs {params.enc[epochs]} "
        "--batch-size {params.enc[batch_size]} --lr {params.enc[lr]} --seed {params.seed} "
        "--threads {threads} > {log} 2>&1"


rule extract_pretraining_features:
    input:
        encoder=PLAN.encoder(),
        manifest=PLAN.pretraining_manifest("{dataset}"),
        code=PLAN.code("workflow_scripts/extract_features.py"),
    output:
        npy=PLAN.features("mini_blip2", "pretrain_{dataset}"),
        index=PLAN.features_index("mini_blip2", "pretrain_{dataset}"),
    params:
        model=PLAN.feature_args(),
        root=RULES.pretraining_root,
        progress="" if config["progress"] else "--no-progress",
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/features/mini_blip2/pretrain_{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/extract_features.py --dataset {wildcards.dataset} "
        "--root {params.root} --encoder {input.encoder} --out {output.npy} "
        "--threads {threads} {params.model} {params.progress} > {log} 2>&1"


rule pretrain_qformer:
    input:
        encoder=PLAN.encoder(),
        features=[PLAN.features("mini_blip2", f"pretrain_{d}") for d in PRETRAIN_SETS],
        code=PLAN.code("workflow_scripts/pretrain_qformer.py"),
    output:
        PLAN.pretrained("{backbone}"),
    params:
        device=config["device"],
        benchmarks=" ".join(f"--benchmark {d}={PLAN.pretraining_root(d)}" for d in PRETRAIN_SETS),
        features=" ".join(
            f"--features {d}={PLAN.features('mini_blip2', f'pretrain_{d}')}" for d in PRETRAIN_SETS
        ),
        out=RULES.output_folder,
        settings=json.dumps({**PRETRAIN["settings"], "seed": config["seed"]}, sort_keys=True),
        single_vector=RULES.single_vector_arg,
        progress="" if config["progress"] else "--no-progress",
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/pretrain_qformer/{{backbone}}.log",
    benchmark:
        f"{BENCH}/pretrain_qformer/{{backbone}}.tsv"
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/pretrain_qformer.py {params.benchmarks} {params.features} "
        "--encoder {input.encoder} --out {params.out} --train-json {params.settings:q} "
        "{params.single_vector} --threads {threads} --device {params.device} {params.progress} "
        "> {log} 2>&1"
