# Stage 8 (presentation): the paper's figures plus Fig. 9, from run histories, score
# snapshots and analysis files only.


rule fig4_negative_strategies:
    input:
        [path for _, path in PLAN.figure_histories("fig4_negative_strategies")],
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig4_negative_strategies", "png"),
            caption="../report/fig4_negative_strategies.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig4_negative_strategies", "pdf"),
    params:
        prefix=RULES.output_prefix,
        histories=PLAN.history_args("fig4_negative_strategies"),
        metric=PLAN.headline_metric(),
        dataset=config["study"]["strategy_dataset"],
        profile=config["profile"],
    log:
        f"{LOGS}/figures/fig4_negative_strategies.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig4 {params.histories} --metric {params.metric} "
        "--dataset {params.dataset} --profile {params.profile} -o {params.prefix} > {log} 2>&1"


rule fig5_hard_negative_set_size:
    input:
        [path for _, path in PLAN.figure_histories("fig5_hard_negative_set_size")],
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig5_hard_negative_set_size", "png"),
            caption="../report/fig5_hard_negative_set_size.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig5_hard_negative_set_size", "pdf"),
    params:
        prefix=RULES.output_prefix,
        histories=PLAN.history_args("fig5_hard_negative_set_size"),
        profile=config["profile"],
    log:
        f"{LOGS}/figures/fig5_hard_negative_set_size.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig5 {params.histories} "
        "--profile {params.profile} -o {params.prefix} > {log} 2>&1"


rule fig6_hard_negative_examples:
    input:
        examples=PLAN.examples(config["study"]["strategy_dataset"]),
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig6_hard_negative_examples", "png"),
            caption="../report/fig6_hard_negative_examples.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig6_hard_negative_examples", "pdf"),
    params:
        prefix=RULES.output_prefix,
    log:
        f"{LOGS}/figures/fig6_hard_negative_examples.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig6 --examples {input.examples} -o {params.prefix} "
        "> {log} 2>&1"


rule fig7_score_steepness:
    input:
        snapshots=PLAN.snapshots(),
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig7_score_steepness", "png"),
            caption="../report/fig7_score_steepness.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig7_score_steepness", "pdf"),
    params:
        prefix=RULES.output_prefix,
        profile=config["profile"],
    log:
        f"{LOGS}/figures/fig7_score_steepness.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig7 --snapshots {input.snapshots} "
        "--profile {params.profile} -o {params.prefix} > {log} 2>&1"


rule fig8_score_steepness_aggregate:
    input:
        snapshots=PLAN.snapshots(),
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig8_score_steepness_aggregate", "png"),
            caption="../report/fig8_score_steepness_aggregate.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig8_score_steepness_aggregate", "pdf"),
    params:
        prefix=RULES.output_prefix,
        profile=config["profile"],
    log:
        f"{LOGS}/figures/fig8_score_steepness_aggregate.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig8 --snapshots {input.snapshots} "
        "--profile {params.profile} -o {params.prefix} > {log} 2>&1"


rule fig9_false_negatives_in_hard_sets:
    input:
        audit=PLAN.audit(config["study"]["strategy_dataset"]),
        histories=[path for _, path in PLAN.figure_histories("fig9_false_negatives_in_hard_sets")],
        code=PLAN.code("workflow_scripts/make_figure.py"),
    output:
        png=report(
            PLAN.figure_file("fig9_false_negatives_in_hard_sets", "png"),
            caption="../report/fig9_false_negatives_in_hard_sets.rst",
            category="Figures",
        ),
        pdf=PLAN.figure_file("fig9_false_negatives_in_hard_sets", "pdf"),
    params:
        prefix=RULES.output_prefix,
        histories=PLAN.history_args("fig9_false_negatives_in_hard_sets"),
    log:
        f"{LOGS}/figures/fig9_false_negatives_in_hard_sets.log",
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_figure.py fig9 --audit {input.audit} "
        "{params.histories} -o {params.prefix} > {log} 2>&1"
