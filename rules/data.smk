# Stage 1: the benchmarks. Profile synthetic writes all four in their real on-disk
# formats; profile real fetches and verifies them (see README "Real data").


if config["profile"] == "synthetic":

    rule synthesize:
        input:
            code=PLAN.code("workflow_scripts/synthesize.py"),
        output:
            [PLAN.synthetic_manifest(d) for d in ("fashioniq", "cirr", "circo", "hp_fashioniq")],
        params:
            out=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
            scale=config["data"]["synthetic"]["scale"],
            seed=config["data"]["synthetic"]["seed"],
        log:
            f"{LOGS}/synthesize.log",
        benchmark:
            f"{BENCH}/synthesize.tsv"
        conda:
            "../envs/qure.yaml"
        shell:
            "python workflow_scripts/synthesize.py --out {params.out} --seed {params.seed} "
            "--scale {params.scale} --workers 2 > {log} 2>&1"


rule dataset_stats:
    input:
        lambda w: PLAN.dataset_ready(w.dataset),
        code=PLAN.code("workflow_scripts/dataset_stats.py"),
    output:
        PLAN.dataset_stats("{dataset}"),
    params:
        root=lambda w: PLAN.root(w.dataset),
        image_root=lambda w: (
            f"--image-root {config['data']['hp_image_root']}"
            if w.dataset == "hp_fashioniq" and config["data"]["hp_image_root"]
            else ""
        ),
        # Synthetic benchmarks must be complete; real ones report missing images instead.
        strict="--strict" if config["profile"] == "synthetic" else "",
    log:
        f"{LOGS}/dataset_stats/{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr|circo|hp_fashioniq",
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
        root=lambda w: PLAN.full_root(w.dataset),
        mirror=MIRROR,
        progress="" if config["progress"] else "--no-progress",
    retries: 2
    log:
        f"{LOGS}/data/fetch_annotations_{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr|circo|hp_fashioniq",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/fetch_annotations.py --dataset {wildcards.dataset} "
        "--root {params.root} --manifest {output} {params.mirror} {params.progress} > {log} 2>&1"


FIQ_IMAGES = {
    "urls": "--from-urls --image-data-links",
    "mirror": "--from-urls --images-from-mirror --image-data-links",
    "archive": f"--from-archive {REAL['fashioniq_images']['path']} --image-data-links",
    "folder": f"--from-folder {REAL['fashioniq_images']['path']} --image-data-links",
}[REAL["fashioniq_images"]["source"]]
IMAGE_SOURCES = {
    "fashioniq": FIQ_IMAGES,
    "circo": "",
    "cirr": f"--from-folder {REAL['cirr_images']}" if REAL["cirr_images"] else "",
}


if PLAN.subset() is not None:

    # data.subset: the first N queries per split and category with their images plus M
    # other gallery images, as dataset roots in the real format (qure.data.subset).
    rule subset_dataset:
        input:
            lambda w: PLAN.subset_inputs(w.dataset),
            code=PLAN.code("workflow_scripts/make_subset.py"),
        output:
            PLAN.subset_manifest("{dataset}"),
        params:
            root=lambda w: PLAN.full_root(w.dataset),
            out=lambda w: PLAN.subset_root(w.dataset),
            size=lambda w: PLAN.subset_args(w.dataset),
        log:
            f"{LOGS}/data/subset_{{dataset}}.log",
        wildcard_constraints:
            dataset="fashioniq|cirr|circo|hp_fashioniq",
        conda:
            "../envs/qure.yaml"
        shell:
            "python workflow_scripts/make_subset.py --dataset {wildcards.dataset} "
            "--root {params.root} --out {params.out} {params.size} > {log} 2>&1"


rule fetch_images:
    input:
        lambda w: PLAN.images_inputs(w.dataset),
    output:
        PLAN.images_report("{dataset}"),
    params:
        root=lambda w: PLAN.images_root(w.dataset),
        source=lambda w: IMAGE_SOURCES[w.dataset],
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
        lambda w: PLAN.verify_inputs(w.dataset),
        code=PLAN.code("workflow_scripts/verify_dataset.py"),
    output:
        PLAN.verified("{dataset}"),
    params:
        root=lambda w: PLAN.root(w.dataset),
        image_root=lambda w: (
            f"--image-root {config['data']['hp_image_root']}"
            if w.dataset == "hp_fashioniq" and config["data"]["hp_image_root"]
            else ""
        ),
        catalogue=lambda w: PLAN.verify_args(w.dataset),
    log:
        f"{LOGS}/data/verify_{{dataset}}.log",
    wildcard_constraints:
        dataset="fashioniq|cirr|circo|hp_fashioniq",
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
        out=lambda w, output: os.path.dirname(output.blip2),
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
