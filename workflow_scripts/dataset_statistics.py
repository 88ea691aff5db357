from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.dataset_statistics(
    p.data_dir, p.case_ids, snakemake.input.splits, p.cfg, snakemake.output.json, snakemake.output.csv
)
