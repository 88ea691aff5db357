from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.preprocess_stage1(
    p.data_dir, snakemake.wildcards.case, snakemake.input.statistics, p.cfg, snakemake.output[0]
)
