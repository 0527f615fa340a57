# Stage 7 (presentation): the paper's Tables 2-8, paper rows beside reproduced rows.
# Reads evaluation JSON files only.


rule table:
    input:
        lambda w: PLAN.table_inputs(w.table),
        code=PLAN.code("workflow_scripts/make_table.py"),
    output:
        csv=report(
            PLAN.table_file("{table}", "csv"),
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
        md=PLAN.table_file("{table}", "md"),
        tex=PLAN.table_file("{table}", "tex"),
    params:
        rows=lambda w: json.dumps(PLAN.table_rows(w.table)),
        prefix=lambda w, output: os.path.splitext(output.csv)[0],
    log:
        f"{LOGS}/tables/{{table}}.log",
    wildcard_constraints:
        table="|".join(TABLE_NAMES),
    conda:
        "../envs/qure.yaml"
    shell:
        "python workflow_scripts/make_table.py --table {wildcards.table} "
        "--rows {params.rows:q} --out-prefix {params.prefix} > {log} 2>&1"
