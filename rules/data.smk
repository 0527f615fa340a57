# Stage 1: the benchmarks. Profile synthetic writes all four in their real on-disk
# formats; profile real fetches and verifies them (see README "Real data").


if config["profile"] == "synthetic":

    rule synthesize:
        input:
            code=PLAN.code("workflow_scripts/synthesize.py"),
        output:
            [PLAN.synthetic_manifest(d) for d in ("fashioniq", "cirr", "circo", "hp_fashioniq")],
        params:
            out=RULES.output_parent,
            scale=config["data"]["synthetic"]["scale"],
            seed=config["data"]["synthetic"]["seed"],
        threads: config["threads"]
        log:
            f"{LOGS}/synthesize.log",
        benchmark:
            f"{BENCH}/synthesize.tsv"
        conda:
            "../envs/qure.yaml"
        shell:
            "python workflow_scripts/synthesize.py --out {params.out} --seed {params.seed} "
            "--scale {params.scale} --workers {threads} > {log} 2>&1"


rule dataset_stats:
    input:
        RULES.dataset_ready,
        code=PLAN.code("workflow_scripts/dataset_stats.py"),
    output:
        PLAN.dataset_stats("{dataset}"),
    params:
        root=RULES.dataset_root,
        image_root=RULES.image_root_arg,
        # Synthetic benchmarks must be complete; real ones report missing images instead.
        strict="--strict" if config["profile"] == "synthetic" else "",
    log:
        f"{LOGS}/dataset_stats/{{dataset}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/dataset_stats.py --dataset {wildcards.dataset} "
        "--root {params.root} {params.image_root} {params.strict} --out {output} > {log} 2>&1"


# --- profile real: fetch, lay out and verify (logic in qure.download) ----------------------

REAL = config["data"]["real"]
# --base-url (a mirror) and --substitutes (its files that are not the upstream bytes).
MIRROR = PLAN.download_args()


rule fetch_annotations:
    output:
        PLAN.annotations_manifest("{dataset}"),
    params:
        root=RULES.full_root,
        mirror=MIRROR,
        progress="" if config["progress"] else "--no-progress",
    retries: 2
    log:
        f"{LOGS}/data/fetch_annotations_{{dataset}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/fetch_annotations.py --dataset {wildcards.dataset} "
        "--root {params.root} --manifest {output} {params.mirror} {params.progress} > {log} 2>&1"


if PLAN.subset() is not None:

    # data.subset: the first N queries per split and category with their images plus M
    # other gallery images, as dataset roots in the real format (qure.data.subset).
    rule subset_dataset:
        input:
            RULES.subset_inputs,
            code=PLAN.code("workflow_scripts/make_subset.py"),
        output:
            PLAN.subset_manifest("{dataset}"),
        params:
            root=RULES.full_root,
            out=RULES.subset_root,
            size=RULES.subset_size_args,
        log:
            f"{LOGS}/data/subset_{{dataset}}.log",
        conda:
            "../envs/qure.yaml"
        shell:
            "python workflow_scripts/make_subset.py --dataset {wildcards.dataset} "
            "--root {params.root} --out {params.out} {params.size} > {log} 2>&1"


rule fetch_images:
    input:
        RULES.images_inputs,
    output:
        PLAN.images_report("{dataset}"),
    params:
        root=RULES.images_root,
        source=RULES.image_source_args,
        mirror=MIRROR,
        progress="" if config["progress"] else "--no-progress",
    log:
        f"{LOGS}/data/fetch_images_{{dataset}}.log",
    benchmark:
        f"{BENCH}/data/fetch_images_{{dataset}}.tsv"
    wildcard_constraints:
        dataset="fashioniq|cirr|circo",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/fetch_images.py --dataset {wildcards.dataset} "
        "--root {params.root} --report {output} {params.source} {params.mirror} {params.progress} "
        "> {log} 2>&1"


rule verify_dataset:
    input:
        RULES.verify_inputs,
        code=PLAN.code("workflow_scripts/verify_dataset.py"),
    output:
        PLAN.verified("{dataset}"),
    params:
        root=RULES.dataset_root,
        image_root=RULES.image_root_arg,
        catalogue=RULES.verify_args,
    log:
        f"{LOGS}/data/verify_{{dataset}}.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/verify_dataset.py --dataset {wildcards.dataset} "
        "--root {params.root} {params.image_root} {params.catalogue} --out {output} "
        "> {log} 2>&1"


rule fetch_weights:
    output:
        blip2=f"{REAL['weights_dir']}/blip2_pretrained_vitL.pth",
        clip=f"{REAL['weights_dir']}/clip_vit_L.pth",
        vocab=f"{REAL['weights_dir']}/bert-base-uncased-vocab.txt",
        manifest=str(PLAN.results / "data" / "weights.json"),
    params:
        out=RULES.output_folder,
        mirror=MIRROR,
        progress="" if config["progress"] else "--no-progress",
    retries: 2
    log:
        f"{LOGS}/data/fetch_weights.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/fetch_weights.py --out-dir {params.out} "
        "--manifest {output.manifest} {params.mirror} {params.progress} > {log} 2>&1"
