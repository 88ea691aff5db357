from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.evaluate_case(
    p.data_dir,
    snakemake.wildcards.case,
    snakemake.input.prediction,
    snakemake.input.stage1,
    snakemake.input.rois,
    p.cfg,
    snakemake.output[0],
)
