# Stage 3: the frozen image encoder's features of every image, computed once per
# (backbone family, benchmark) and memory-mapped by training, mining and evaluation.


rule extract_features_mini:
    input:
        encoder=PLAN.encoder(),
        stats=PLAN.dataset_stats("{dataset}"),
        code=PLAN.code("workflow_scripts/extract_features.py"),
    output:
        npy=PLAN.features("mini_blip2", "{dataset}"),
        index=PLAN.features_index("mini_blip2", "{dataset}"),
    params:
        model=PLAN.feature_args(),
        root=RULES.dataset_root,
        image_root=RULES.image_root_arg,
        progress="" if config["progress"] else "--no-progress",
        # evaluation.test_servers: CIRR test1 / CIRCO test images too.
        splits=RULES.feature_split_args,
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/features/mini_blip2/{{dataset}}.log",
    benchmark:
        f"{BENCH}/features/mini_blip2/{{dataset}}.tsv"
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/extract_features.py --dataset {wildcards.dataset} "
        "--root {params.root} {params.image_root} --encoder {input.encoder} --out {output.npy} "
        "{params.splits} --threads {threads} {params.model} {params.progress} > {log} 2>&1"


# The paper backbone: BLIP-2 ViT-L converted from LAVIS's weights (every key accounted
# for), whose frozen CLIP ViT-L features are cached once per benchmark.
WEIGHTS = config["data"]["real"]["weights_dir"]


rule convert_blip2_weights:
    input:
        blip2=f"{WEIGHTS}/blip2_pretrained_vitL.pth",
        vit=f"{WEIGHTS}/clip_vit_L.pth",
        vocab=f"{WEIGHTS}/bert-base-uncased-vocab.txt",
        code=PLAN.code("workflow_scripts/convert_blip2_weights.py"),
    output:
        model=PLAN.blip2_weights(),
        report=str(PLAN.results / "data" / "blip2_conversion.json"),
    params:
        # backbones.<name>.model_config: Blip2VitLConfig overrides ({} = the paper model).
        model_config=PLAN.blip2_config_arg(),
    log:
        f"{LOGS}/convert_blip2_weights.log",
    conda:
        "../envs/qure-gpu.yaml"
    shell:
        "python workflow_scripts/convert_blip2_weights.py --blip2 {input.blip2} "
        "--vit {input.vit} --vocab {input.vocab} --out {output.model} "
        "--report {output.report} {params.model_config} > {log} 2>&1"


rule extract_features_blip2:
    input:
        backbone=PLAN.blip2_weights(),
        stats=PLAN.dataset_stats("{dataset}"),
        code=PLAN.code("workflow_scripts/extract_features.py"),
    output:
        npy=PLAN.features("blip2_vitl", "{dataset}"),
        index=PLAN.features_index("blip2_vitl", "{dataset}"),
    params:
        model=PLAN.feature_args(),
        root=RULES.dataset_root,
        image_root=RULES.image_root_arg,
        progress="" if config["progress"] else "--no-progress",
        # evaluation.test_servers: CIRR test1 / CIRCO test images too.
        splits=RULES.feature_split_args,
        batch_size=config["feature_batch_size"],
    threads: config["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/features/blip2_vitl/{{dataset}}.log",
    benchmark:
        f"{BENCH}/features/blip2_vitl/{{dataset}}.tsv"
    conda:
        "../envs/qure-gpu.yaml"
    shell:
        "python workflow_scripts/extract_features.py --dataset {wildcards.dataset} "
        "--root {params.root} {params.image_root} --backbone {input.backbone} "
        "--out {output.npy} {params.splits} --batch-size {params.batch_size} --threads {threads} "
        "{params.model} {params.progress} > {log} 2>&1"
